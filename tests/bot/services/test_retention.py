"""Retention sweeper and disk watch (bot.services.retention) against a real migrated database and image folder."""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections import namedtuple
from datetime import timedelta

import pytest

from bot.services.images import REMOVED, ImageRemoved, removed
from bot.services.retention import DiskWatch, RetentionSweeper, StorageKeeper, disk_space, expired_text
from tests.bot.conftest import CHANNEL, GUILD, MOD

A = 101


async def make_job(services, **kw):
    kw.setdefault("prompt", "a lighthouse at dusk")
    kw.setdefault("num_images", 2)
    return await services.jobs.create(GUILD, CHANNEL, A, [], **kw)


async def finished_job(services, n=2, *, posted=True):
    job = await make_job(services, num_images=n)
    await services.jobs.start(job.id, worker="w1")
    images = []
    for i in range(n):
        path, sha = services.images.save(job.id, i, b"\x89PNG fake " + bytes([job.id % 256, i]))
        images.append((i, job.seed + i, path, sha))
    await services.jobs.succeed(job.id, images)
    if posted:
        await services.jobs.mark_posted(job.id, CHANNEL, 5000 + job.id)
    return await services.jobs.get(job.id)


def files_of(services, job_id):
    return [p.name for p in services.images.job_files(job_id)]


@pytest.fixture
async def roomy(services):
    await services.moderation.set_guild_defaults(GUILD, MOD, images_per_day=1000, max_concurrent=100)
    return services


def sweeper(services, clock, days=30, page=50):
    return RetentionSweeper(services.sessions, services.images, days, clock=clock, page=page)


async def test_an_old_job_loses_its_files_and_keeps_its_row_a_recent_one_is_untouched(roomy, clock):
    services = roomy
    old = await finished_job(services)
    # Its cached grid and a timeline are the job's files too.
    services.images.save_grid(old.id, [i.sha256 for i in old.images], b"grid")
    services.images.save(old.id, 0, b"timeline", suffix="_timeline.webp")
    clock.advance(days=20)
    recent = await finished_job(services)
    assert len(files_of(services, old.id)) == 4 and len(files_of(services, recent.id)) == 2
    clock.advance(days=11)  # old: 31 days, recent: 11 days

    report = await sweeper(services, clock).sweep()

    assert (report.jobs, report.files) == (1, 4)
    assert files_of(services, old.id) == []
    kept = await services.jobs.get(old.id)
    # The row and every parameter stay (🔄 draws it again); the image rows keep their seeds, without a file.
    assert (kept.prompt, kept.seed, kept.num_images, kept.status) == (old.prompt, old.seed, 2, old.status)
    assert [(i.index, i.seed, i.path) for i in kept.images] == [(0, old.seed, REMOVED), (1, old.seed + 1, REMOVED)]
    assert removed(kept) and not removed(recent)
    with pytest.raises(ImageRemoved):
        services.images.read(kept.images[0].path, kept.images[0].sha256)
    # The recent job has everything.
    assert await services.jobs.get(recent.id) == recent
    assert services.images.read(recent.images[0].path, recent.images[0].sha256)
    # A second sweep has nothing left to do.
    assert (await sweeper(services, clock).sweep()).jobs == 0


async def test_sweep_goes_page_by_page_and_off_means_keep_forever(roomy, clock):
    services = roomy
    jobs = [await finished_job(services, n=1) for _ in range(7)]
    clock.advance(days=100)
    assert (await sweeper(services, clock, days=0).sweep()).jobs == 0
    assert all(files_of(services, j.id) for j in jobs)
    report = await sweeper(services, clock, days=90, page=2).sweep()
    assert (report.jobs, report.files) == (7, 7)
    assert not any(files_of(services, j.id) for j in jobs)


async def test_deleted_jobs_and_sources_of_waiting_jobs_are_left_alone(roomy, clock):
    services = roomy
    deleted = await finished_job(services)
    await services.jobs.mark_deleted(deleted.id)
    source = await finished_job(services)
    variation = await make_job(services, mode="variation", source_job_id=source.id, source_image_index=0,
                               num_images=1)
    unposted = await finished_job(services, posted=False)
    clock.advance(days=40)

    report = await sweeper(services, clock).sweep()

    assert report.jobs == 1  # the succeeded, not yet posted job
    assert files_of(services, unposted.id) == []
    # 🗑️ keeps a deleted job's rows as they were (its own code removes its files).
    assert [i.path for i in (await services.jobs.get(deleted.id)).images] == [i.path for i in deleted.images]
    # The variation still waits to read image 1 of its source.
    assert len(files_of(services, source.id)) == 2 and not removed(await services.jobs.get(source.id))
    await services.jobs.cancel(variation.id, A, owner_id=A)
    assert (await sweeper(services, clock).sweep()).jobs == 1
    assert files_of(services, source.id) == []


async def test_a_negative_retention_is_refused_with_the_value():
    with pytest.raises(ValueError, match="-3"):
        RetentionSweeper(None, None, -3)  # type: ignore[arg-type]


def test_expired_text_names_the_job_and_the_days():
    assert expired_text(12, 30) == ("The images of job #12 were removed after 30 days (this bot keeps images 30 "
                                    "days). 🔄 draws it again.")
    assert "1 day (" in expired_text(3, 1)
    assert "#4" in expired_text(4, 0) and "🔄" in expired_text(4, 0)


# --- disk space ----------------------------------------------------------------------------------------------
Usage = namedtuple("Usage", "total used free")
MIB = 1024 * 1024


def test_the_disk_warning_is_logged_once_per_crossing(tmp_path, monkeypatch, caplog):
    free = {"mb": 5000}
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(100_000 * MIB, 0, free["mb"] * MIB))
    watch = DiskWatch(tmp_path, warn_free_mb=2048)
    caplog.set_level(logging.INFO, logger="bot.retention")

    def warnings():
        return [r for r in caplog.records if r.levelno == logging.WARNING and "nearly full" in r.getMessage()]

    assert not watch.check().low and warnings() == []
    free["mb"] = 1000
    for _ in range(5):  # every minute while it stays low: one warning only
        assert watch.check().low
    assert len(warnings()) == 1 and "DISK_WARN_FREE_MB (2048 MiB)" in warnings()[0].getMessage()
    free["mb"] = 3000
    assert not watch.check().low
    assert any("free again" in r.getMessage() for r in caplog.records)
    free["mb"] = 10
    watch.check()
    assert len(warnings()) == 2  # a new crossing, a new warning


def test_zero_never_warns_and_the_stats_line_says_what_is_free(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(10 * 1024 * MIB, 0, 512 * MIB))
    assert not disk_space(tmp_path, 0).low
    low = disk_space(tmp_path, 2048)
    assert low.low and low.describe().startswith("Data disk: **512 MiB** free of 10.0 GiB ⚠️ below 2.0 GiB")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(10 * 1024 * MIB, 0, 3 * 1024 * MIB))
    assert disk_space(tmp_path, 2048).describe() == "Data disk: **3.0 GiB** free of 10.0 GiB"


async def test_the_storage_keeper_sweeps_and_watches_in_the_background(roomy, settings, clock, monkeypatch):
    services = roomy
    job = await finished_job(services)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(100 * MIB, 0, MIB))
    settings.image_retention_days = 1
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    keeper = StorageKeeper(settings, services, sweep_interval=0.05, disk_interval=0.01)
    keeper.sweeper.clock = lambda: clock.now + timedelta(days=2)
    keeper.start()
    try:
        for _ in range(200):
            if not files_of(services, job.id) and keeper.disk.low:
                break
            await asyncio.sleep(0.02)
    finally:
        await keeper.stop()
    assert files_of(services, job.id) == [] and keeper.disk.low
    assert keeper._task is None
