"""Starting a job from an interaction: the checks, the reservation, the queued message, the hand-off to the queue.

/imagine and the buttons that make new jobs (U, V, 🔄, ✏️) all go through `start_job`, so every new job is checked
the same way: art channel, ban, blocked terms (prompt and negative prompt), the server's queue cap, the model it targets (served by a live worker and offered to the member,
see bot.exts.imagine.models; its parameters filled from and checked against the model's card), then
`JobService.create` (the per-member cooldown, limits and quota, one transaction; a refusal charges nothing).

Discord wants an answer within 3 seconds, and the member sees nothing happen until the first one. The checks and
the reservation (`admit`) normally take milliseconds, so on an idle bot the answer is the queued message itself, or
a plain ephemeral refusal. When the interaction cannot be answered at once it is deferred first ("thinking…") and the
answer follows (a refusal then replaces the thinking message with an ephemeral one): at once when other interactions
are being admitted, else after `DEFER_AFTER` seconds of checks. In a burst, `Admission` lets only `ADMISSION_SLOTS`
run together (a burst can not take every database connection) and lets the deferrals go out first
(bench/bot_burst.py measures it).

When Discord refuses the answer (`answer_refused`): if the interaction was never acknowledged (10062 Unknown
interaction: it expired, or Discord kept failing), the member saw "the application did not respond", so the job is
failed, refunded and withdrawn from the queue, and a note in the channel tells its owner that nothing was charged. If
it was acknowledged but its token is refused (50027 Invalid Webhook Token and the like), the queued message is posted
in the channel with the bot's token instead and the job goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

import discord
from discord.http import Route
from discord.webhook.async_ import async_context

from bot.errors import BlockedPrompt, IllegalTransition, InvalidRequest
from bot.exts.common import BlockedNegativePrompt, QueueFull, deps, guild_id_of, role_ids_of
from bot.exts.imagine.models import target_model
from bot.services.preferences import PreferenceService
from bot.ui.buttons import progress_view
from bot.ui.embeds import failed_embed, queued_embed
from generation.protocol.cards import ModelCard

log = logging.getLogger("bot.jobs")

T = TypeVar("T")

#: Seconds to wait for the checks of an interaction that arrived on an idle bot before deferring (Discord allows 3).
#: They take tens of milliseconds, so an idle bot answers directly (one message, a refusal plainly ephemeral); the
#: wait only bounds a slow database (a locked writer, a loaded machine). Busy bots defer at once instead.
DEFER_AFTER = 0.5
#: How many admissions (the database work of starting a job) run at once; well below the database pool (5 + 10).
ADMISSION_SLOTS = 4
#: Longest an admission (one slot, all its waits together) waits for the deferrals in progress to go out first, and
#: the pause in deferrals it waits for. A burst of 2,000 /imagine is deferred in under 2 s on a 2-core machine
#: (docs/benchmarks.md, "Bot scale"): admissions that began sooner took loop time from the last deferrals.
ACKS_FIRST_MAX = 2.0
ACKS_QUIET = 0.05
#: The loop time until which the admission in this slot may still wait for deferrals (`Admission.slot`).
_ACKS_UNTIL: contextvars.ContextVar[float | None] = contextvars.ContextVar("acks_until", default=None)
#: Longest a new job waits for a worker that is still loading its first model (the local worker restarts with the
#: bot) before it is refused for want of a model; the interaction shows "thinking…" meanwhile.
LOADING_WAIT = 60.0
PUBLIC_DEFER = "public_defer"
NO_PINGS = discord.AllowedMentions.none()
#: Discord's JSON error code for "Interaction has already been acknowledged".
ALREADY_ACKNOWLEDGED = 40060


class Admission:
    """The bot's gate for starting jobs.

    - At most `slots` admissions (`slot()`) do their database work together, first come first served, so a burst
      of interactions queues here instead of taking every connection of the database pool.
    - `busy`: another interaction is being admitted (`entering()`, from its arrival to its job's creation or its
      refusal) or every slot is taken, so a new interaction can not be answered at once: defer it.
    - Acknowledgements first: an admission whose turn has come still waits while deferrals are going out
      (`deferring()`) and until none went out for `ACKS_QUIET` seconds, so in a burst every member sees "thinking…"
      before the bot gets on with the jobs. Its waits in one slot, at its turn and between its steps, come to at most
      `ACKS_FIRST_MAX` seconds together, so admissions keep moving under a stream of interactions that never pauses.
    """

    def __init__(self, slots: int = ADMISSION_SLOTS):
        self._slots = asyncio.Semaphore(slots)
        self._in_flight = 0
        self._deferring = 0
        self._last_deferral = float("-inf")

    @property
    def busy(self) -> bool:
        return self._in_flight > 0 or self._slots.locked()

    @contextlib.contextmanager
    def entering(self) -> Iterator[bool]:
        """Count an interaction as being admitted; yields whether the gate was busy when it came."""
        busy = self.busy
        self._in_flight += 1
        try:
            yield busy
        finally:
            self._in_flight -= 1

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        async with self._slots:
            until = _ACKS_UNTIL.set(asyncio.get_running_loop().time() + ACKS_FIRST_MAX)
            try:
                await self.acknowledgements_first()
                yield
            finally:
                _ACKS_UNTIL.reset(until)

    async def acknowledgements_first(self) -> None:
        """Return once no deferral is going out and none went out for ACKS_QUIET seconds, or when the slot's
        ACKS_FIRST_MAX seconds are spent (outside a slot: ACKS_FIRST_MAX from now); at once on a quiet bot. Slots
        wait here before their turn; an admission also between its steps, so one that began just before a burst
        does not slow down the burst's deferrals."""
        loop = asyncio.get_running_loop()
        deadline = _ACKS_UNTIL.get()
        if deadline is None:
            deadline = loop.time() + ACKS_FIRST_MAX
        while (now := loop.time()) < deadline:
            quiet = now - self._last_deferral
            if not self._deferring and quiet >= ACKS_QUIET:
                return
            await asyncio.sleep(min(deadline - now, ACKS_QUIET if self._deferring else ACKS_QUIET - quiet))

    @contextlib.asynccontextmanager
    async def deferring(self) -> AsyncIterator[None]:
        self._deferring += 1
        try:
            yield
        finally:
            self._deferring -= 1
            self._last_deferral = asyncio.get_running_loop().time()


#: `interaction.extras` key: the interaction is counted as being admitted already (`admitting`).
ADMITTING = "admitting"


@contextlib.asynccontextmanager
async def admitting(interaction: discord.Interaction) -> AsyncIterator[None]:
    """Count `interaction` as being admitted (`Admission.entering`) for the block, acknowledging it at once when
    other interactions are ahead. Nested blocks of the same interaction (/imagine reading its defaults, then
    `start_job`) count it once: the outermost decided about its deferral, and an inner block must not see the
    interaction itself as the one ahead of it."""
    if interaction.extras.get(ADMITTING):
        yield
        return
    gate = admission(interaction.client)
    with gate.entering() as busy:
        interaction.extras[ADMITTING] = True
        try:
            if busy:  # other interactions are ahead: acknowledge at once
                async with gate.deferring():
                    await defer(interaction)
            yield
        finally:
            interaction.extras.pop(ADMITTING, None)


def admission(client: Any) -> Admission:
    """The client's admission gate (made on first use, in the client's event loop)."""
    gate = getattr(client, "imagine_admission", None)
    if gate is None:
        gate = Admission()
        client.imagine_admission = gate
    return gate


async def defer(interaction: discord.Interaction, *, ephemeral: bool = False) -> None:
    """Acknowledge with "thinking…" unless answered already; a public deferral is marked (a refusal then replaces
    it with an ephemeral message). A refused deferral is only logged: the answer is handled when it comes."""
    if interaction.response.is_done():
        return
    try:
        await send_deferral(interaction, ephemeral=ephemeral)
    except discord.HTTPException as e:
        log.warning("interaction %s: Discord refused the deferral (%s %s)", interaction.id, e.status, e.code)
    else:
        if not ephemeral:
            interaction.extras[PUBLIC_DEFER] = True


#: The route of an interaction's first answer (discord.py's own, without `?with_response`: see `send_deferral`).
_CALLBACK = "/interactions/{webhook_id}/{webhook_token}/callback"


async def send_deferral(interaction: discord.Interaction, *, ephemeral: bool = False) -> None:
    """`InteractionResponse.defer(thinking=True)`, less what nothing here reads: discord.py asks Discord for the
    "thinking…" message back (`?with_response`) and builds a Message of it, about a fifth of a deferral's time on the
    bot's loop in a burst of /imagine (docs/benchmarks.md, "Bot scale"). The request goes through discord.py's
    webhook adapter as discord.py's does (its retries, its errors), and the response is marked deferred the same
    way, so everything after it (`edit_original_response`, follow-ups) works as after `defer()`."""
    response = interaction.response
    if response._response_type:  # discord.py's own check, as in defer()
        raise discord.InteractionResponded(interaction)
    # A command, a button or a modal alike: "thinking…", as defer(thinking=True) does.
    kind = discord.InteractionResponseType.deferred_channel_message
    payload: dict[str, Any] = {"type": kind.value}
    if ephemeral:
        payload["data"] = {"flags": 64}
    http = interaction._state.http
    route = Route("POST", _CALLBACK, webhook_id=interaction.id, webhook_token=interaction.token)
    await async_context.get().request(route, session=interaction._session, payload=payload,
                                      proxy=http.proxy, proxy_auth=http.proxy_auth)
    response._response_type = kind


async def answer_in_time(interaction: discord.Interaction, work: Awaitable[T], *, ephemeral: bool = False) -> T:
    """Run `work`; if it is not done within DEFER_AFTER seconds, defer the interaction meanwhile."""
    if interaction.response.is_done():  # acknowledged already (in a burst, at once): no deadline left to keep
        return await work
    task = asyncio.ensure_future(work)
    await asyncio.wait({task}, timeout=DEFER_AFTER)
    if not task.done():
        await defer(interaction, ephemeral=ephemeral)
    return await task


async def check_member_may_generate(interaction: discord.Interaction, prompt: str, negative: str | None = None) -> None:
    """Art channel, ban and blocked terms (in the prompt and the negative prompt, matched the same way); raises the
    domain error that says what is wrong."""
    d = deps(interaction)
    guild_id = guild_id_of(interaction)
    channel_id = interaction.channel_id
    # A thread counts as its parent channel.
    channel = interaction.channel
    if isinstance(channel, discord.Thread) and channel.parent_id:
        channel_id = channel.parent_id
    await d.moderation.check_channel(guild_id, channel_id)
    await d.moderation.check_not_banned(guild_id, interaction.user.id)
    term = await d.moderation.check_prompt(guild_id, prompt)
    if term:
        raise BlockedPrompt(term)
    if negative:
        term = await d.moderation.check_prompt(guild_id, negative)
        if term:
            raise BlockedNegativePrompt(term)


async def check_queue_room(interaction: discord.Interaction) -> None:
    """Refuse a new job when the guild already has MAX_QUEUED_PER_GUILD jobs waiting or running (operator cap)."""
    d = deps(interaction)
    limit = d.settings.max_queued_per_guild
    if await d.jobs.active_in_guild(guild_id_of(interaction)) >= limit:  # one indexed count, no job loaded
        raise QueueFull(limit)


def check_options_for(card: ModelCard, params: dict[str, Any]) -> None:
    """Refuse options the target model has no use for (its card says so), naming the model.

    A negative prompt on a model without one (`negative_prompt: false` on its card: distilled and few-step models) is
    refused rather than dropped: the member asked to keep something out of the picture, and a grid drawn without
    that would cost them images they did not ask for; the refusal costs nothing and says how to fix it."""
    if params.get("negative_prompt") and not card.negative_prompt:
        raise InvalidRequest(
            f"The model `{card.name}` takes no negative prompt; leave `negative` empty or choose another model.",
            "negative_prompt",
        )


class SourceUpload:
    """A member's image that a new job starts from (`/imagine image:`, "Imagine from this image"): its header was
    checked already (`bot.services.images.source_header`); `start_job` stores it (`attach`) once the checks passed
    and the target model is known, sized for that model, and removes it again (`discard`) when the job is refused."""

    def __init__(self, data: bytes, width: int, height: int):
        self.data = data
        self.width = width
        self.height = height
        self.upload: Any = None

    async def attach(self, interaction: discord.Interaction, card: ModelCard, params: dict[str, Any]) -> dict[str, Any]:
        """Store the image at the job's size (`params` width/height) as an upload job; the job's source fields."""
        from bot.services.images import prepare_source
        from bot.services.sources import store_upload

        d = deps(interaction)
        size = (params["width"], params["height"])
        png = await asyncio.to_thread(prepare_source, self.data, size)
        self.upload = await store_upload(d.sessions, d.images, guild_id=guild_id_of(interaction),
                                         channel_id=interaction.channel_id or 0, user_id=interaction.user.id,
                                         png=png, width=size[0], height=size[1], model=card.name, clock=d.jobs.clock)
        return {"source_job_id": self.upload.job_id, "source_image_index": 0}

    async def discard(self, interaction: discord.Interaction) -> None:
        from bot.services.sources import discard_upload

        if self.upload is None:
            return
        d = deps(interaction)
        try:
            await discard_upload(d.sessions, d.images, self.upload)
        except Exception:
            log.warning("upload job %s could not be removed after its job was refused", self.upload.job_id,
                        exc_info=True)
        self.upload = None


async def start_job(interaction: discord.Interaction, *, build: Callable[[ModelCard], dict[str, Any]] | None = None,
                    source: SourceUpload | None = None, in_channel: bool = False, skip_cooldown: bool = False,
                    stealth: bool | None = None, **params: Any) -> Any:
    """Check, reserve and queue a job for the member of `interaction`; answer with its queued message.

    `in_channel`: one of several jobs of one command (permutations, bot.exts.imagine.batch): its queued message is
    posted in the channel with the bot's token instead of answering the interaction; `skip_cooldown` for all but
    the first of them. The job is stealth when its member is in stealth mode (`/settings`, bot.services.preferences):
    `stealth` when the caller read the member's settings already (/imagine), else read here (the buttons).

    `params` are the job's parameters; `params["model"]` is the model asked for (a name; "" or left out: the automatic
    choice), and the job stores the concrete model it targets. `build(card)`, when given, adds the parameters that
    come from the target model's card (/imagine: the options the member left out, from the card's defaults); the
    buttons give none (they repeat a job as it was). Either way the job is checked against the card before anything
    is charged."""
    d = deps(interaction)
    guild_id = guild_id_of(interaction)
    requested = params.pop("model", None) or None

    gate = admission(interaction.client)

    async def admit():
        # Outside the slot: right after a restart this waits for the workers' announcements (see LOADING_WAIT).
        served = await d.dispatcher.served_models(loading_wait=LOADING_WAIT)
        async with gate.slot():
            await check_member_may_generate(interaction, params.get("prompt", ""), params.get("negative_prompt"))
            await check_queue_room(interaction)
            model = await target_model(interaction, requested, served)
            job_params = {**params, **(build(model.card) if build is not None else {}), "model": model.name}
            check_options_for(model.card, job_params)
            if source is not None:
                if job_params.get("mode") != "describe" and not model.card.img2img:
                    raise InvalidRequest(f"The model `{model.card.name}` draws from text only; it cannot start from "
                                         "an image. Choose another model.", "image")
                job_params.update(await source.attach(interaction, model.card, job_params))
            await gate.acknowledgements_first()
            cooldown = 0.0 if skip_cooldown else d.settings.imagine_cooldown_seconds
            hidden = stealth
            if hidden is None:
                hidden = await PreferenceService(d.sessions).stealth(guild_id, interaction.user.id)
            try:
                job = await d.jobs.create(
                    guild_id, interaction.channel_id, interaction.user.id, role_ids_of(interaction.user),
                    cooldown=cooldown, check=model.card.check, card=model.card, stealth=hidden, **job_params
                )
            except BaseException:
                if source is not None:
                    await source.discard(interaction)
                raise
            await gate.acknowledgements_first()
            return job, await d.moderation.is_paused(guild_id), await d.jobs.position(job.id)

    async with admitting(interaction):
        # Everything before the first answer runs under the deadline (deferred if it gets slow).
        job, paused, position = await answer_in_time(interaction, admit())
    log.info(
        "job %s created: user %s guild %s model %s mode %s %dx%d steps %s images %s",
        job.id, job.user_id, job.guild_id, job.model, job.mode, job.width, job.height, job.steps, job.num_images,
    )
    embed = queued_embed(job, None if position is None else position + 1, paused=paused)
    view = progress_view(job.id)
    through_interaction = not in_channel
    try:
        if in_channel:
            message = await post_in_channel(interaction, job, embed=embed, view=view)
        elif interaction.response.is_done():
            message = await interaction.edit_original_response(embed=embed, view=view, allowed_mentions=NO_PINGS)
            interaction.extras.pop(PUBLIC_DEFER, None)
        else:
            callback = await interaction.response.send_message(embed=embed, view=view, allowed_mentions=NO_PINGS)
            message = callback.resource if isinstance(callback.resource, discord.Message) else await interaction.original_response()
    except discord.HTTPException as e:
        if in_channel:
            raise  # the job was failed and refunded (post_in_channel)
        message = await answer_refused(interaction, job, e, embed=embed, view=view)
        if message is None:
            return job
        through_interaction = False
    async with gate.slot():
        await d.jobs.set_progress_message(job.id, message.channel.id, message.id)
    presenter = getattr(interaction.client, "presenter", None)
    if presenter is not None and through_interaction:
        presenter.remember(job.id, interaction, position=None if position is None else position + 1, paused=paused)
    try:
        await d.dispatcher.publish(job)
    except Exception:
        log.exception("job %s could not be handed to the queue", job.id)
        failed = await d.jobs.fail(job.id, "The image queue could not be reached.")
        await message.edit(embed=failed_embed(failed, "the image queue could not be reached; please try again later"), view=None, allowed_mentions=NO_PINGS)
    return job


async def post_in_channel(interaction: discord.Interaction, job: Any, *, embed: discord.Embed,
                          view: discord.ui.View) -> discord.Message:
    """Post the queued message of one job of several in the channel; when Discord refuses it the job is failed and
    refunded (it would have no message to show its result) and the refusal is raised."""
    try:
        return await interaction.channel.send(embed=embed, view=view, allowed_mentions=NO_PINGS)
    except discord.HTTPException:
        with contextlib.suppress(IllegalTransition):
            await deps(interaction).jobs.fail(job.id, "Discord refused its message; nothing was charged.")
        raise


async def answer_refused(interaction: discord.Interaction, job: Any, error: discord.HTTPException, *,
                         embed: discord.Embed, view: discord.ui.View) -> discord.Message | None:
    """Discord refused the answer that shows a new job. Returns the message that shows it instead, or None when the
    job was withdrawn (failed and refunded; its owner is told in the channel)."""
    d = deps(interaction)
    log.warning("job %s: Discord refused its queued message (%s %s: %s)", job.id, error.status, error.code, error.text)
    if error.code == ALREADY_ACKNOWLEDGED:
        # An earlier try went through (only its answer was lost) and discord.py tried again: use that message.
        with contextlib.suppress(discord.HTTPException):
            return await interaction.original_response()
    if interaction.response.is_done():
        # Acknowledged, but the interaction's token is refused: show the job with the bot's own token.
        return await interaction.channel.send(embed=embed, view=view, allowed_mentions=NO_PINGS)
    reason = ("Discord gave up on the command before the bot could answer it. Nothing was charged; "
              "please try again.")
    try:
        await d.jobs.fail(job.id, reason)
    except IllegalTransition:
        log.info("job %s: already %s; its result will be posted as usual", job.id, (await d.jobs.get(job.id)).status)
        return None
    log.info("job %s withdrawn and refunded: its interaction expired before it was answered", job.id)
    with contextlib.suppress(Exception):
        await d.dispatcher.cancel(job.id)
    presenter = getattr(interaction.client, "presenter", None)
    if presenter is not None:
        await presenter.job_failed(job.id)  # no progress message: a note to the owner in the channel
    return None
