"""The ⭐ showcase: a result with N ⭐ is reposted once to the showcase channel, with credit and no ping; never a
private channel's or a deleted job; once also across a restart and a crash between the post and its record."""

from __future__ import annotations

import sqlite3

import discord

from bot.services.showcase import ShowcaseService, nonce_for
from tests.bot.exts.test_visibility import secret_job


async def posted_job(world, prompt="a red circle"):
    await world.alice.slash(world.art, "imagine", prompt=prompt)
    job = await world.latest_job()
    return job, await world.finish(job.id)


async def setup_showcase(world, stars=2):
    channel = world.guild.create_text_channel("showcase")
    await world.mod.slash(world.art, "mod showcase", channel=channel, stars=stars)
    return channel


def reposts(channel) -> list[discord.Message]:
    return channel.history()


async def test_a_result_with_enough_stars_is_reposted_once_with_credit_and_no_ping(world):
    showcase = await setup_showcase(world, stars=2)
    job, message = await posted_job(world)
    await world.bob.react(message, "⭐")
    assert reposts(showcase) == []  # one star of two
    await world.alice.react(message, "👍")
    assert reposts(showcase) == []  # another emoji does not count
    await world.mod.react(message, "⭐")
    (repost,) = reposts(showcase)
    assert f"<@{job.user_id}>" in repost.content and repost.embeds[0].title == f"⭐ Job #{job.id}"
    assert "a red circle" in repost.embeds[0].description and repost.attachments
    # The author is named with a mention that pings nobody: the post switches every mention off.
    assert not repost.mention_everyone and not repost.role_mentions
    sent = [r.json for r in world.env.http_requests
            if r.method == "POST" and str(showcase.id) in r.path and isinstance(r.json, dict)]
    assert sent and all(j["allowed_mentions"] == {"parse": []} for j in sent)
    # More stars, a star taken back and given again: still one repost.
    await world.alice.react(message, "⭐")
    await world.bob.unreact(message, "⭐")
    await world.bob.react(message, "⭐")
    assert len(reposts(showcase)) == 1
    assert await ShowcaseService(world.services.sessions).reposted(job.id) == repost.id


async def test_after_a_restart_a_reposted_job_is_not_reposted_again(world):
    showcase = await setup_showcase(world, stars=1)
    job, message = await posted_job(world)
    await world.bob.react(message, "⭐")
    assert len(reposts(showcase)) == 1
    await world.restart()
    await world.mod.react(message, "⭐")
    await world.alice.react(message, "⭐")
    assert len(reposts(showcase)) == 1


async def test_stars_given_while_the_showcase_was_off_count_once_it_is_on(world):
    job, message = await posted_job(world)
    await world.bob.react(message, "⭐")
    await world.mod.react(message, "⭐")
    showcase = await setup_showcase(world, stars=3)
    assert reposts(showcase) == []
    await world.alice.react(message, "⭐")  # the third, counted from the message
    assert len(reposts(showcase)) == 1


def showcase_posts(world, showcase) -> list[dict]:
    """The message posts the bot sent to the showcase channel, as JSON."""
    return [r.json for r in world.env.http_requests
            if r.method == "POST" and r.path.endswith(f"/channels/{showcase.id}/messages") and isinstance(r.json, dict)]


async def test_a_crash_between_the_post_and_its_record_retries_with_the_same_nonce(world, monkeypatch):
    """The claim is made first; the post carries a nonce made from the job id (with enforce_nonce), so the retry
    after a restart, within the retry window, is one Discord answers with the first message instead of a second
    one (simcord does not model nonces: this checks what the bot sends), and the record is completed."""
    showcase = await setup_showcase(world, stars=1)
    job, message = await posted_job(world)

    async def crash(self, job_id, message_id):
        raise RuntimeError("the bot died here")

    monkeypatch.setattr(ShowcaseService, "mark_posted", crash)
    await world.bob.react(message, "⭐")
    assert await ShowcaseService(world.services.sessions).reposted(job.id) is None  # claimed, not marked
    monkeypatch.undo()
    await world.restart()
    await world.mod.react(message, "⭐")
    first, retry = showcase_posts(world, showcase)
    assert first["nonce"] == retry["nonce"] == nonce_for(job.id) and first["enforce_nonce"] and retry["enforce_nonce"]
    # The record holds the message the retry got back (Discord: the first one; simcord made a second).
    assert await ShowcaseService(world.services.sessions).reposted(job.id) == reposts(showcase)[-1].id
    with sqlite3.connect(world.settings.data_dir / "bot.db") as conn:
        assert conn.execute("SELECT job_id, nonce FROM showcase_post").fetchall() == [(job.id, nonce_for(job.id))]
    await world.alice.react(message, "⭐")  # marked now: nothing more is sent
    assert len(showcase_posts(world, showcase)) == 2


async def test_an_unmarked_claim_older_than_the_retry_window_is_never_sent_again(world, monkeypatch):
    """Past the few minutes Discord keeps a nonce a retry could duplicate the repost: it is not sent (at most once)."""
    showcase = await setup_showcase(world, stars=1)
    job, message = await posted_job(world)
    claim = await ShowcaseService(world.services.sessions).claim(job.id, world.guild.id, showcase.id)
    assert claim is not None and claim.nonce == nonce_for(job.id)
    with sqlite3.connect(world.settings.data_dir / "bot.db") as conn:
        conn.execute("UPDATE showcase_post SET claimed_at = datetime(claimed_at, '-1 hour')")
    await world.bob.react(message, "⭐")
    assert showcase_posts(world, showcase) == []
    assert await ShowcaseService(world.services.sessions).claim(job.id, world.guild.id, showcase.id) is None


async def test_a_private_channels_job_is_never_reposted(world):
    showcase = await setup_showcase(world, stars=1)
    job, message = await secret_job(world)
    await world.alice.react(message, "⭐")
    assert reposts(showcase) == []
    assert await ShowcaseService(world.services.sessions).is_claimed(job.id) is False


async def test_a_deleted_job_is_never_reposted(world):
    from bot.ui.buttons import job_custom_id

    showcase = await setup_showcase(world, stars=1)
    job, message = await posted_job(world)
    await world.alice.click(message, custom_id=job_custom_id(job.id, "d"))
    assert (await world.services.jobs.get(job.id)).deleted_at is not None
    cog = world.bot.get_cog("Showcase")
    assert await cog.consider(world.guild.id, world.art.id, message.id) is None
    assert reposts(showcase) == []


async def test_showcase_settings_off_and_audit(world):
    shown = await world.mod.slash(world.art, "mod showcase")
    assert "off" in shown.response.content
    showcase = await setup_showcase(world, stars=4)
    shown = await world.mod.slash(world.art, "mod showcase")
    assert f"4 ⭐ or more are reposted to <#{showcase.id}>" in shown.response.content
    await world.mod.slash(world.art, "mod showcase", off=True)
    assert await ShowcaseService(world.services.sessions).config(world.guild.id) is None
    job, message = await posted_job(world)
    await world.bob.react(message, "⭐")
    assert reposts(showcase) == []
    actions = [e.action for e in await world.services.audit.recent(world.guild.id)]
    assert {"showcase.set", "showcase.off"} <= set(actions)
