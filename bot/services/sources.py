"""Members' own images as job sources (`/imagine image:`, "Imagine from this image", `/describe`).

A job's init image is always an image row of another job (`source_job_id`, `source_image_index`): the dispatcher
loads it from there when it hands the job to a worker (also after a restart), U/V/🔄 on the result repeat from it,
and ℹ️ names it. A member's upload gets such a row too: `store_upload` writes an *upload job* in one transaction —
status `posted` (so it is never dispatched, never posted again at start, and the retention sweep removes its file
after IMAGE_RETENTION_DAYS like any other result, not while a job still reads it), cost 0 (nothing charged), one
image row with the file under `data/images/` and its sha256 — and the job made from it names it as its source.
`discard_upload` removes it again when that job is refused (nothing is left and nothing charged).

An upload job's `created_at` is that of the member's job before it (see `store_upload`): the per-member cooldown,
which reads the newest job's, is neither started nor moved by an upload. An upload job has no message (`posted_message_id` is empty), so the web gallery does not list it; its request's
prompt says what it is (`UPLOAD_PROMPT`).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from datetime import timedelta
from typing import NamedTuple

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.db.engine import run_write
from bot.db.models import ChargeState, Image, Job, JobStatus
from bot.services.images import ImageStore
from generation.protocol.contract import GenerationRequest

#: The prompt an upload job's request stores (it is never drawn).
UPLOAD_PROMPT = "(an image uploaded by the member)"
#: How far back the `created_at` of a member's first upload in a guild is put (beyond any cooldown).
UPLOAD_NO_COOLDOWN_DAYS = 1


class Upload(NamedTuple):
    job_id: int
    path: str
    sha256: str


async def store_upload(sessions: async_sessionmaker[AsyncSession], images: ImageStore, *, guild_id: int,
                       channel_id: int, user_id: int, png: bytes, width: int, height: int, model: str,
                       clock=None) -> Upload:
    """Keep a member's prepared image (`bot.services.images.prepare_source`: a PNG of `width` x `height`) as an
    upload job with one image; returns its job id (the source of the job made from it)."""
    from bot.db.models import utcnow

    now = (clock or utcnow)()
    request = GenerationRequest(prompt=UPLOAD_PROMPT, steps=1, width=width, height=height, num_images=1,
                                model=model)
    written: list[str] = []

    async def work(s: AsyncSession) -> Upload:
        # The member's cooldown reads the `created_at` of their newest job in the guild: the upload repeats that of
        # the job before it, so storing an upload never starts (nor moves) a cooldown; the job made from it does.
        newest = (await s.execute(select(Job.created_at).where(Job.guild_id == guild_id, Job.user_id == user_id)
                                  .order_by(Job.id.desc()).limit(1))).scalar_one_or_none()
        created = newest if newest is not None else now - timedelta(days=UPLOAD_NO_COOLDOWN_DAYS)
        job = Job(guild_id=guild_id, channel_id=channel_id, user_id=user_id, status=JobStatus.POSTED.value, cost=0,
                  charge_state=ChargeState.COMMITTED.value, request=request.to_json(with_image=False), model=model,
                  attempts=0, created_at=created, finished_at=now, posted_at=now,
                  secret=secrets.token_bytes(32))
        s.add(job)
        await s.flush()
        stored = await asyncio.to_thread(images.save, job.id, 0, png)
        written.append(stored.path)
        s.add(Image(job_id=job.id, index=0, seed=0, path=stored.path, sha256=stored.sha256, nsfw=False,
                    created_at=now))
        await s.flush()
        return Upload(job.id, stored.path, stored.sha256)

    try:
        return await run_write(sessions, work)
    except BaseException:
        for path in written:
            with contextlib.suppress(OSError, ValueError):
                images.delete(path)
        raise


async def discard_upload(sessions: async_sessionmaker[AsyncSession], images: ImageStore, upload: Upload) -> None:
    """Remove an upload job and its file (the job made from it was refused)."""

    async def work(s: AsyncSession) -> None:
        await s.execute(delete(Image).where(Image.job_id == upload.job_id))
        await s.execute(delete(Job).where(Job.id == upload.job_id, Job.cost == 0))

    await run_write(sessions, work)
    with contextlib.suppress(OSError, ValueError):
        images.delete(upload.path)
