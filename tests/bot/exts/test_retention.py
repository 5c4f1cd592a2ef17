"""Storage that stays bounded, as members and moderators see it: a job whose image files were removed after
IMAGE_RETENTION_DAYS keeps its row and its buttons answer clearly; /mod stats shows the data disk; a result post
that a crash cut off is found in the channel after a restart instead of being posted twice."""

from __future__ import annotations

import shutil
from collections import namedtuple
from datetime import timedelta

import pytest

from bot.db.models import utcnow
from bot.services.retention import RetentionSweeper
from bot.ui.buttons import job_custom_id

DAYS = 30
EXPIRED = "were removed after 30 days (this bot keeps images 30 days). 🔄 draws it again."


async def posted_job(world, prompt="a red circle"):
    await world.alice.slash(world.art, "imagine", prompt=prompt)
    job = await world.latest_job()
    message = await world.finish(job.id)
    return job, message


async def age(world, job_id: int, days: float) -> None:
    """Make job `job_id` look as if it finished `days` days ago (the services run on the real clock)."""
    from sqlalchemy import update

    from bot.db.models import Job

    async with world.services.sessions() as s, s.begin():
        await s.execute(update(Job).where(Job.id == job_id).values(finished_at=utcnow() - timedelta(days=days)))


async def sweep(world) -> int:
    """The sweep the bot runs hourly with IMAGE_RETENTION_DAYS=30; returns how many jobs lost their files."""
    world.settings.image_retention_days = DAYS
    return (await RetentionSweeper(world.services.sessions, world.services.images, DAYS).sweep()).jobs


def text_of(result) -> str:
    response = result.response
    parts = [response.content or ""]
    for embed in response.embeds:
        parts.append(embed.description or "")
    return "\n".join(parts)


async def test_an_expired_job_keeps_its_row_and_its_buttons_say_why(world):
    """31 days later (retention 30): the job's files are gone, its row stays; U and V say the images were removed,
    ℹ️ and /show say so under the parameters, 🔄 draws it again. A job posted later keeps its files and buttons."""
    old, old_message = await posted_job(world, "an old red circle")
    old_files = world.services.images.job_files(old.id)
    assert len(old_files) >= 4  # four images and the cached grid
    recent, recent_message = await posted_job(world, "a recent blue square")
    await age(world, old.id, 31)
    await age(world, recent.id, 11)

    assert await sweep(world) == 1
    assert world.services.images.job_files(old.id) == [] and not any(p.exists() for p in old_files)
    kept = await world.services.jobs.get(old.id)
    assert (kept.prompt, kept.seed, kept.status) == ("an old red circle", old.seed, "posted")

    upscale = await world.alice.click(old_message, custom_id=job_custom_id(old.id, "u", 0))
    assert upscale.ephemeral and f"The images of job #{old.id} {EXPIRED}" in text_of(upscale)
    vary = await world.bob.click(old_message, custom_id=job_custom_id(old.id, "vS", 1))
    assert vary.ephemeral and EXPIRED in text_of(vary)
    info = await world.bob.click(old_message, custom_id=job_custom_id(old.id, "i"))
    fields = {f.name: f.value for f in info.response.embeds[0].fields}
    assert info.ephemeral and fields["Seed"] == str(old.seed) and EXPIRED in text_of(info)
    shown = await world.alice.slash(world.art, "show", job=old.id)
    assert shown.ephemeral and EXPIRED in text_of(shown) and shown.response.attachments == []
    # U and V queued nothing; 🔄 draws the job again from its parameters.
    assert await world.services.jobs.queue() == []
    await world.alice.click(old_message, custom_id=job_custom_id(old.id, "r"))
    rerun = await world.latest_job()
    assert rerun.id > recent.id and rerun.prompt == "an old red circle" and rerun.seed != old.seed

    # The recent job has its files, and its buttons and /show work as before.
    assert all(p.exists() for p in world.services.images.job_files(recent.id))
    shown = await world.alice.slash(world.art, "show", job=recent.id)
    assert shown.response.attachments[0].filename == f"job{recent.id}.png"
    await world.alice.click(recent_message, custom_id=job_custom_id(recent.id, "u", 0))
    upscale = await world.latest_job()
    assert (upscale.mode, upscale.source_job_id) == ("upscale", recent.id)


async def test_delete_still_works_on_an_expired_job(world):
    """🗑️ on a job whose files retention removed deletes its message and marks it deleted, without an error."""
    job, message = await posted_job(world)
    await age(world, job.id, DAYS + 1)
    assert await sweep(world) == 1
    result = await world.alice.click(message, custom_id=job_custom_id(job.id, "d"))
    assert all(m.id != message.id for m in world.art.history())
    assert (await world.services.jobs.get(job.id)).deleted_at is not None
    assert result.response is None or "error" not in text_of(result).lower()


Usage = namedtuple("Usage", "total used free")


async def test_mod_stats_shows_the_free_disk_space_and_warns_when_low(world, monkeypatch):
    """/mod stats has a line on the data disk; below DISK_WARN_FREE_MB it warns and says what to do."""
    mib = 1024 * 1024
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(50 * 1024 * mib, 0, 20 * 1024 * mib))
    fine = await world.mod.slash(world.art, "mod stats")
    text = fine.response.embeds[0].description
    assert "Data disk: **20.0 GiB** free of 50.0 GiB" in text and "⚠️" not in text
    assert "Image files are kept forever" in text
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(50 * 1024 * mib, 0, 300 * mib))
    world.settings.image_retention_days = 90
    low = await world.mod.slash(world.art, "mod stats")
    text = low.response.embeds[0].description
    assert "**300 MiB** free" in text and "⚠️ below 2.0 GiB (DISK_WARN_FREE_MB)" in text
    assert "kept **90** day(s)" in text


class Crash(Exception):
    """The process died here."""


async def test_a_result_post_cut_off_by_a_crash_is_found_after_the_restart(world, monkeypatch):
    """Discord created the result message, then the bot died before marking the job posted; simcord, like Discord
    minutes later, does not remember the post's nonce. After the restart the bot finds its own message of the job in
    the channel and marks it posted: exactly one result message."""
    await world.alice.slash(world.art, "imagine", prompt="a red circle")
    job = await world.latest_job()
    jobs = world.services.jobs

    async def crash(*args, **kwargs):
        raise Crash()

    monkeypatch.setattr(jobs, "mark_posted", crash)
    with pytest.raises(Crash):
        await world.finish(job.id)
    monkeypatch.undo()
    assert (await jobs.get(job.id)).status == "succeeded"

    def results():
        return [m for m in world.art.history()
                if any(getattr(c, "custom_id", None) == job_custom_id(job.id, "d")
                       for row in m.components for c in row.children)]

    assert len(results()) == 1
    await world.restart()
    # What the dispatcher does at start for a succeeded, unposted job.
    await world.bot.presenter.job_finished(job.id)
    await world.env.settle()

    after = await jobs.get(job.id)
    assert after.status == "posted" and len(results()) == 1
    assert after.posted_message_id == results()[0].id


async def test_a_fresh_result_is_posted_without_reading_the_channel(world, monkeypatch):
    """Looking through the channel costs a request: a job that succeeded while this process ran, and was never tried
    before, is posted directly."""
    looked = []
    presenter = world.bot.presenter
    original = presenter._earlier_post

    async def spy(job, channel):
        looked.append(job.id)
        return await original(job, channel)

    monkeypatch.setattr(presenter, "_earlier_post", spy)
    job, message = await posted_job(world)
    assert message is not None and looked == []
