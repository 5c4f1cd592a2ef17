"""Permutation prompts (bot.services.permutations): counts, order, escapes, the cap, whitespace, empty options."""

from __future__ import annotations

import pytest

from bot.errors import InvalidRequest
from bot.services.permutations import TooManyCombinations, count, expand, expand_fields


def test_text_without_braces_is_itself_unchanged():
    assert expand("  a red  circle ", limit=8) == ["  a red  circle "]
    assert count("a red circle") == 1


def test_one_group_gives_one_text_per_option_in_order():
    assert expand("a {red, green,blue} bird", limit=8) == ["a red bird", "a green bird", "a blue bird"]


def test_several_groups_multiply_the_first_varying_slowest():
    assert expand("{red, blue} {circle, square}", limit=8) == [
        "red circle", "red square", "blue circle", "blue square"]
    assert count("{a,b,c} {d,e} {f,g}") == 12


def test_options_are_trimmed_and_doubled_spaces_closed_up():
    assert expand("a  {  big ,  } dog", limit=8) == ["a big dog", "a dog"]
    assert expand("{ , x}", limit=8) == ["", "x"]


def test_repeated_options_and_equal_results_are_one_job():
    assert expand("{a, a, b}", limit=8) == ["a", "b"]
    assert count("{a, a, b}") == 2
    assert expand("x{ , }y", limit=8) == ["xy"]


def test_escaped_braces_and_commas_are_the_characters_themselves():
    assert expand(r"json \{key\} {a\, b, c}", limit=8) == ["json {key} a, b", "json {key} c"]
    assert expand(r"only \{escaped\}", limit=8) == ["only {escaped}"]
    assert expand(r"a \ backslash", limit=8) == [r"a \ backslash"]


@pytest.mark.parametrize("text,message", [
    ("a {red, {blue}}", "do not nest"),
    ("a {red, blue", "never closed"),
    ("a red} circle", "without its"),
])
def test_unbalanced_or_nested_braces_are_refused_naming_the_problem(text, message):
    with pytest.raises(InvalidRequest) as raised:
        expand(text, limit=8)
    assert message in str(raised.value) and raised.value.field == "prompt"


def test_more_combinations_than_the_cap_are_refused_before_any_is_built():
    with pytest.raises(TooManyCombinations) as raised:
        expand("{a,b,c} {d,e,f}", limit=8)
    assert (raised.value.count, raised.value.limit) == (9, 8)
    assert "9 combinations" in raised.value.user_message and "at most 8" in raised.value.user_message
    with pytest.raises(TooManyCombinations) as huge:  # 2**40: counted, never built
        expand("{a,b}" * 40, limit=8)
    assert huge.value.count == 2 ** 40
    assert len(expand("{a,b,c,d} {e,f}", limit=8)) == 8


def test_fields_multiply_and_the_cap_counts_all_of_them():
    combos = expand_fields({"prompt": "{a, b} cat", "negative_prompt": "{x, y}", "style": None}, limit=8)
    assert combos == [
        {"prompt": "a cat", "negative_prompt": "x", "style": None},
        {"prompt": "a cat", "negative_prompt": "y", "style": None},
        {"prompt": "b cat", "negative_prompt": "x", "style": None},
        {"prompt": "b cat", "negative_prompt": "y", "style": None},
    ]
    with pytest.raises(TooManyCombinations) as raised:
        expand_fields({"prompt": "{a,b,c}", "negative_prompt": "{x,y,z}"}, limit=8)
    assert raised.value.count == 9
    assert expand_fields({"prompt": "plain", "negative_prompt": ""}, limit=8) == [
        {"prompt": "plain", "negative_prompt": ""}]
