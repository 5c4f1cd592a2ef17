"""What each job button does. Everything is read from the database by job id, so a button works on a message of
any age and after any restart; nothing here lives in memory between clicks.

- U<n>: upscale image n (a new one-image job of mode `upscale`).
- V<n> / V<n> strong: four variations of image n (img2img with STRENGTH_SUBTLE / STRENGTH_STRONG).
- 🔄: the same job again with a new seed.   ✏️: a modal to edit the prompt, then a new job.
- ℹ️: the parameters (ephemeral).   🗑️: delete the result message (owner or moderator).
- ✖: cancel a queued or running job (owner or moderator); nothing is charged.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import discord
from discord.ext import commands

from bot.errors import JobNotFound, NotJobOwner, SourceImageNotFound
from bot.exts.common import audit, deps, guild_id_of, is_moderator
from bot.exts.errors import report_error
from bot.exts.imagine.flow import start_job
from bot.exts.imagine.options import clean_prompt
from bot.ui import buttons as b
from bot.ui.embeds import cancelled_embed, parameters_embed
from generation.protocol.contract import STRENGTH_STRONG, STRENGTH_SUBTLE

log = logging.getLogger("bot.buttons")

_MODAL_ID = re.compile(r"remix:(?P<job_id>[0-9]{1,19})")


def same_params(job: Any) -> dict[str, Any]:
    """The parameters of `job` for a new job (seed left to draw anew)."""
    return {
        "prompt": job.prompt,
        "negative_prompt": job.negative_prompt,
        "steps": job.steps,
        "guidance": job.guidance,
        "width": job.width,
        "height": job.height,
        "scheduler": job.scheduler,
        "num_images": job.num_images,
        "mode": job.mode,
        "strength": job.strength,
        "timeline": job.timeline,
        "model": job.model,
        "source_job_id": job.source_job_id,
        "source_image_index": job.source_image_index,
    }


class JobActions(commands.Cog):
    def __init__(self, bot: commands.Bot):
        self.bot = bot

    async def cog_load(self) -> None:
        self.bot.job_actions = self  # type: ignore[attr-defined]

    async def cog_unload(self) -> None:
        if getattr(self.bot, "job_actions", None) is self:
            self.bot.job_actions = None  # type: ignore[attr-defined]

    async def _job(self, interaction: discord.Interaction, job_id: int) -> Any:
        job = await deps(interaction).jobs.find(job_id)
        if job is None or job.guild_id != guild_id_of(interaction):
            raise JobNotFound(job_id)
        return job

    async def handle(self, interaction: discord.Interaction, job_id: int, action: str, index: int | None) -> None:
        """Entry point of every JobButton click; errors go to the one error handler."""
        try:
            handler = {
                b.UPSCALE: self.upscale,
                b.VARY_SUBTLE: self.vary,
                b.VARY_STRONG: self.vary,
                b.REROLL: self.reroll,
                b.REMIX: self.remix,
                b.INFO: self.info,
                b.DELETE: self.delete,
                b.CANCEL: self.cancel,
            }[action]
            log.info("user %s clicked %s on job %s", interaction.user.id, action, job_id)
            await handler(interaction, job_id, action, index)
        except Exception as error:  # noqa: BLE001 - the handler decides what the member sees
            await report_error(interaction, error, job_id=job_id)

    async def _source(self, interaction: discord.Interaction, job_id: int, index: int | None) -> Any:
        job = await self._job(interaction, job_id)
        if not job.has_images or index is None or index >= len(job.images):
            raise SourceImageNotFound(job_id, index or 0)
        return job

    async def upscale(self, interaction: discord.Interaction, job_id: int, action: str, index: int | None) -> None:
        job = await self._source(interaction, job_id, index)
        params = same_params(job) | {"mode": "upscale", "num_images": 1, "source_job_id": job.id, "source_image_index": index, "seed": job.images[index].seed, "timeline": False}
        await start_job(interaction, **params)

    async def vary(self, interaction: discord.Interaction, job_id: int, action: str, index: int | None) -> None:
        job = await self._source(interaction, job_id, index)
        strength = STRENGTH_STRONG if action == b.VARY_STRONG else STRENGTH_SUBTLE
        # A variation of an upscaled image makes a full grid again, at the size the model draws best (the upscale's
        # source size; the engine resizes the upscaled image to it).
        count = 4 if job.mode == "upscale" else max(1, min(4, job.num_images))
        params = same_params(job) | {
            "mode": "variation",
            "strength": strength,
            "source_job_id": job.id,
            "source_image_index": index,
            "num_images": count,
            "timeline": False,
        }
        await start_job(interaction, **params)

    async def reroll(self, interaction: discord.Interaction, job_id: int, action: str, index: int | None) -> None:
        job = await self._job(interaction, job_id)
        await start_job(interaction, **same_params(job))

    async def remix(self, interaction: discord.Interaction, job_id: int, action: str, index: int | None) -> None:
        job = await self._job(interaction, job_id)
        # A banned member would only be refused on submit: say so before they type.
        await deps(interaction).moderation.check_not_banned(job.guild_id, interaction.user.id)
        await interaction.response.send_modal(b.RemixModal(job.id, job.prompt, job.negative_prompt))

    @commands.Cog.listener()
    async def on_interaction(self, interaction: discord.Interaction) -> None:
        """Remix modal submissions, matched by custom_id so they work even across a restart."""
        if interaction.type is not discord.InteractionType.modal_submit:
            return
        match = _MODAL_ID.fullmatch(str((interaction.data or {}).get("custom_id", "")))
        if match is None:
            return
        job_id = int(match["job_id"])
        try:
            values = _modal_values(interaction.data or {})
            job = await self._job(interaction, job_id)
            prompt = clean_prompt(values.get("prompt"))
            negative = clean_prompt(values.get("negative"), "negative", required=False)
            params = same_params(job)
            if job.mode != "txt2img":  # a remix of a variation/upscale starts fresh from text
                params |= {"mode": "txt2img", "source_job_id": None, "source_image_index": None, "num_images": 4 if job.mode == "upscale" else job.num_images}
            await start_job(interaction, **(params | {"prompt": prompt, "negative_prompt": negative}))
        except Exception as error:  # noqa: BLE001
            await report_error(interaction, error, job_id=job_id)

    async def info(self, interaction: discord.Interaction, job_id: int, action: str, index: int | None) -> None:
        job = await self._job(interaction, job_id)
        await interaction.response.send_message(embed=parameters_embed(job), ephemeral=True)

    async def delete(self, interaction: discord.Interaction, job_id: int, action: str, index: int | None) -> None:
        job = await self._job(interaction, job_id)
        moderator = is_moderator(interaction)
        if job.user_id != interaction.user.id and not moderator:
            raise NotJobOwner(job_id)
        await interaction.response.defer()
        if interaction.message is not None:
            await interaction.message.delete()
        if job.user_id != interaction.user.id:
            await audit(interaction, "job.delete", f"job:{job.id}", {"message_id": getattr(interaction.message, "id", None), "owner": job.user_id})
        log.info("job %s: result message deleted by %s", job.id, interaction.user.id)

    async def cancel(self, interaction: discord.Interaction, job_id: int, action: str, index: int | None) -> None:
        d = deps(interaction)
        job = await self._job(interaction, job_id)
        moderator = is_moderator(interaction)
        owner_id = None if moderator else interaction.user.id
        cancelled = await d.jobs.cancel(job.id, interaction.user.id, owner_id=owner_id)
        try:
            await d.dispatcher.cancel(job.id)
        except Exception:
            log.warning("job %s: could not tell the workers about the cancel", job.id, exc_info=True)
        by = interaction.user.mention if interaction.user.id != job.user_id else None
        await interaction.response.edit_message(
            embed=cancelled_embed(cancelled, by), attachments=[], view=None, allowed_mentions=discord.AllowedMentions.none()
        )
        log.info("job %s cancelled by %s", job.id, interaction.user.id)


def _modal_values(data: dict[str, Any]) -> dict[str, str]:
    """custom_id -> value of every text input in a modal submission (action rows or labels)."""
    values: dict[str, str] = {}

    def walk(components: list[dict[str, Any]]) -> None:
        for c in components:
            if "custom_id" in c and "value" in c:
                values[c["custom_id"]] = c["value"]
            if "components" in c:
                walk(c["components"])
            if "component" in c:
                walk([c["component"]])

    walk(data.get("components", []))
    return values
