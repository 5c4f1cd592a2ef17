"""Data that stays bounded: image files kept for IMAGE_RETENTION_DAYS, and a warning when the data disk fills up.

Retention
---------
`RetentionSweeper.sweep()` removes the files of every job that finished (succeeded or posted) more than
IMAGE_RETENTION_DAYS ago: its images, its cached grids and its timeline (`ImageStore.job_files`). The job's row
stays with every parameter, so 🔄 and ✏️ still draw it again; its image rows stay too (their seeds), with the path
`bot.services.images.REMOVED`, which is how every reader tells "removed after the retention period" from "missing or
damaged": U/V answer `ImagesExpired`, /show and ℹ️ say so, a post goes without the picture. Jobs deleted with 🗑️
(their files are gone already) and jobs that a waiting or running variation/upscale still reads from are left
alone. The files go first and the rows are marked after, so a crash in between only leaves work for the next sweep.

The sweep works in pages of `PAGE` jobs, each one short read, the file removals in a thread, and one short write,
so it never holds the event loop or the database for long, whatever the number of old jobs.

Disk space
----------
`DiskWatch.check()` reads the free space of the data folder's disk (`shutil.disk_usage`) and logs a WARNING when it
falls below DISK_WARN_FREE_MB, once per crossing (and an INFO line when it is back above); `/mod stats` shows the
same reading (`disk_space`).

`StorageKeeper` runs both: at start, then the disk every `DISK_CHECK_INTERVAL` seconds and the sweep every
`SWEEP_INTERVAL` seconds. The bot starts it (`bot.app.ImagineBot.setup_hook`) and stops it when it closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import and_, exists, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.db.engine import run_read, run_write
from bot.db.models import Image, Job, JobStatus, utcnow
from bot.errors import BotError
from bot.services.images import REMOVED, ImageStore

log = logging.getLogger("bot.retention")

#: Jobs handled per page of a sweep (one read, their file removals, one write).
PAGE = 50
#: Seconds between two sweeps.
SWEEP_INTERVAL = 3600.0
#: Seconds between two looks at the free disk space.
DISK_CHECK_INTERVAL = 60.0
MIB = 1024 * 1024

_FINISHED = (JobStatus.SUCCEEDED.value, JobStatus.POSTED.value)
_ACTIVE = (JobStatus.QUEUED.value, JobStatus.RUNNING.value)


class ImagesExpired(BotError):
    """A button or command needs the images of a job whose files were removed after the retention period."""

    def __init__(self, job_id: int, days: int | None):
        self.job_id = job_id
        self.days = days
        super().__init__(expired_text(job_id, days))


def expired_text(job_id: int, days: int | None) -> str:
    """What a member reads about a job whose images were removed after the retention period (`days`: the setting,
    None or 0 when it is off now)."""
    if days:
        unit = "day" if days == 1 else "days"
        return (f"The images of job #{job_id} were removed after {days} {unit} (this bot keeps images {days} {unit}). "
                "🔄 draws it again.")
    return f"The images of job #{job_id} were removed after the bot's retention period. 🔄 draws it again."


@dataclass(frozen=True)
class SweepReport:
    #: Jobs whose files were removed.
    jobs: int
    #: Files removed (images, grids, timelines).
    files: int


class RetentionSweeper:
    """Removes the image files of jobs finished more than `days` days ago (see the module docstring)."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], images: ImageStore, days: int, *,
                 clock: Callable[[], datetime] = utcnow, page: int = PAGE):
        if days < 0:
            raise ValueError(f"IMAGE_RETENTION_DAYS must be 0 (keep forever) or more days, not {days}")
        self.sessions = sessions
        self.images = images
        self.days = days
        self.clock = clock
        self.page = page

    async def sweep(self) -> SweepReport:
        """One pass over the old jobs, page by page; nothing when retention is off (0 days)."""
        if self.days <= 0:
            return SweepReport(0, 0)
        cutoff = self.clock() - timedelta(days=self.days)
        after, jobs, files = 0, 0, 0
        while True:
            ids = await run_read(self.sessions, lambda s, a=after: self._page(s, cutoff, a))
            if not ids:
                break
            after = ids[-1]
            files += await asyncio.to_thread(self._remove_files, ids)
            marked = await run_write(self.sessions, lambda s, i=ids: self._mark_removed(s, i))
            jobs += marked
            await asyncio.sleep(0)  # let the bot's other work in between two pages
        if jobs:
            log.info("retention: removed %d file(s) of %d job(s) finished more than %d day(s) ago", files, jobs,
                     self.days)
        return SweepReport(jobs, files)

    async def _page(self, s: AsyncSession, cutoff: datetime, after: int) -> list[int]:
        source = Job.__table__.alias("derived")
        still_read = exists().where(source.c.source_job_id == Job.id, source.c.status.in_(_ACTIVE))
        with_files = exists().where(Image.job_id == Job.id, Image.path != REMOVED)
        query = (
            select(Job.id)
            .where(
                Job.id > after,
                Job.status.in_(_FINISHED),
                Job.finished_at.is_not(None),
                Job.finished_at < cutoff,
                Job.deleted_at.is_(None),
                with_files,
                ~still_read,
            )
            .order_by(Job.id)
            .limit(self.page)
        )
        return list((await s.scalars(query)).all())

    def _remove_files(self, ids: list[int]) -> int:
        removed = 0
        for job_id in ids:
            for path in self.images.job_files(job_id):
                try:
                    path.unlink()
                    removed += 1
                except FileNotFoundError:
                    pass
                except OSError:
                    log.warning("retention: job %d: could not remove %s", job_id, path, exc_info=True)
        return removed

    async def _mark_removed(self, s: AsyncSession, ids: list[int]) -> int:
        done = await s.execute(
            update(Image)
            .where(Image.job_id.in_(ids), Image.path != REMOVED,
                   # Not a job deleted meanwhile (🗑️ keeps its paths) nor one that went back to work.
                   exists().where(and_(Job.id == Image.job_id, Job.deleted_at.is_(None),
                                       Job.status.in_(_FINISHED))))
            .values(path=REMOVED)
            .returning(Image.job_id)
        )
        return len({row[0] for row in done.all()})


# --- disk space ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DiskSpace:
    free: int
    total: int
    #: The warning threshold in bytes (0: never warn).
    threshold: int

    @property
    def low(self) -> bool:
        return self.threshold > 0 and self.free < self.threshold

    def describe(self) -> str:
        """One line for /mod stats."""
        line = f"Data disk: **{_size(self.free)}** free of {_size(self.total)}"
        if self.low:
            line += (f" ⚠️ below {_size(self.threshold)} (DISK_WARN_FREE_MB): free some space, or set "
                     "IMAGE_RETENTION_DAYS so old image files are removed")
        return line


def _size(n: int) -> str:
    gib = n / (1024 * MIB)
    return f"{gib:.1f} GiB" if gib >= 1 else f"{n / MIB:.0f} MiB"


def disk_space(path: Path, warn_free_mb: int) -> DiskSpace:
    """The free and total space of the disk that holds `path` (the data folder)."""
    usage = shutil.disk_usage(path)
    return DiskSpace(free=usage.free, total=usage.total, threshold=max(0, warn_free_mb) * MIB)


class DiskWatch:
    """Logs a warning when the data disk's free space falls below the threshold, once per crossing."""

    def __init__(self, path: Path, warn_free_mb: int):
        self.path = Path(path)
        self.warn_free_mb = warn_free_mb
        #: Whether the last reading was below the threshold.
        self.low = False

    def check(self) -> DiskSpace | None:
        """Read the free space; log when it crossed the threshold since the last reading. None when unreadable."""
        try:
            space = disk_space(self.path, self.warn_free_mb)
        except OSError:
            log.warning("could not read the free space of %s", self.path, exc_info=True)
            return None
        if space.low and not self.low:
            log.warning("the data disk (%s) is nearly full: %s free, below DISK_WARN_FREE_MB (%d MiB); free some "
                        "space or set IMAGE_RETENTION_DAYS", self.path, _size(space.free), self.warn_free_mb)
        elif self.low and not space.low:
            log.info("the data disk (%s) has %s free again", self.path, _size(space.free))
        self.low = space.low
        return space


# --- both, in the background -----------------------------------------------------------------------------------
class StorageKeeper:
    """Runs the retention sweep and the disk watch in the background while the bot runs."""

    def __init__(self, settings: Any, services: Any, *, sweep_interval: float = SWEEP_INTERVAL,
                 disk_interval: float = DISK_CHECK_INTERVAL):
        self.sweeper = RetentionSweeper(services.sessions, services.images, settings.image_retention_days)
        self.disk = DiskWatch(settings.data_dir, settings.disk_warn_free_mb)
        self.sweep_interval = sweep_interval
        self.disk_interval = disk_interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="storage-keeper")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        next_sweep = 0.0
        while True:
            await asyncio.to_thread(self.disk.check)
            if self.sweeper.days > 0 and time.monotonic() >= next_sweep:
                try:
                    await self.sweeper.sweep()
                except Exception:
                    log.exception("retention: the sweep failed; it runs again in %.0f s", self.sweep_interval)
                next_sweep = time.monotonic() + self.sweep_interval
            await asyncio.sleep(self.disk_interval)
