"""/settings (a member's defaults and stealth mode), /mod channel-defaults, their precedence in /imagine (the same
rule /settings shows), defaults that can no longer be used, and stealth jobs left out of the gallery and showcase."""

from __future__ import annotations

import pytest

from bot.db.models import Job
from bot.gallery.catalog import Filters, GalleryCatalog
from bot.services.preferences import Defaults, PreferenceService
from bot.ui.buttons import job_custom_id
from tests.bot.exts.conftest import SHAPES, card


def prefs(world) -> PreferenceService:
    return PreferenceService(world.services.sessions)


async def stealth_of(world, job_id: int) -> bool:
    async with world.services.sessions() as s:
        return (await s.get(Job, job_id)).stealth


def shown(result) -> str:
    return result.response.embeds[0].description


async def test_settings_without_options_shows_every_value_and_where_it_comes_from(world):
    result = await world.alice.slash(world.art, "settings")
    assert result.ephemeral
    text = shown(result)
    assert "**model**: chosen automatically (shapes) — the model's default" in text
    assert "**style**: none — the model's default" in text
    assert "**aspect**: the model's size (64×64) — the model's default" in text
    assert "**steps**: 4 — the model's default" in text and "**count**: 4 — the model's default" in text
    assert "**mode**: public" in text


async def test_settings_sets_values_and_reset_clears_one_or_all(world):
    saved = await world.alice.slash(world.art, "settings", steps=6, aspect="3:4", count=2, guidance=5.5)
    assert saved.ephemeral and "Saved." in saved.response.content
    text = shown(saved)
    assert "**steps**: 6 — your default" in text and "**aspect**: 3:4 — your default" in text
    assert "**count**: 2 — your default" in text and "**guidance**: 5.5 — your default" in text
    assert await prefs(world).member(world.guild.id, world.alice.id) == Defaults(aspect="3:4", steps=6,
                                                                                 guidance=5.5, count=2)
    assert await prefs(world).member(world.guild.id, world.bob.id) == Defaults()  # bob's are his own
    reset = await world.alice.slash(world.art, "settings", reset="steps")
    assert "Cleared your default steps." in reset.response.content and "**steps**: 4 — the model's default" in shown(reset)
    assert (await prefs(world).member(world.guild.id, world.alice.id)).aspect == "3:4"
    await world.alice.slash(world.art, "settings", reset="all")
    assert await prefs(world).member(world.guild.id, world.alice.id) == Defaults()


async def test_a_default_model_or_style_must_exist_when_it_is_set(world):
    refused = await world.alice.slash(world.art, "settings", model="nope")
    assert refused.ephemeral and "nope" in refused.response.content
    refused = await world.alice.slash(world.art, "settings", style="nope")
    assert "no style named `nope`" in refused.response.content
    assert await prefs(world).member(world.guild.id, world.alice.id) == Defaults()


async def test_member_defaults_fill_imagine_and_options_still_win(world):
    await world.alice.slash(world.art, "settings", steps=6, count=2, aspect="3:4")
    await world.alice.slash(world.art, "imagine", prompt="a red circle")
    job = await world.latest_job()
    assert (job.steps, job.num_images, job.width < job.height) == (6, 2, True)
    await world.alice.slash(world.art, "imagine", prompt="a red circle", steps=3, count=1)
    job = await world.latest_job()
    assert (job.steps, job.num_images) == (3, 1)


@pytest.mark.parametrize("option,member,channel,expected,label", [
    (2, 3, 5, 2, None),
    (None, 3, 5, 3, "your default"),
    (None, None, 5, 5, "this channel's default"),
    (None, None, None, 4, "the model's default"),
])
async def test_each_level_wins_over_the_ones_below_and_settings_names_it(world, option, member, channel, expected,
                                                                        label):
    await imagine_with_levels(world, "steps", option, member, channel, expected, label)


async def imagine_with_levels(world, name, option, member, channel, expected, label):
    """`name` set at the levels given (None: not set), /settings names the winner's level (`label`, when given), and
    the /imagine that follows takes `expected`."""
    if channel is not None:
        await world.mod.slash(world.art, "mod channel-defaults set", **{name: channel})
    if member is not None:
        await world.alice.slash(world.art, "settings", **{name: member})
    if label is not None:
        assert f"**{name}**: {expected} — {label}" in shown(await world.alice.slash(world.art, "settings"))
    await world.alice.slash(world.art, "imagine", prompt="a red circle", **({name: option} if option else {}))
    assert getattr(await world.latest_job(), name) == expected


@pytest.mark.parametrize("option,member,channel,expected,label", [
    ("gamma", "beta", "alpha", "gamma", None),
    (None, "beta", "alpha", "beta", "your default"),
    (None, None, "alpha", "alpha", "this channel's default"),
    (None, None, None, "shapes", "the server's default"),
])
async def test_the_model_ranks_option_member_channel_server(world, option, member, channel, expected, label):
    world.dispatcher.cards = [SHAPES, card("alpha"), card("beta"), card("gamma")]
    await world.mod.slash(world.art, "mod model default", name="shapes")
    await imagine_with_levels(world, "model", option, member, channel, expected, label)


async def test_channel_defaults_apply_in_their_channel_only_and_are_shown_and_cleared(world):
    set_ = await world.mod.slash(world.art, "mod channel-defaults set", steps=5, count=1)
    assert set_.ephemeral and "steps 5 · count 1" in set_.response.content
    await world.services.moderation.add_art_channel(world.guild.id, world.other.id, by=world.mod.id)
    await world.alice.slash(world.other, "imagine", prompt="a red circle")
    assert ((await world.latest_job()).steps, (await world.latest_job()).num_images) == (4, 4)
    await world.alice.slash(world.art, "imagine", prompt="a red circle")
    assert ((await world.latest_job()).steps, (await world.latest_job()).num_images) == (5, 1)
    listed = await world.mod.slash(world.art, "mod channel-defaults show")
    assert f"<#{world.art.id}>: steps 5 · count 1" in listed.response.embeds[0].description
    cleared = await world.mod.slash(world.art, "mod channel-defaults clear", default="steps")
    assert "Cleared the default steps" in cleared.response.content
    assert await prefs(world).channel(world.guild.id, world.art.id) == Defaults(count=1)
    await world.mod.slash(world.art, "mod channel-defaults clear")
    assert await prefs(world).channels(world.guild.id) == []
    actions = [e.action for e in await world.services.audit.recent(world.guild.id)]
    assert actions.count("channel_defaults.set") == 1 and actions.count("channel_defaults.clear") == 2


async def test_members_can_not_set_channel_defaults(world):
    synced = await world.bot.tree.fetch_commands()
    mod = next(c for c in synced if c.name == "mod")
    world.guild.set_command_permissions(mod.id, {world.alice: True})
    refused = await world.alice.slash(world.art, "mod channel-defaults set", steps=9)
    assert refused.ephemeral and "moderators" in refused.response.content.lower()
    assert await prefs(world).channels(world.guild.id) == []


async def test_stale_defaults_fall_back_to_the_next_level_with_a_note(world):
    world.dispatcher.cards = [SHAPES, card("tiny", max_steps=10, default_steps=8), card("old")]
    await world.mod.slash(world.art, "mod style add", name="ink", prompt="ink {prompt}")
    await world.mod.slash(world.art, "mod channel-defaults set", model="tiny")
    await world.alice.slash(world.art, "settings", model="old", steps=30, style="ink")
    world.dispatcher.cards = [SHAPES, card("tiny", max_steps=10, default_steps=8)]  # "old" is no longer served
    await world.mod.slash(world.art, "mod style remove", name="ink")
    result = await world.alice.slash(world.art, "imagine", prompt="a red circle")
    assert not result.ephemeral  # queued, not refused
    job = await world.latest_job()
    assert (job.model, job.steps, job.prompt, job.style) == ("tiny", 8, "a red circle", "")
    notes = " ".join(f.content for f in result.followups)
    assert "Your default model `old` was not used: it is not served now." in notes
    assert "Your default style `ink` was not used" in notes and "`tiny` takes at most 10 steps" in notes
    assert all(f.ephemeral for f in result.followups)
    text = shown(await world.alice.slash(world.art, "settings"))
    assert "**model**: tiny — this channel's default" in text and "⚠️ Your default model `old`" in text


async def test_a_stealth_job_is_posted_but_left_out_of_the_gallery_and_the_showcase(world):
    await world.alice.slash(world.art, "settings", mode="stealth")
    await world.alice.slash(world.art, "imagine", prompt="a secret circle")
    secret = await world.latest_job()
    secret_message = await world.finish(secret.id)
    assert secret_message is not None  # posted in its channel as usual
    await world.alice.slash(world.art, "settings", mode="public")
    await world.alice.slash(world.art, "imagine", prompt="an open square")
    public = await world.latest_job()
    public_message = await world.finish(public.id)

    catalog = GalleryCatalog(world.services.sessions, channel_is_public=lambda guild, channel: True)
    assert await catalog.job(secret.id) is None  # switching back to public later does not publish it
    assert (await catalog.job(public.id)) is not None
    assert [j.id for j in (await catalog.page(Filters())).jobs] == [public.id]
    assert (await world.services.jobs.get(secret.id)).status == "posted"

    showcase = world.guild.create_text_channel("showcase")
    await world.mod.slash(world.art, "mod showcase", channel=showcase, stars=1)
    await world.bob.react(secret_message, "⭐")
    assert showcase.history() == []
    await world.bob.react(public_message, "⭐")  # the same star on a public job reposts it
    (repost,) = showcase.history()
    assert repost.embeds[0].title == f"⭐ Job #{public.id}"


async def test_imagine_reads_the_member_settings_once_and_a_button_reads_stealth_itself(world, monkeypatch):
    """/imagine hands the stealth mode it read with the member's defaults to the job (no second read); 🔄 reads it."""
    await world.alice.slash(world.art, "settings", mode="stealth")
    reads = []
    member = PreferenceService.member

    async def counted(self, guild_id, user_id):
        reads.append(user_id)
        return await member(self, guild_id, user_id)

    monkeypatch.setattr(PreferenceService, "member", counted)
    await world.alice.slash(world.art, "imagine", prompt="a secret circle")
    secret = await world.latest_job()
    assert reads == [world.alice.id]
    assert await stealth_of(world, secret.id)
    message = await world.finish(secret.id)
    reads.clear()
    await world.alice.click(message, custom_id=job_custom_id(secret.id, "r"))
    again = await world.latest_job()
    assert again.id != secret.id and await stealth_of(world, again.id) and reads == [world.alice.id]


async def test_a_channel_default_style_must_be_a_server_style(world):
    await world.alice.slash(world.art, "style save", name="mine", prompt="pastel {prompt}")
    refused = await world.mod.slash(world.art, "mod channel-defaults set", style="nope")
    assert refused.ephemeral and "no style named `nope`" in refused.response.content
    refused = await world.mod.slash(world.art, "mod channel-defaults set", style="mine")  # alice's own: not shared
    assert "no style named `mine`" in refused.response.content
    empty = await world.mod.slash(world.art, "mod channel-defaults set")
    assert "at least one of" in empty.response.content
    assert await prefs(world).channels(world.guild.id) == []
    await world.mod.slash(world.art, "mod style add", name="ink", prompt="ink {prompt}")
    await world.mod.slash(world.art, "mod channel-defaults set", style="INK")
    await world.bob.slash(world.art, "imagine", prompt="a fox")
    job = await world.latest_job()
    assert (job.prompt, job.style) == ("ink a fox", "ink")
