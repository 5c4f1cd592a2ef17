"""LoRA tags, emphasis, escapes and BREAK in prompts, read without torch (generation/protocol/prompt.py)."""

from __future__ import annotations

import pytest

from generation.protocol.prompt import (
    MAX_EMPHASIS,
    MAX_LORAS,
    Fragment,
    LoraRef,
    PromptSyntaxError,
    is_plain,
    parse_emphasis,
    plain_text,
    split_loras,
)


def test_tags_are_taken_out_with_their_weights():
    """Each `<lora:name[:weight]>` becomes a LoraRef (weight 1 by default) and leaves the text the model reads."""
    text, loras = split_loras("a cat <lora:ink:0.8> in <lora:Pastel> style")
    assert text == "a cat in style"
    assert loras == (LoraRef("ink", 0.8), LoraRef("Pastel", 1.0))


def test_a_lora_named_twice_keeps_its_last_weight():
    assert split_loras("<lora:ink:0.2> x <lora:INK:-1.5>")[1] == (LoraRef("INK", -1.5),)


@pytest.mark.parametrize("prompt, words", [
    ("x <lora::1>", "names no LoRA"),
    ("x <lora:a:2.5>", "weight 2.5, but it has to be from -2 to 2"),
    ("x <lora:a:heavy>", "weight 'heavy'"),
    ("x <lora:@everyone:1>", "names no LoRA"),
    (" ".join(f"<lora:l{i}>" for i in range(MAX_LORAS + 1)), f"at most {MAX_LORAS} can be stacked"),
])
def test_bad_tags_are_refused_by_name(prompt, words):
    with pytest.raises(PromptSyntaxError, match=words):
        split_loras(prompt)


def test_text_without_tags_is_unchanged():
    assert split_loras("a red circle, (bright:1.2)") == ("a red circle, (bright:1.2)", ())


# --- emphasis, escapes and BREAK (A1111's attention syntax) ------------------------------------------------------

def fragments(text: str) -> list[list[tuple[str, float]]]:
    return [[(f.text, round(f.weight, 4)) for f in part] for part in parse_emphasis(text)]


@pytest.mark.parametrize("text, parts", [
    # The examples of A1111's parse_prompt_attention.
    ("normal text", [[("normal text", 1.0)]]),
    ("an (important) word", [[("an ", 1.0), ("important", 1.1), (" word", 1.0)]]),
    ("(unbalanced", [[("unbalanced", 1.1)]]),
    ("\\(literal\\]", [[("(literal]", 1.0)]]),
    ("(unnecessary)(parens)", [[("unnecessaryparens", 1.1)]]),
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
     [[("a ", 1.0), ("house", 1.573), (" ", 1.1), ("on", 1.0), (" a ", 1.1), ("hill", 0.55), (", sun, ", 1.1),
       ("sky", 1.4641), (".", 1.1)]]),
    # Weights, square brackets, escapes.
    ("(red:1.5) circle", [[("red", 1.5), (" circle", 1.0)]]),
    ("( red : 0.5 )", [[(" red ", 0.5)]]),
    ("[faint]", [[("faint", 0.9091)]]),
    ("[[faint]]", [[("faint", 0.8264)]]),
    ("a \\\\ b", [[("a \\ b", 1.0)]]),
    ("a:1.2) b", [[("a:1.2) b", 1.0)]]),  # a weight needs an open round bracket
    ("(a:1.2.3)", [[("a:1.2.3)", 1.1)]]),  # no number: text (A1111 fails)
    ("(a:-1) (b:99)", [[("a", 0.0), (" ", 1.0), ("b", MAX_EMPHASIS)]]),
    # BREAK: a word of its own, in capitals; a trailing one adds no part.
    ("red circle BREAK blue square", [[("red circle", 1.0)], [("blue square", 1.0)]]),
    ("a BREAK BREAK b", [[("a", 1.0)], [("", 1.0)], [("b", 1.0)]]),
    ("a BREAK", [[("a", 1.0)]]),
    ("(a BREAK b:1.2)", [[("a", 1.2)], [("b", 1.2)]]),
    ("breakfast, Break, BREAKS", [[("breakfast, Break, BREAKS", 1.0)]]),
    # LoRA tags are no words.
    ("<lora:ink:0.8> a (cat:1.2)", [[("a ", 1.0), ("cat", 1.2)]]),
    ("", [[("", 1.0)]]),
])
def test_emphasis_is_read_as_a1111_reads_it(text, parts):
    assert fragments(text) == parts


@pytest.mark.parametrize("text, plain", [
    ("a (red:1.3) circle, [blurry] \\(sic\\)", "a red circle, blurry (sic)"),
    ("(b:1)(ad:1)", "bad"),
    ("red circle BREAK blue square BREAK", "red circle blue square"),
    ("a cat <lora:ink:0.8> in ((ink)) style", "a cat in ink style"),
    ("a <lora:@bad:9> cat", "a cat"),  # a tag that split_loras refuses is still no word
    ("a \\\\ b", "a \\ b"),
])
def test_plain_text_keeps_the_words_without_the_syntax(text, plain):
    assert plain_text(text) == plain


@pytest.mark.parametrize("text", ["a red circle on a blue background", "  spaced  out  ", "breakfast: eggs, bacon",
                                  "a 1:2 ratio", "<b>bold</b>", "Break it"])
def test_text_without_syntax_is_plain_and_unchanged(text):
    assert is_plain(text)
    assert plain_text(text) == text
    assert parse_emphasis(text) == ((Fragment(text),),)


@pytest.mark.parametrize("text", ["(a)", "[a]", "a \\( b", "x BREAK y", "<lora:ink> cat", "(unbalanced"])
def test_any_syntax_makes_text_not_plain(text):
    assert not is_plain(text)


def test_parsing_never_raises_on_odd_input():
    for text in ["((((", "))))", "]]][[[", "\\", ":::", "(" * 500 + "x", "(x:" + "9" * 400 + ")", "((x:1e9):0)"]:
        for part in parse_emphasis(text):
            assert all(0.0 <= f.weight <= MAX_EMPHASIS for f in part)
        plain_text(text)
