"""What members see of a job after it was queued: progress edits, the posted result, failure and cancellation.

The dispatcher calls these methods as things happen (and again on start-up for unfinished jobs). Each method reads
the job from the database first and acts only if the job's state calls for it, so calling one twice is harmless:

- `job_progress`: edits the job's progress message (queue position, progress bar, preview), at most once every
  `EDIT_INTERVAL` seconds per job (Discord rate-limits message edits).
- `job_succeeded`: posts the result as a new channel message with the bot's token (not the interaction webhook,
  whose token dies after 15 minutes), with the job buttons, and marks the job posted exactly once.
- `job_failed` / `job_cancelled`: turn the progress message into the final word.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from datetime import datetime, timedelta
from typing import Any

import discord

from bot.ui.buttons import grid_view, progress_view, single_view
from bot.ui.embeds import (
    cancelled_embed,
    failed_embed,
    finished_progress_embed,
    progress_embed,
    queued_embed,
    result_embed,
)
from bot.ui.images import compose_grid, fit_to_limit

log = logging.getLogger("bot.jobs")

EDIT_INTERVAL = 1.5
#: Stop using an interaction token this long before it expires.
TOKEN_MARGIN = timedelta(seconds=60)
TOKEN_LIFETIME = timedelta(minutes=15)
PREVIEW_NAME = "preview.png"


def nsfw_visible(policy: str, channel: Any) -> bool:
    """Whether an image the safety checker flagged may be shown in `channel` under the guild's policy."""
    if policy == "allow":
        return True
    if policy == "age_restricted":
        return bool(getattr(channel, "is_nsfw", lambda: False)())
    return False


class JobPresenter:
    def __init__(self, bot: Any):
        self.bot = bot
        self._last_edit: dict[int, float] = {}
        self._locks: dict[int, asyncio.Lock] = {}
        #: The interaction whose response is a job's progress message, while its token lives (in memory only).
        self._interactions: dict[int, tuple[discord.Interaction, datetime]] = {}
        self._pending_preview: dict[int, bytes] = {}
        #: Hash of the preview each job's message shows (the same preview is not uploaded twice).
        self._sent_preview: dict[int, int] = {}
        #: What each waiting job's message shows (position, paused), so an unchanged line costs no edit.
        self._shown_position: dict[int, tuple[int | None, bool]] = {}

    def remember(self, job_id: int, interaction: discord.Interaction, *, position: int | None = None, paused: bool = False) -> None:
        """Edit the progress message through `interaction`'s token while it is valid (Discord's intended way);
        after that, or after a restart, edits go through the channel with the bot's token."""
        # Counted from now (the response was just sent), not from the snowflake: both ends then read one clock.
        self._interactions[job_id] = (interaction, discord.utils.utcnow() + TOKEN_LIFETIME - TOKEN_MARGIN)
        self._shown_position[job_id] = (position, paused)

    def _forget(self, job_id: int) -> None:
        self._last_edit.pop(job_id, None)
        self._interactions.pop(job_id, None)
        self._pending_preview.pop(job_id, None)
        self._sent_preview.pop(job_id, None)
        self._shown_position.pop(job_id, None)

    @property
    def deps(self) -> Any:
        return self.bot.deps

    def _lock(self, job_id: int) -> asyncio.Lock:
        return self._locks.setdefault(job_id, asyncio.Lock())

    async def _channel(self, channel_id: int) -> Any:
        channel = self.bot.get_channel(channel_id)
        if channel is None:
            channel = await self.bot.fetch_channel(channel_id)
        return channel

    async def _progress_message(self, job: Any) -> discord.PartialMessage | None:
        if not job.progress_channel_id or not job.progress_message_id:
            return None
        channel = await self._channel(job.progress_channel_id)
        return channel.get_partial_message(job.progress_message_id)

    async def _edit_progress(self, job: Any, **fields: Any) -> None:
        fields.setdefault("allowed_mentions", discord.AllowedMentions.none())
        interaction, usable_until = self._interactions.get(job.id, (None, None))
        if interaction is not None and discord.utils.utcnow() < usable_until:
            try:
                await interaction.edit_original_response(**fields)
                return
            except discord.HTTPException:
                log.info("job %s: editing through the interaction failed; using the channel", job.id)
        message = await self._progress_message(job)
        if message is None:
            return
        try:
            await message.edit(**fields)
        except discord.NotFound:
            log.info("job %s: its progress message is gone", job.id)
        except discord.HTTPException:
            log.warning("job %s: could not edit its progress message", job.id, exc_info=True)

    # --- while it runs --------------------------------------------------------------------------------------------
    async def job_queued(self, job_id: int) -> None:
        """Refresh the queue position shown on a waiting job."""
        job = await self.deps.jobs.find(job_id)
        if job is None or job.status != "queued":
            return
        position = await self.deps.jobs.position(job_id)
        paused = await self.deps.moderation.is_paused(job.guild_id)
        place = None if position is None else position + 1
        if self._shown_position.get(job_id) == (place, paused):
            return
        self._shown_position[job_id] = (place, paused)
        await self._edit_progress(job, embed=queued_embed(job, place, paused=paused), view=progress_view(job.id))

    async def job_progress(self, job_id: int, step: int, total: int, preview: bytes | None = None) -> None:
        """Show step `step` of `total` (and the preview) on the job's progress message, rate-limited."""
        if preview and hash(preview) != self._sent_preview.get(job_id):
            self._pending_preview[job_id] = preview  # a throttled preview is shown by the next edit
        now = time.monotonic()
        if step < total and now - self._last_edit.get(job_id, 0.0) < EDIT_INTERVAL:
            return
        self._last_edit[job_id] = now
        job = await self.deps.jobs.find(job_id)
        if job is None or job.status not in ("queued", "running"):
            return
        fields: dict[str, Any] = {"view": progress_view(job.id)}
        self._shown_position.pop(job_id, None)  # the message no longer shows the queue
        preview = self._pending_preview.pop(job_id, None)
        if preview:
            fields["attachments"] = [discord.File(io.BytesIO(preview), filename=PREVIEW_NAME)]
            self._sent_preview[job_id] = hash(preview)
        # Without a new preview the message keeps its attachment; the embed keeps pointing at it.
        shown = PREVIEW_NAME if job_id in self._sent_preview else None
        fields["embed"] = progress_embed(job, step, total, preview_filename=shown)
        await self._edit_progress(job, **fields)

    # --- the end ---------------------------------------------------------------------------------------------------
    async def job_succeeded(self, job_id: int, *, timeline: bytes | None = None) -> discord.Message | None:
        """Post the result of a succeeded job once; returns the posted message (None if it was posted already)."""
        async with self._lock(job_id):
            job = await self.deps.jobs.find(job_id)
            if job is None or job.status != "succeeded":
                return None
            channel = await self._channel(job.channel_id)
            policy = (await self.deps.moderation.guild_settings(job.guild_id)).nsfw_policy
            shown = [img for img in job.images if not img.nsfw or nsfw_visible(str(policy), channel)]
            hidden = len(job.images) - len(shown)
            pngs = await asyncio.to_thread(lambda: [self.deps.images.read(img.path) for img in shown])
            files: list[discord.File] = []
            reencoded = False
            filename = f"job{job.id}.png"
            if pngs:
                grid = await asyncio.to_thread(compose_grid, pngs)
                limit = getattr(getattr(channel, "guild", None), "filesize_limit", 10 * 1024 * 1024)
                if timeline and len(timeline) > limit // 2:
                    log.info("job %s: timeline of %d bytes left out (upload limit %d)", job.id, len(timeline), limit)
                    timeline = None
                if timeline:
                    limit -= len(timeline)
                fitted = await asyncio.to_thread(fit_to_limit, grid, filename, limit)
                filename, reencoded = fitted.filename, fitted.reencoded
                files.append(discord.File(io.BytesIO(fitted.data), filename=filename))
            if timeline:
                files.append(discord.File(io.BytesIO(timeline), filename=f"job{job.id}_timeline.webp"))
            owner = f"<@{job.user_id}>"
            embed = result_embed(job, owner, filename=filename, reencoded=reencoded, hidden=hidden)
            if not pngs:
                embed.set_image(url=None)
            view = single_view(job.id) if job.mode == "upscale" else grid_view(job.id, len(job.images))
            message = await channel.send(embed=embed, files=files, view=view, allowed_mentions=discord.AllowedMentions.none())
            if not await self.deps.jobs.mark_posted(job.id, channel.id, message.id):
                # Someone else posted it between our read and now: keep theirs.
                await message.delete()
                return None
            log.info("job %s posted as message %s in channel %s", job.id, message.id, channel.id)
        self._locks.pop(job_id, None)
        await self._edit_progress(job, embed=finished_progress_embed(job, message.jump_url), attachments=[], view=None)
        self._forget(job_id)
        return message

    async def job_failed(self, job_id: int) -> None:
        job = await self.deps.jobs.find(job_id)
        if job is None or job.status != "failed":
            return
        await self._edit_progress(job, embed=failed_embed(job, job.error or "unknown error"), attachments=[], view=None)
        self._forget(job_id)

    async def job_cancelled(self, job_id: int) -> None:
        job = await self.deps.jobs.find(job_id)
        if job is None or job.status != "cancelled":
            return
        by = f"<@{job.cancelled_by}>" if job.cancelled_by and job.cancelled_by != job.user_id else None
        await self._edit_progress(job, embed=cancelled_embed(job, by), attachments=[], view=None)
        self._forget(job_id)

    async def job_finished(self, job_id: int, *, timeline: bytes | None = None) -> None:
        """Whatever the final state is, show it (the dispatcher calls this after storing an outcome)."""
        job = await self.deps.jobs.find(job_id)
        if job is None:
            return
        if job.status == "succeeded":
            await self.job_succeeded(job_id, timeline=timeline)
        elif job.status == "failed":
            await self.job_failed(job_id)
        elif job.status == "cancelled":
            await self.job_cancelled(job_id)
