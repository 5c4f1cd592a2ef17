"""LoRA tags in prompts, read without torch (generation/protocol/prompt.py)."""

from __future__ import annotations

import pytest

from generation.protocol.prompt import MAX_LORAS, LoraRef, PromptSyntaxError, split_loras


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
