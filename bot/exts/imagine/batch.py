"""Several jobs from one /imagine: the `{a, b}` permutations (bot.services.permutations).

Before anything is queued the member sees how many jobs the braces make and what they cost in all, in credits
(bot.services.costs: each job on the model it targets), on an ephemeral message with Confirm and Cancel that only
they can press. It lapses after PERMUTATION_CONFIRM_SECONDS (nothing queued). Confirm starts the jobs one after the
other, each through `flow.start_job` on its own: checked, charged and posted in the channel like any job. When job
k is refused (its quota, the queue cap, a blocked term…) the member is told which and why, the jobs before it stay
queued and the rest are not started. Cancel queues nothing.

The buttons live in memory (a `discord.ui.View`): after a restart an open question no longer answers, and the
member simply runs /imagine again. Nothing was charged for it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import discord

from bot.errors import InvalidRequest
from bot.exts.common import deps, guild_id_of, role_ids_of
from bot.exts.errors.handler import report_error, send_private, user_message_for
from bot.exts.imagine.flow import SourceUpload, answer_in_time, start_job
from bot.exts.imagine.models import target_model
from bot.services.costs import format_credits, job_units
from bot.ui.text import safe_text
from generation.protocol.cards import ModelCard
from generation.protocol.contract import GenerationRequest, RequestError

log = logging.getLogger("bot.jobs")

NO_PINGS = discord.AllowedMentions.none()
#: Prompts the question lists (the rest are counted).
LISTED = 8


@dataclass
class Planned:
    """One job of a command: what `start_job` is given, and the notes about defaults that were passed over (filled
    when `build` runs)."""

    given: dict[str, Any]
    build: Callable[[ModelCard], dict[str, Any]]
    model: str | None
    source: SourceUpload | None = None
    notes: list[str] = field(default_factory=list)
    #: The member's stealth mode, read with their defaults (None: `start_job` reads it).
    stealth: bool | None = None

    async def start(self, interaction: discord.Interaction, **how: Any) -> Any:
        return await start_job(interaction, build=self.build, model=self.model, source=self.source,
                               stealth=self.stealth, **how, **self.given)


async def units_of(interaction: discord.Interaction, plan: Planned) -> int:
    """What `plan` would cost now on the model it would target, in units; the refusal the job would get for a
    request its model can not run (InvalidRequest), before anything is queued."""
    model = await target_model(interaction, plan.model)
    params = {**plan.given, **plan.build(model.card), "model": model.name}
    given = {k: v for k, v in params.items() if v is not None}
    given.setdefault("seed", 0)
    try:
        request = GenerationRequest.from_dict(given, image_required=False)
        model.card.check(request)
    except RequestError as exc:
        raise InvalidRequest(str(exc), exc.field) from exc
    return job_units(request, model.card)


def notes_of(plans: list[Planned]) -> list[str]:
    return list(dict.fromkeys(n for p in plans for n in p.notes))


async def send_notes(interaction: discord.Interaction, notes: list[str]) -> None:
    """Tell the member (only them) which of their defaults were passed over, and why."""
    if not notes:
        return
    with contextlib.suppress(discord.HTTPException):
        await interaction.followup.send(safe_text("\n".join(f"⚠️ {n}" for n in notes), 1900, markdown=True),
                                        ephemeral=True, allowed_mentions=NO_PINGS)


async def ask(interaction: discord.Interaction, plans: list[Planned]) -> None:
    """Show the count and the total cost with Confirm / Cancel (ephemeral, only the member's); deferred
    (ephemerally) when working them out takes long."""
    text = await answer_in_time(interaction, question(interaction, plans), ephemeral=True)
    view = ConfirmJobs(interaction, plans, timeout=deps(interaction).settings.permutation_confirm_seconds)
    await send_private(interaction, text, view=view)  # also after a public deferral in a burst


async def question(interaction: discord.Interaction, plans: list[Planned]) -> str:
    """The question: each job's prompt and cost, the total, and the notes about defaults passed over. A batch
    larger than the member's free parallel job slots is refused here, before the question (nothing charged): its
    later jobs would be refused anyway."""
    await check_slots(interaction, len(plans))
    costs = [await units_of(interaction, p) for p in plans]
    total = sum(costs)
    lines = [f"{i}. `{safe_text(p.given.get('prompt', ''), 120, single_line=True)}`"
             + (f" · style {p.given['style']}" if p.given.get("style") else "")
             + f" · {format_credits(c)} credits"
             for i, (p, c) in enumerate(zip(plans, costs, strict=True), start=1)][:LISTED]
    if len(plans) > LISTED:
        lines.append(f"… and {len(plans) - LISTED} more")
    lines += [f"⚠️ {n}" for n in notes_of(plans)]
    text = (f"Your braces make **{len(plans)} jobs**, **{format_credits(total)} credits** in all (each job is "
            "charged and posted on its own):\n" + "\n".join(lines))
    return safe_text(text, 1900, markdown=True)


async def check_slots(interaction: discord.Interaction, count: int) -> None:
    """Refuse `count` jobs when the member can not have that many more waiting or running (`max_concurrent`)."""
    d = deps(interaction)
    guild_id = guild_id_of(interaction)
    limits = await d.quota.effective_limits(guild_id, interaction.user.id, role_ids_of(interaction.user))
    active = await d.jobs.active_count(guild_id, interaction.user.id)
    free = max(0, limits.max_concurrent - active)
    if count > free:
        raise InvalidRequest(
            f"Your braces make {count} jobs, but you can have {limits.max_concurrent} jobs waiting or running at once "
            f"and {_jobs(active)} {'is' if active == 1 else 'are'} already; use fewer options (at most {free} now) "
            "or wait for your jobs to finish. Nothing was charged.", "prompt")


async def start_all(interaction: discord.Interaction, plans: list[Planned]) -> int:
    """Start the jobs in order; at the first refusal tell the member which and stop. Returns how many started."""
    n = len(plans)
    for k, plan in enumerate(plans):
        try:
            await plan.start(interaction, in_channel=True, skip_cooldown=k > 0)
        except Exception as error:  # noqa: BLE001 - the member is told; the error handler decides the words
            reason = user_message_for(error)
            if reason is None:
                await report_error(interaction, error)
            else:
                prompt = safe_text(plan.given.get("prompt", ""), 120, single_line=True)
                with contextlib.suppress(discord.HTTPException):
                    await interaction.followup.send(
                        safe_text(f"Job {k + 1} of {n} (`{prompt}`) was refused: {reason}\n"
                                  f"{_jobs(k)} before it {'is' if k == 1 else 'are'} queued; the other "
                                  f"{_jobs(n - k - 1)} {'was' if n - k - 1 == 1 else 'were'} not started (nothing "
                                  "charged for them).", 1900, markdown=True),
                        ephemeral=True, allowed_mentions=NO_PINGS)
            return k
    return n


def _jobs(count: int) -> str:
    return f"{count} job" if count == 1 else f"{count} jobs"


class ConfirmJobs(discord.ui.View):
    """Confirm / Cancel of a permutation /imagine: only its member may press them; they lapse after `timeout`."""

    def __init__(self, origin: discord.Interaction, plans: list[Planned], *, timeout: float):
        super().__init__(timeout=timeout)
        self.origin = origin
        self.plans = plans
        self.done = False

    async def interaction_check(self, interaction: discord.Interaction) -> bool:  # type: ignore[override]
        if interaction.user.id == self.origin.user.id:
            return True
        await interaction.response.send_message("These buttons are not yours.", ephemeral=True)
        return False

    @discord.ui.button(label="Confirm", style=discord.ButtonStyle.success)
    async def confirm(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        if self.done:
            return
        self.done = True
        self.stop()
        n = len(self.plans)
        await interaction.response.edit_message(content=f"Queuing {_jobs(n)}…", view=None)
        started = await start_all(interaction, self.plans)
        log.info("permutations of user %s: %d of %d jobs started", interaction.user.id, started, n)
        with contextlib.suppress(discord.HTTPException):
            await interaction.edit_original_response(content=f"Queued {started} of {_jobs(n)}.")
        await send_notes(interaction, notes_of(self.plans))

    @discord.ui.button(label="Cancel", style=discord.ButtonStyle.secondary)
    async def cancel(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        if self.done:
            return
        self.done = True
        self.stop()
        await interaction.response.edit_message(content="Cancelled: nothing was queued or charged.", view=None)

    async def on_timeout(self) -> None:
        if self.done:
            return
        self.done = True
        with contextlib.suppress(discord.HTTPException):
            await self.origin.edit_original_response(
                content="This question lapsed: nothing was queued or charged. Run /imagine again to start the jobs.",
                view=None)
