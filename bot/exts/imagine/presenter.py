"""What members see of a job after it was queued: progress edits, the posted result, failure and cancellation.

The dispatcher calls these methods as things happen (and again on start-up for unfinished jobs). Each method reads
the job from the database first and acts only if the job's state calls for it, so calling one twice is harmless:

- `job_progress`: edits the job's progress message (queue position, progress bar, preview), at most once every
  `EDIT_INTERVAL` seconds per job (Discord rate-limits message edits).
- `job_loading`: the worker loads the job's model first: the message says "loading model…" until the first step.
- `job_queued` / `job_position`: the job's place in the line; `job_position` gets the place the feeder just read
  (no count again), reads nothing when the place shown is still right, and edits at most
  `POSITION_EDITS_PER_CHANNEL` messages of one channel per `POSITION_EDIT_WINDOW` seconds (Discord rate-limits
  edits per channel; the feeder comes back to what was put off, the front of the line first).
- `job_succeeded`: posts the result as a new channel message with the bot's token (not the interaction webhook,
  whose token dies after 15 minutes), with the job buttons, and marks the job posted exactly once. The post carries
  a nonce made from the job id, so a repeated post (a lost answer, a restart between posting and marking) returns
  the first message instead of a second; a 413 (upload too large) is answered by posting smaller. Discord remembers
  a nonce only for minutes, so when an earlier attempt may have reached Discord (the job succeeded before this
  process started, or this process tried already), the channel's latest `RECOVERY_SCAN` messages are looked through
  first: a message of the bot's own with the job's 🗑️ button is that post, and is marked posted instead of posting
  again (`_earlier_post`).
- `job_failed` / `job_cancelled`: turn the progress message into the final word (or, when that message is gone,
  tell the owner in a new message).
- `job_finished` (what the dispatcher calls): one of the above, tried again for a while when Discord fails.

Edits of one job's progress message never overlap, and each re-reads the job first, so a slow "queued" edit cannot
land after the final one.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import io
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar

import aiohttp
import discord

from bot.db.engine import is_busy_error, is_full_error
from bot.db.models import utcnow
from bot.dispatch.recorder import read_suggestions
from bot.services.images import ImageDamaged, read_header
from bot.ui.buttons import DELETE, describe_view, grid_view, job_custom_id, progress_view, single_view
from bot.ui.embeds import (
    cancelled_embed,
    failed_embed,
    finished_progress_embed,
    loading_embed,
    progress_embed,
    queued_embed,
    result_embed,
    suggestions_embed,
)
from bot.ui.images import DEFAULT_UPLOAD_LIMIT, fit_to_limit, job_grid
from generation.protocol.contract import MAX_UPSCALE_SIDE, UPSCALE_FACTORS

log = logging.getLogger("bot.jobs")
T = TypeVar("T")

EDIT_INTERVAL = 1.5
#: Seconds between attempts at showing a job's outcome while Discord (or the database) keeps failing.
RETRY_DELAYS = (2.0, 5.0, 15.0, 30.0, 60.0, 120.0)
#: How many times a result refused as too large (413) is posted smaller before it goes without its picture.
MAX_SHRINKS = 4
#: Discord's JSON error code for "Request entity too large".
ENTITY_TOO_LARGE = 40005
#: Stop using an interaction token this long before it expires.
TOKEN_MARGIN = timedelta(seconds=60)
TOKEN_LIFETIME = timedelta(minutes=15)
PREVIEW_NAME = "preview.png"
#: At most this many queue-position edits in one channel per POSITION_EDIT_WINDOW seconds (Discord allows about five
#: message edits per channel in five seconds; progress edits and results need the rest of the allowance).
POSITION_EDITS_PER_CHANNEL = 4
POSITION_EDIT_WINDOW = 5.0
#: How many of a channel's latest messages are looked through for a result post an earlier attempt made.
RECOVERY_SCAN = 50
#: What `Interaction.edit_original_response` reads of its interaction (discord.py 2.x): all `response_handle` keeps.
RESPONSE_FIELDS = ("id", "type", "guild_id", "application_id", "token", "channel", "_state", "_client", "_session")


def nsfw_visible(policy: str, channel: Any) -> bool:
    """Whether an image the safety checker flagged may be shown in `channel` under the guild's policy."""
    if policy == "allow":
        return True
    if policy == "age_restricted":
        return bool(getattr(channel, "is_nsfw", lambda: False)())
    return False


class EditBudget:
    """At most `count` edits per `window` seconds for each channel (a sliding window)."""

    def __init__(self, count: int = POSITION_EDITS_PER_CHANNEL, window: float = POSITION_EDIT_WINDOW,
                 clock: Callable[[], float] = time.monotonic):
        self.count, self.window, self.clock = count, window, clock
        self._spent: dict[int, collections.deque[float]] = {}

    def available(self, channel_id: int) -> bool:
        """Whether the channel has an edit left now (nothing is spent)."""
        now = self.clock()
        spent = self._spent.setdefault(channel_id, collections.deque())
        while spent and now - spent[0] >= self.window:
            spent.popleft()
        return len(spent) < self.count

    def take(self, channel_id: int) -> bool:
        """Spend one edit in the channel; False (nothing spent) when its budget for now is used up."""
        if not self.available(channel_id):
            return False
        self._spent[channel_id].append(self.clock())
        return True


class JobPresenter:
    def __init__(self, bot: Any):
        self.bot = bot
        self._last_edit: dict[int, float] = {}
        self._locks: dict[int, asyncio.Lock] = {}
        #: One edit of a job's progress message at a time, each after re-reading the job: a slow "queued" edit can
        #: then never land after the final "done" one.
        self._edit_locks: dict[int, asyncio.Lock] = {}
        #: The interaction whose response is a job's progress message, while its token lives (in memory only), as
        #: `response_handle` keeps it.
        self._interactions: dict[int, tuple[discord.Interaction, datetime]] = {}
        self._pending_preview: dict[int, bytes] = {}
        #: Hash of the preview each job's message shows (the same preview is not uploaded twice).
        self._sent_preview: dict[int, int] = {}
        #: What each waiting job's message shows (position, paused), so an unchanged line costs no edit.
        self._shown_position: dict[int, tuple[int | None, bool]] = {}
        #: The guild and the message's channel of each job whose position is shown (the guild's paused flag is part
        #: of what is shown; the channel's edits are counted).
        self._queued_where: dict[int, tuple[int, int]] = {}
        #: Queue-position edits per channel (`job_queued`, `job_position`).
        self.position_budget = EditBudget()
        #: Jobs whose message says "loading model…": it stays until their first step.
        self._loading: set[int] = set()
        #: When this presenter (this process) started, on the job service's clock: a job that succeeded before may
        #: have been posted by the process before (`_may_have_posted`).
        self._started = utcnow()
        #: Jobs whose result this process tried to post and has not marked posted yet.
        self._tried: set[int] = set()

    def remember(self, job_id: int, interaction: discord.Interaction, *, position: int | None = None, paused: bool = False) -> None:
        """Edit the progress message through `interaction`'s token while it is valid (Discord's intended way);
        after that, or after a restart, edits go through the channel with the bot's token."""
        # Counted from now (the response was just sent), not from the snowflake: both ends then read one clock.
        self._interactions[job_id] = (response_handle(interaction), discord.utils.utcnow() + TOKEN_LIFETIME - TOKEN_MARGIN)
        self._shown_position[job_id] = (position, paused)
        if interaction.guild_id is not None and interaction.channel_id is not None:
            self._queued_where[job_id] = (interaction.guild_id, interaction.channel_id)

    def _forget(self, job_id: int) -> None:
        self._edit_locks.pop(job_id, None)
        self._last_edit.pop(job_id, None)
        self._interactions.pop(job_id, None)
        self._pending_preview.pop(job_id, None)
        self._sent_preview.pop(job_id, None)
        self._shown_position.pop(job_id, None)
        self._queued_where.pop(job_id, None)
        self._loading.discard(job_id)

    @property
    def deps(self) -> Any:
        return self.bot.deps

    def _lock(self, job_id: int) -> asyncio.Lock:
        return self._locks.setdefault(job_id, asyncio.Lock())

    def _edit_lock(self, job_id: int) -> asyncio.Lock:
        return self._edit_locks.setdefault(job_id, asyncio.Lock())

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

    async def _edit_progress(self, job: Any, *, final: bool = False, preview: bytes | None = None,
                             **fields: Any) -> bool:
        """Edit the job's progress message: through the interaction while its token lives, else (or when Discord
        refuses the token) through the channel with the bot's token. True when the message was edited.

        `preview` is attached as PREVIEW_NAME (a fresh file per attempt: discord.py closes a file once sent).
        With `final`, a transient Discord failure raises (the caller retries) instead of being logged and dropped."""
        fields.setdefault("allowed_mentions", discord.AllowedMentions.none())

        def with_files() -> dict[str, Any]:
            if preview is None:
                return fields
            return {**fields, "attachments": [discord.File(io.BytesIO(preview), filename=PREVIEW_NAME)]}

        interaction, usable_until = self._interactions.get(job.id, (None, None))
        if interaction is not None and discord.utils.utcnow() < usable_until:
            try:
                await interaction.edit_original_response(**with_files())
                return True
            except discord.HTTPException as e:
                log.info("job %s: editing through the interaction failed (%s %s); using the channel from now on",
                         job.id, e.status, e.code)
                self._interactions.pop(job.id, None)
        message = await self._progress_message(job)
        if message is None:
            return False
        try:
            await message.edit(**with_files())
            return True
        except discord.NotFound:
            log.info("job %s: its progress message is gone", job.id)
        except discord.HTTPException as e:
            if final and is_transient(e):
                raise
            log.warning("job %s: could not edit its progress message", job.id, exc_info=True)
        return False

    async def _tell_owner(self, job: Any, embed: discord.Embed) -> None:
        """Show the final word on a job: on its progress message, or when that is gone, in a new message to the
        owner in the job's channel (named, not pinged)."""
        async with self._edit_lock(job.id):
            if await self._edit_progress(job, final=True, embed=embed, attachments=[], view=None):
                return
            channel = await self._channel(job.channel_id)
            await channel.send(content=f"<@{job.user_id}>", embed=embed, allowed_mentions=discord.AllowedMentions.none(),
                               nonce=f"imagine-end-{job.id}"[:25])
            log.info("job %s: its progress message is gone; told its owner in a new message", job.id)

    # --- while it runs --------------------------------------------------------------------------------------------
    async def job_queued(self, job_id: int) -> None:
        """Refresh the queue position shown on a waiting job (counted here; the job was just dispatched)."""
        await self._show_place(job_id, None)

    async def job_position(self, job_id: int, position: int) -> bool:
        """Show a waiting job's place as the feeder just read the line (`position` jobs ahead of it). When the
        message shows that place already nothing is read but the guild's paused flag; False when the channel's
        position edits are used up for now (`position_budget`; then nothing is read): the feeder comes back to it."""
        place = position + 1
        where = self._queued_where.get(job_id)
        if where is not None:
            guild_id, channel_id = where
            if self._shown_position.get(job_id, (None, False))[0] == place:
                if self._shown_position[job_id] == (place, await self.deps.moderation.is_paused(guild_id)):
                    return True
            if not self.position_budget.available(channel_id):
                return False
        return await self._show_place(job_id, position)

    async def _show_place(self, job_id: int, position: int | None) -> bool:
        """Edit the job's message to show its place (`position`, or counted now when None) if that changed."""
        async with self._edit_lock(job_id):
            job = await self.deps.jobs.find(job_id)
            if job is None or job.status != "queued" or job_id in self._loading:
                return True
            if position is None:
                position = await self.deps.jobs.position(job_id)
            paused = await self.deps.moderation.is_paused(job.guild_id)
            channel_id = job.progress_channel_id or job.channel_id
            self._queued_where[job_id] = (job.guild_id, channel_id)
            place = None if position is None else position + 1
            if self._shown_position.get(job_id) == (place, paused):
                return True
            if not self.position_budget.take(channel_id):
                return False
            self._shown_position[job_id] = (place, paused)
            await self._edit_progress(job, embed=queued_embed(job, place, paused=paused), view=progress_view(job.id))
            return True

    async def job_loading(self, job_id: int) -> None:
        """Show that the worker loads the job's model before it starts (this can take a while)."""
        self._last_edit[job_id] = time.monotonic()
        async with self._edit_lock(job_id):
            job = await self.deps.jobs.find(job_id)
            if job is None or job.status not in ("queued", "running"):
                return
            self._loading.add(job_id)
            self._shown_position.pop(job_id, None)
            await self._edit_progress(job, embed=loading_embed(job), view=progress_view(job.id))

    async def job_progress(self, job_id: int, step: int, total: int, preview: bytes | None = None) -> None:
        """Show step `step` of `total` (and the preview) on the job's progress message, rate-limited."""
        if job_id in self._loading:
            if step == 0:
                return  # started, but the model is still loading: keep saying so
            self._loading.discard(job_id)
            self._last_edit.pop(job_id, None)  # the first step replaces "loading model…" at once
        if preview and hash(preview) != self._sent_preview.get(job_id):
            self._pending_preview[job_id] = preview  # a throttled preview is shown by the next edit
        now = time.monotonic()
        if step < total and now - self._last_edit.get(job_id, 0.0) < EDIT_INTERVAL:
            return
        self._last_edit[job_id] = now
        async with self._edit_lock(job_id):
            job = await self.deps.jobs.find(job_id)
            if job is None or job.status not in ("queued", "running"):
                return
            self._shown_position.pop(job_id, None)  # the message no longer shows the queue
            preview = self._pending_preview.pop(job_id, None) or None
            if preview:
                self._sent_preview[job_id] = hash(preview)
            # Without a new preview the message keeps its attachment; the embed keeps pointing at it.
            shown = PREVIEW_NAME if job_id in self._sent_preview else None
            embed = progress_embed(job, step, total, preview_filename=shown)
            await self._edit_progress(job, embed=embed, view=progress_view(job.id), preview=preview)

    # --- the end ---------------------------------------------------------------------------------------------------
    async def job_succeeded(self, job_id: int, *, timeline: bytes | None = None) -> discord.Message | None:
        """Post the result of a succeeded job once; returns the posted message (None if it was posted already).

        The post carries a nonce made from the job id (`enforce_nonce`), so if Discord created the message but its
        answer was lost, posting again within a few minutes returns that message instead of a second one."""
        async with self._lock(job_id):
            job = await self.deps.jobs.find(job_id)
            if job is None or job.status != "succeeded":
                return None
            channel = await self._channel(job.channel_id)
            message = await self._earlier_post(job, channel) if self._may_have_posted(job) else None
            self._tried.add(job.id)
            if message is None:
                message = await self._post_result(job, channel, timeline)
            if not await self.deps.jobs.mark_posted(job.id, channel.id, message.id):
                posted = await self.deps.jobs.find(job.id)
                if posted is None or posted.posted_message_id != message.id:
                    # Someone else posted it between our read and now: keep theirs.
                    await message.delete()
                return None
            self._tried.discard(job.id)
            log.info("job %s posted as message %s in channel %s", job.id, message.id, channel.id)
        self._locks.pop(job_id, None)
        async with self._edit_lock(job_id):
            await self._edit_progress(job, embed=finished_progress_embed(job, message.jump_url), attachments=[], view=None)
        self._forget(job_id)
        return message

    async def _post_result(self, job: Any, channel: Any, timeline: bytes | None) -> discord.Message:
        """Compose the job's picture (images the channel may show) and post it with its buttons; a `describe` job
        posts its prompt suggestions instead."""
        if job.mode == "describe":
            return await self._post_suggestions(job, channel)
        policy = (await self.deps.moderation.guild_settings(job.guild_id)).nsfw_policy
        shown = [img for img in job.images if not img.nsfw or nsfw_visible(str(policy), channel)]
        hidden = len(job.images) - len(shown)
        try:
            # Every file is read with its recorded sha256; the grid is composed once and cached for /show.
            grid = await asyncio.to_thread(job_grid, self.deps.images, job.id, shown)
        except (ImageDamaged, FileNotFoundError) as exc:
            log.error("job %s: an image file is damaged or missing (%s); posting without the picture",
                      job.id, type(exc).__name__)
            grid = None
        limit = getattr(getattr(channel, "guild", None), "filesize_limit", DEFAULT_UPLOAD_LIMIT)
        return await self._send_result(job, channel, grid, timeline, limit, hidden)

    async def _post_suggestions(self, job: Any, channel: Any) -> discord.Message:
        """/describe's result: the suggestions (escaped, no pings) with a button each that draws it."""
        texts = await asyncio.to_thread(read_suggestions, self.deps.images, job.id)
        return await channel.send(embed=suggestions_embed(job, f"<@{job.user_id}>", texts),
                                  view=describe_view(job.id, len(texts)), nonce=result_nonce(job.id),
                                  allowed_mentions=discord.AllowedMentions.none())

    def _may_have_posted(self, job: Any) -> bool:
        """Whether an earlier attempt may have created the job's result message without the bot learning of it:
        this process tried already, or the job succeeded before this process started (a crash or restart between
        posting and marking)."""
        finished = getattr(job, "finished_at", None)
        return job.id in self._tried or (finished is not None and finished < self._started)

    async def _earlier_post(self, job: Any, channel: Any) -> discord.Message | None:
        """The job's result message if an earlier attempt made it: among the channel's latest `RECOVERY_SCAN`
        messages, one of the bot's own (not the job's progress message) carrying the job's 🗑️ button. None when
        there is none, or the channel's history cannot be read (the post then relies on its nonce alone)."""
        me = getattr(self.bot.user, "id", None)
        wanted = job_custom_id(job.id, DELETE)
        try:
            async for message in channel.history(limit=RECOVERY_SCAN):
                if message.author.id != me or message.id == job.progress_message_id:
                    continue
                if any(getattr(child, "custom_id", None) == wanted
                       for row in message.components for child in getattr(row, "children", ())):
                    log.info("job %s: its result was posted before (message %s); marking it posted", job.id,
                             message.id)
                    return message
        except discord.HTTPException as e:
            if is_transient(e):
                raise
            log.warning("job %s: could not read the latest messages of channel %s (%s %s); posting with the nonce "
                        "alone", job.id, channel.id, e.status, e.code)
        return None

    async def _send_result(self, job: Any, channel: Any, grid: bytes | None, timeline: bytes | None, limit: int,
                           hidden: int) -> discord.Message:
        """Send the result message. When Discord refuses the upload as too large (413: the server's real limit is
        below what the bot was told), the timeline is left out, then the grid is re-encoded smaller, at most
        `MAX_SHRINKS` times; if even that is refused, the result is posted without its picture (the buttons still
        work and say so)."""
        view = result_view(self.deps, job, grid)
        owner = f"<@{job.user_id}>"
        for attempt in range(MAX_SHRINKS + 1):
            files: list[discord.File] = []
            filename, reencoded = f"job{job.id}.png", False
            note = ""
            if timeline and len(timeline) > limit // 2:
                log.info("job %s: timeline of %d bytes left out (upload limit %d)", job.id, len(timeline), limit)
                timeline = None
            if grid is not None:
                try:
                    fitted = await asyncio.to_thread(fit_to_limit, grid, filename, limit - len(timeline or b""))
                    filename, reencoded = fitted.filename, fitted.reencoded
                    files.append(discord.File(io.BytesIO(fitted.data), filename=filename))
                except ValueError:
                    note = "The picture was too large for this server's upload limit; the buttons below still work."
            if timeline:
                files.append(discord.File(io.BytesIO(timeline), filename=f"job{job.id}_timeline.webp"))
            embed = result_embed(job, owner, filename=filename, reencoded=reencoded, hidden=hidden)
            if not files or grid is None or note:
                embed.set_image(url=None)
            if note:
                embed.description = f"{embed.description}\n{note}"
            size = sum(len(f.fp.getbuffer()) for f in files)
            try:
                return await channel.send(embed=embed, files=files, view=view, nonce=result_nonce(job.id),
                                          allowed_mentions=discord.AllowedMentions.none())
            except discord.HTTPException as e:
                if not (e.status == 413 or e.code == ENTITY_TOO_LARGE) or not files or attempt == MAX_SHRINKS:
                    raise
                log.warning("job %s: Discord refused %d bytes of upload as too large; posting it smaller", job.id, size)
                if timeline:
                    timeline = None
                else:
                    limit = max(1, min(limit, size) // 2) if attempt < MAX_SHRINKS - 1 else 1
        raise AssertionError("unreachable")

    async def job_failed(self, job_id: int) -> None:
        job = await self.deps.jobs.find(job_id)
        if job is None or job.status != "failed":
            return
        await self._tell_owner(job, failed_embed(job, job.error or "unknown error"))
        self._forget(job_id)

    async def job_cancelled(self, job_id: int) -> None:
        job = await self.deps.jobs.find(job_id)
        if job is None or job.status != "cancelled":
            return
        by = f"<@{job.cancelled_by}>" if job.cancelled_by and job.cancelled_by != job.user_id else None
        await self._tell_owner(job, cancelled_embed(job, by))
        self._forget(job_id)

    async def job_finished(self, job_id: int, *, timeline: bytes | None = None) -> None:
        """Whatever the final state is, show it (the dispatcher calls this after storing an outcome).

        When Discord (or the database) fails for a while — a 5xx after discord.py's own retries, a 503, a long rate
        limit, a network error, a locked database — it tries again after `RETRY_DELAYS`; a result still not posted
        then is posted at the next start (the dispatcher hands over every succeeded, unposted job)."""
        await with_retries(lambda: self._show_outcome(job_id, timeline), f"job {job_id}: showing its outcome")

    async def _show_outcome(self, job_id: int, timeline: bytes | None) -> None:
        job = await self.deps.jobs.find(job_id)
        if job is None:
            return
        if job.status == "succeeded":
            await self.job_succeeded(job_id, timeline=timeline)
        elif job.status == "failed":
            await self.job_failed(job_id)
        elif job.status == "cancelled":
            await self.job_cancelled(job_id)


async def with_retries(fn: Callable[[], Awaitable[T]], what: str, delays: Sequence[float] = RETRY_DELAYS) -> T:
    """`await fn()`, again after each of `delays` while it fails with a transient error (`is_transient`)."""
    for attempt, delay in enumerate((0.0, *delays)):
        if delay:
            await asyncio.sleep(delay)
        try:
            return await fn()
        except Exception as e:
            if not is_transient(e) or attempt == len(delays):
                raise
            log.warning("%s failed (%s); trying again in %.0f s", what, describe(e), delays[attempt])
    raise AssertionError("unreachable")


#: Modes whose result is one image shown large, with the single-image buttons (Vary, Vary (Region), Zoom Out, Pan).
SINGLE_MODES = ("upscale", "inpaint", "outpaint")


def result_view(deps: Any, job: Any, picture: bytes | None) -> discord.ui.View:
    """The buttons of a result: U/V/🔄 under a grid; under a single image (an upscale or an edit) Vary, and the
    editing buttons where the job's model can redraw part of an image (its card says so, or no worker serves it
    now: the buttons then say so when clicked), Make square for a non-square picture (its header's size)."""
    if job.mode not in SINGLE_MODES:
        return grid_view(job.id, len(job.images))
    card = None
    with contextlib.suppress(Exception):
        card = deps.dispatcher.card(job.model)
    size = None
    if picture is not None:
        with contextlib.suppress(ValueError):
            header = read_header(picture, None)
            size = (header.width, header.height)
    return single_view(job.id, size, edits=card is None or bool(card.inpainting),
                       upscales=upscale_factors(card, size))


def upscale_factors(card: Any, size: tuple[int, int] | None) -> tuple[int, ...]:
    """The factors (2, 4) a single image of `size` can be upscaled by on `card`'s model: the result's longer side
    within `MAX_UPSCALE_SIDE` (beyond the model's `upscale_limit` the upscale skips its refine pass)."""
    if card is None or size is None:
        return ()
    return tuple(f for f in UPSCALE_FACTORS if f * max(size) <= MAX_UPSCALE_SIDE)


def response_handle(interaction: discord.Interaction) -> discord.Interaction:
    """An interaction reduced to what editing its response needs (RESPONSE_FIELDS: the application id and token,
    the client's connection and HTTP session, the channel); `edit_original_response` works on it as on the whole.

    The presenter keeps a job's interaction for the token's 15 minutes, and a whole one keeps its member, payload,
    command namespace and response objects alive (a dozen objects of its own for the garbage collector, one here):
    in a burst of 2,000 `/imagine`, some 20,000 objects more for every full collection to walk."""
    handle = discord.Interaction.__new__(type(interaction))
    for name in RESPONSE_FIELDS:
        setattr(handle, name, getattr(interaction, name))
    handle.user = None  # read by its repr only
    return handle


def result_nonce(job_id: int) -> str:
    """The nonce of a job's result post (Discord allows 25 characters)."""
    return f"imagine-job-{job_id}"[:25]


def is_transient(e: BaseException) -> bool:
    """A failure worth trying again later: Discord's 5xx and rate limits, network trouble, a busy or full database."""
    if isinstance(e, discord.RateLimited | discord.DiscordServerError):
        return True
    if isinstance(e, discord.HTTPException):
        return e.status >= 500 or e.status == 429
    if isinstance(e, aiohttp.ClientError | asyncio.TimeoutError | ConnectionError):
        return True
    return is_busy_error(e) or is_full_error(e)


def describe(e: BaseException) -> str:
    if isinstance(e, discord.HTTPException):
        return f"HTTP {e.status}, code {e.code}: {e.text[:200]}"
    return f"{type(e).__name__}: {e}"
