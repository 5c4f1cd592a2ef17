"""safe_text: user text never pings, never formats, never breaks a limit."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from bot.ui.text import CONTENT, EMBED_TITLE, code_text, plain_text, safe_text, truncate

PING = re.compile(r"@(everyone|here)|<@[!&]?\d+>")


def test_everyone_and_user_mentions_are_neutralised():
    """@everyone, @here, <@id> and <@&id> no longer form a mention."""
    out = safe_text("hi @everyone @here <@123456789012345678> <@&123456789012345678>")
    assert not PING.search(out)


def test_markdown_is_escaped():
    """Markdown characters are shown literally, not rendered."""
    assert safe_text("**bold** _it_") == r"\*\*bold\*\* \_it\_"


def test_long_text_is_truncated_with_ellipsis():
    """Text over the limit is cut to exactly the limit and ends with an ellipsis."""
    out = safe_text("a" * 5000, CONTENT)
    assert len(out) == CONTENT and out.endswith("…")


def test_truncation_never_leaves_a_dangling_backslash():
    """Cutting inside an escape sequence drops the lone backslash so the ellipsis is not escaped."""
    out = truncate("ab\\", 3)
    assert out == "ab\\" and truncate("abc\\*def", 5) == "abc…"


def test_single_line_folds_newlines():
    """Titles get one line: newlines and runs of spaces become one space."""
    assert safe_text("a\n\n  b", EMBED_TITLE, single_line=True) == "a b"


def test_code_text_cannot_close_its_fence():
    """A ``` in user text cannot end the code block early."""
    out = code_text("x ``` y", 100)
    assert out.count("```") == 2


@given(st.text(max_size=3000), st.integers(min_value=1, max_value=4096))
def test_safe_text_respects_any_limit_and_never_pings(text, limit):
    """For any text and limit the result fits and contains no working mention."""
    out = safe_text(text, limit)
    assert len(out) <= limit
    assert not PING.search(out)


def test_control_characters_and_bidi_overrides_are_never_echoed():
    """C0/C1 controls (tab and newline aside) and bidi overrides/isolates are dropped; ordinary text stays."""
    hostile = "a\x00b\x1b[31mc\x9bd\u202eevil\u2066x\u2069\n\tok \u200f"
    for shown in (safe_text(hostile), plain_text(hostile, 100, single_line=False), code_text(hostile, 100)):
        assert not any(ch in shown for ch in "\x00\x1b\x9b\u202e\u2066\u2069")
        assert "evil" in shown and "ok" in shown
    assert "\n\tok" in safe_text(hostile)
