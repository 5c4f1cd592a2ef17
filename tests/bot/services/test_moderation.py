"""Moderation service: blocked terms, bans, art channels, settings, pause and stats, each audited."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.db.models import JobStatus, NsfwPolicy
from bot.errors import InvalidSetting, NotArtChannel, QueuePaused, UserBanned
from bot.services.moderation import match_term, normalize_term
from tests.bot.conftest import CHANNEL, GUILD, MOD

USER = 55


# --- blocked terms -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "prompt", ["NSFW art", "a n s f w picture", "n\u200bsfw", "N.S.F.W!", "ｎｓｆｗ", "nSfW", "n-s-f-w"]
)
async def test_blocked_term_matches_whatever_the_case_spacing_or_invisible_characters(services, prompt):
    """Spelling variants of a blocked term are caught."""
    await services.moderation.add_blocked_term(GUILD, "nsfw", by=MOD)
    assert await services.moderation.check_prompt(GUILD, prompt) == "nsfw"


@pytest.mark.parametrize(
    "prompt",
    [
        "a n\u0455fw picture",  # Cyrillic dze
        "\u043d\u0455f\u0448",  # no: only some letters have lookalikes -> tested below as not matching
        "n\u202esfw",  # right-to-left override
        "n\u2066s\u2069fw",  # isolates
        "\U0001f1f3\U0001f1f8\U0001f1eb\U0001f1fc",  # regional indicator letters
        "\U0001f15d\U0001f162\U0001f155\U0001f166",  # negative circled letters
        "n\u0336s\u0336f\u0336w\u0336",  # strike-through combining marks
        "n\u3164sfw",  # Hangul filler
        "\u03b7sfw",  # Greek eta for n
        "NS\U000e0041FW",  # tag character
    ],
)
async def test_blocked_term_matches_lookalikes_and_invisible_tricks(services, prompt):
    """Cyrillic/Greek lookalikes, bidi and tag characters, symbol letters and combining marks are seen through."""
    await services.moderation.add_blocked_term(GUILD, "nsfw", by=MOD)
    expected = None if prompt.startswith("\u043d") else "nsfw"
    assert await services.moderation.check_prompt(GUILD, prompt) == expected


@pytest.mark.parametrize("prompt", ["\u0441\u043e\u0431\u0430\u043a\u0430", "\u03c3\u03bf\u03c6\u03b9\u03b1"])
async def test_genuine_cyrillic_and_greek_words_are_left_alone(services, prompt):
    """Words with letters that have no Latin lookalike (собака, σοφια) are not read as Latin."""
    from bot.services.moderation import _prepare

    assert _prepare(prompt) == prompt


@pytest.mark.parametrize("prompt", ["a classic castle", "grass on a hill", "a bassoon"])
async def test_blocked_term_does_not_match_inside_other_words(services, prompt):
    """'ass' does not flag words that merely contain it."""
    await services.moderation.add_blocked_term(GUILD, "ass", by=MOD)
    assert await services.moderation.check_prompt(GUILD, prompt) is None


async def test_wildcard_term_matches_inside_words(services):
    """'nsfw*' also matches 'nsfwart'; the plain term does not."""
    await services.moderation.add_blocked_term(GUILD, "nsfw", by=MOD)
    assert await services.moderation.check_prompt(GUILD, "nsfwart") is None
    await services.moderation.add_blocked_term(GUILD, "NSFW*", by=MOD)
    assert await services.moderation.check_prompt(GUILD, "nsfwart") == "NSFW*"


async def test_multi_word_term_matches_with_any_spacing(services):
    """'gore fest' matches 'GoreFest' and 'gore   fest'."""
    await services.moderation.add_blocked_term(GUILD, "gore fest", by=MOD)
    assert await services.moderation.check_prompt(GUILD, "a GoreFest poster") == "gore fest"
    assert await services.moderation.check_prompt(GUILD, "gore   fest") == "gore fest"


async def test_blocked_terms_are_per_guild(services):
    """A term blocked in one guild is allowed in another."""
    await services.moderation.add_blocked_term(GUILD, "nsfw", by=MOD)
    assert await services.moderation.check_prompt(GUILD + 1, "nsfw") is None


async def test_removing_a_term_by_another_spelling_unblocks_it(services):
    """'N S F W' removes the term added as 'nsfw', and the removal is audited."""
    await services.moderation.add_blocked_term(GUILD, "nsfw", by=MOD)
    assert await services.moderation.remove_blocked_term(GUILD, "N S F W", by=MOD) is True
    assert await services.moderation.check_prompt(GUILD, "nsfw") is None
    assert await services.moderation.remove_blocked_term(GUILD, "nsfw", by=MOD) is False
    assert [e.action for e in await services.audit.recent(GUILD)] == ["blocked_term.remove", "blocked_term.add"]


async def test_term_without_letters_is_refused(services):
    """A term made only of punctuation is refused with a clear message."""
    with pytest.raises(InvalidSetting, match="`term` is '!!!'"):
        await services.moderation.add_blocked_term(GUILD, "!!!", by=MOD)


async def test_blocked_terms_lists_what_moderators_typed(services):
    """The list shows the original spelling next to the normalised term."""
    await services.moderation.add_blocked_term(GUILD, "Gore Fest", by=MOD)
    [term] = await services.moderation.blocked_terms(GUILD)
    assert (term.term, term.original, term.added_by) == ("gorefest", "Gore Fest", MOD)


@given(st.text(alphabet="abcdefgh ", min_size=1, max_size=12).filter(lambda t: t.strip()))
def test_a_normalised_term_always_matches_its_own_text(term):
    """Whatever a moderator types, the same text written in the prompt is caught."""
    assert match_term(term, [normalize_term(term)]) == normalize_term(term)


# --- bans --------------------------------------------------------------------------------------------------------
async def test_ban_and_unban_are_audited(services):
    """A banned member is refused with the reason; after unban they are not; both actions are logged."""
    await services.moderation.ban(GUILD, USER, by=MOD, reason="spam")
    with pytest.raises(UserBanned, match="Reason: spam"):
        await services.moderation.check_not_banned(GUILD, USER)
    assert await services.moderation.unban(GUILD, USER, by=MOD) is True
    assert not await services.moderation.is_banned(GUILD, USER)
    entries = await services.audit.recent(GUILD)
    assert [(e.action, e.target, e.actor_id) for e in entries] == [
        ("ban.remove", f"user:{USER}", MOD),
        ("ban.add", f"user:{USER}", MOD),
    ]
    assert entries[1].details == {"reason": "spam", "until": None}


async def test_temporary_ban_ends_by_itself(services, clock):
    """A ban with an end time no longer applies once that time has passed."""
    await services.moderation.ban(GUILD, USER, by=MOD, until=clock.now + timedelta(hours=1))
    assert await services.moderation.is_banned(GUILD, USER)
    clock.advance(hours=1, seconds=1)
    assert not await services.moderation.is_banned(GUILD, USER)
    assert await services.moderation.bans(GUILD) == []


async def test_ban_in_the_past_is_refused(services, clock):
    """An end time already passed is refused."""
    with pytest.raises(InvalidSetting, match="in the future"):
        await services.moderation.ban(GUILD, USER, by=MOD, until=clock.now - timedelta(minutes=1))


# --- channels and settings ---------------------------------------------------------------------------------------
async def test_art_channels_limit_where_imagine_runs(services):
    """With no art channels any channel works; once one is added only it does."""
    assert await services.moderation.is_art_channel(GUILD, 1)
    assert await services.moderation.add_art_channel(GUILD, CHANNEL, by=MOD) is True
    assert await services.moderation.add_art_channel(GUILD, CHANNEL, by=MOD) is False
    assert not await services.moderation.is_art_channel(GUILD, 1)
    with pytest.raises(NotArtChannel, match=f"<#{CHANNEL}>"):
        await services.moderation.check_channel(GUILD, 1)
    assert await services.moderation.remove_art_channel(GUILD, CHANNEL, by=MOD) is True
    assert await services.moderation.art_channels(GUILD) == []


async def test_nsfw_policy_is_stored_and_validated(services):
    """A known policy is stored; an unknown one is refused listing the allowed values."""
    assert (await services.moderation.guild_settings(GUILD)).nsfw_policy is NsfwPolicy.BLOCK
    await services.moderation.set_nsfw_policy(GUILD, "age_restricted", by=MOD)
    assert (await services.moderation.guild_settings(GUILD)).nsfw_policy is NsfwPolicy.AGE_RESTRICTED
    with pytest.raises(InvalidSetting, match="block, age_restricted, allow"):
        await services.moderation.set_nsfw_policy(GUILD, "sometimes", by=MOD)


async def test_guild_defaults_apply_to_members_without_roles(services):
    """A guild's own daily budget (units) replaces the bot's default; clearing it restores the default (20 credits,
    2,000 units)."""
    await services.moderation.set_guild_defaults(GUILD, MOD, images_per_day=700)
    assert (await services.quota.effective_limits(GUILD, USER, [])).images_per_day == 700
    await services.moderation.set_guild_defaults(GUILD, MOD, images_per_day=None)
    assert (await services.quota.effective_limits(GUILD, USER, [])).images_per_day == 2000


async def test_out_of_range_role_limit_is_refused(services):
    """max_steps above the engine's maximum is refused naming the range."""
    with pytest.raises(InvalidSetting, match="`max_steps` is 500, but it has to be a whole number from 1 to 150"):
        await services.moderation.set_role_limits(GUILD, 1, MOD, max_steps=500)


async def test_clearing_role_limits_removes_the_override(services):
    """After clear_role_limits the role no longer changes anyone's limits."""
    await services.moderation.set_role_limits(GUILD, 1, MOD, images_per_day=99)
    assert [r.images_per_day for r in await services.moderation.role_limits(GUILD)] == [99]
    assert await services.moderation.clear_role_limits(GUILD, 1, by=MOD) is True
    assert await services.moderation.role_limits(GUILD) == []


async def test_pause_and_resume_toggle_once(services):
    """Pausing twice changes state once; a paused guild refuses new work with QueuePaused."""
    assert await services.moderation.pause(GUILD, by=MOD) is True
    assert await services.moderation.pause(GUILD, by=MOD) is False
    with pytest.raises(QueuePaused):
        await services.moderation.check_not_paused(GUILD)
    assert await services.moderation.resume(GUILD, by=MOD) is True
    await services.moderation.check_not_paused(GUILD)
    assert [e.action for e in await services.audit.recent(GUILD)] == ["queue.resume", "queue.pause"]


async def test_stats_count_jobs_by_status_and_images_today(services, clock):
    """Stats count each state, the images of the last 24 hours and the members active in them."""
    job = await services.jobs.create(GUILD, CHANNEL, USER, [], prompt="x", num_images=2)
    await services.jobs.start(job.id)
    await services.jobs.succeed(job.id, [(0, 1, "images/a.png", "a" * 64), (1, 2, "images/b.png", "b" * 64)])
    await services.jobs.create(GUILD, CHANNEL, USER + 1, [], prompt="y", num_images=1)
    stats = await services.moderation.stats(GUILD)
    assert stats.jobs_by_status[JobStatus.SUCCEEDED] == 1 and stats.jobs_by_status[JobStatus.QUEUED] == 1
    assert (stats.images_today, stats.members_today) == (2, 2)
    clock.advance(days=1, seconds=1)
    later = await services.moderation.stats(GUILD)
    assert (later.images_today, later.members_today) == (0, 0)


# --- blocked terms and the A1111 prompt syntax ---------------------------------------------------------------------
@pytest.mark.parametrize("prompt", ["(b:1)(ad:1) art", "b(a:1.1)d", "(ba:0.9)[d:0.8]"])
async def test_prompt_syntax_that_splits_a_word_does_not_hide_it(services, prompt):
    """The plain words the model reads are checked too: weights inside a word, which hide it from the text as
    typed ('b1ad1'), do not hide it from the plain words ('bad')."""
    from bot.services.moderation import _match_form

    await services.moderation.add_blocked_term(GUILD, "bad", by=MOD)
    assert _match_form(prompt, ["bad"]) is None
    assert await services.moderation.check_prompt(GUILD, prompt) == "bad"


@pytest.mark.parametrize("prompt", ["(bad:1.2) cat", "[[bad]]", "((b))ad", "a (bad) cat BREAK dog", "b\\(ad",
                                    "<lora:bad:0.8> a cat"])
async def test_blocked_terms_are_still_seen_through_the_syntax_and_in_lora_names(services, prompt):
    """A term written with weights, brackets, escapes or `BREAK`, or naming a LoRA, is caught."""
    await services.moderation.add_blocked_term(GUILD, "bad", by=MOD)
    assert await services.moderation.check_prompt(GUILD, prompt) == "bad"


@pytest.mark.parametrize("prompt", ["(bath:1.2) time", "a (badge) on [a] coat", "(ba:1.2)(dge)"])
async def test_taking_the_syntax_out_makes_no_new_words(services, prompt):
    """Reading the plain words still respects word edges: 'badge' is not 'bad'."""
    await services.moderation.add_blocked_term(GUILD, "bad", by=MOD)
    assert await services.moderation.check_prompt(GUILD, prompt) is None
