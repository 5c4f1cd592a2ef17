"""Domain errors: user-facing messages name the value and what is allowed."""

from __future__ import annotations

from datetime import UTC, datetime

from bot.errors import BotError, IllegalTransition, QuotaExceeded, TooManyActiveJobs, UserBanned


def test_quota_exceeded_above_the_daily_limit_says_so():
    """Asking for more than a whole day's allowance says how many fit in a day, not to wait (amounts in units,
    shown as credits)."""
    err = QuotaExceeded(requested=5000, used=0, limit=4000, resets_at=None)
    assert err.user_message == (
        "This job costs 50 credit(s) but you have 40 of your 40 daily credits left. At most 40 credit(s) fit in "
        "one day: ask for fewer, smaller images or fewer steps."
    )


def test_quota_exceeded_names_the_relax_budget_too():
    """A member with a relax lane hears what is left of both budgets, in credits with up to two decimals."""
    err = QuotaExceeded(requested=250, used=3900, limit=4000, resets_at=None, relax_used=15900, relax_limit=16000)
    assert err.user_message.startswith(
        "This job costs 2.5 credit(s) but you have 1 of your 40 daily credits left, and 1 of your 160 relax credits."
    )


def test_quota_exceeded_shows_the_reset_as_a_discord_timestamp():
    """The reset time is rendered with Discord's <t:…> markup."""
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert f"<t:{int(at.timestamp())}:R>" in QuotaExceeded(400, 3800, 4000, at).user_message


def test_too_many_active_jobs_names_both_numbers():
    """The member learns how many jobs they have and how many are allowed."""
    assert "You already have 2 job(s) queued or running; at most 2 at a time" in TooManyActiveJobs(2, 2).user_message


def test_illegal_transition_lists_allowed_sources():
    """The message names the job, both states and which states may lead to the target."""
    err = IllegalTransition(7, "queued", "posted", ("succeeded",))
    assert str(err) == "Job #7 cannot go from `queued` to `posted`; only a job that is succeeded can become posted."


def test_every_domain_error_is_a_bot_error():
    """The error handler can catch them all as BotError."""
    assert isinstance(UserBanned("spam"), BotError)
    assert UserBanned("spam").user_message == "You are banned from generating images in this server. Reason: spam."


def test_a_zero_limit_says_the_roles_allow_nothing():
    """A member whose roles allow 0 credits (and no relax lane) or 0 jobs is told so, not asked to wait."""
    assert QuotaExceeded(1, 0, 0, None).user_message.startswith("Your roles allow no credits")
    assert TooManyActiveJobs(0, 0).user_message.startswith("Your roles allow no image jobs")
