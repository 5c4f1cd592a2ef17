"""The text progress bar."""

from bot.ui.progress import progress_bar


def test_half_way_fills_half_the_bar():
    """Step 5 of 10 fills half of a 10-wide bar."""
    assert progress_bar(5, 10, width=10) == "▰▰▰▰▰▱▱▱▱▱ 50%"


def test_bar_is_clamped_and_handles_zero_total():
    """Steps past the total show 100 %; a zero total shows 0 %."""
    assert progress_bar(12, 10, width=4) == "▰▰▰▰ 100%"
    assert progress_bar(0, 0, width=4) == "▱▱▱▱ 0%"
