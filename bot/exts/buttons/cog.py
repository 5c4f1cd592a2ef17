"""What each job button does. Everything is read from the database by job id, so a button works on a message of
any age and after any restart; nothing here lives in memory between clicks.

- U<n>: upscale image n (a new one-image job of mode `upscale`).
- V<n> / V<n> strong: four variations of image n (img2img with STRENGTH_SUBTLE / STRENGTH_STRONG).
- 🔄: the same job again with a new seed.   ✏️: a modal to edit the prompt, then a new job.
- ℹ️: the parameters (ephemeral).   🗑️: delete the result message and its image files (owner or moderator).
- ✖: cancel a queued or running job (owner or moderator); nothing is charged.

Who sees what follows one rule, `bot.exts.common.can_see_job`: ℹ️ and the ✏️ modal show the prompt only to those
who may see the job, and U/V/🔄 (which would show the prompt again in the new job) are refused to the others.
A job deleted with 🗑️ keeps its row (quotas, audit log); its buttons answer that it was deleted.
A job whose image files were removed after IMAGE_RETENTION_DAYS (bot.services.retention) keeps its row too: 🔄 and
✏️ draw it again, U/V answer that its images were removed (`ImagesExpired`), ℹ️ says so under its parameters.
"""

from __future__ import annotations

import contextlib
import logging
import re
from typing import Any

import discord
from discord.ext import commands

from bot.errors import JobNotFound, NotJobOwner, SourceImageNotFound
from bot.exts.common import (
    GuildNotAllowed,
    JobDeleted,
    JobNotVisible,
    NotJobMessage,
    audit,
    can_see_job,
    deps,
    guild_allowed,
    guild_id_of,
    is_moderator,
)
from bot.exts.errors import report_error
from bot.exts.imagine.flow import start_job
from bot.exts.imagine.options import clean_prompt
from bot.services.images import removed
from bot.services.retention import ImagesExpired, expired_text
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
        """The job of a button (of this guild), refused once deleted."""
        if not guild_allowed(interaction.client, interaction.guild_id):
            raise GuildNotAllowed()
        job = await deps(interaction).jobs.find(job_id)
        if job is None or job.guild_id != guild_id_of(interaction):
            raise JobNotFound(job_id)
        if job.deleted_at is not None:
            raise JobDeleted(job_id)
        return job

    async def _visible_job(self, interaction: discord.Interaction, job_id: int) -> Any:
        """The job, refused to a member who may not see it (see `can_see_job`)."""
        job = await self._job(interaction, job_id)
        if not can_see_job(interaction, job):
            raise JobNotVisible(job_id)
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
        job = await self._visible_job(interaction, job_id)
        if not job.has_images or index is None or index >= len(job.images):
            raise SourceImageNotFound(job_id, index or 0)
        if removed(job):
            raise ImagesExpired(job_id, deps(interaction).settings.image_retention_days)
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
        job = await self._visible_job(interaction, job_id)
        await start_job(interaction, **same_params(job))

    async def remix(self, interaction: discord.Interaction, job_id: int, action: str, index: int | None) -> None:
        job = await self._job(interaction, job_id)
        # A banned member would only be refused on submit: say so before they type.
        await deps(interaction).moderation.check_not_banned(job.guild_id, interaction.user.id)
        # Only those who may see the job get its prompt to edit; the others start from an empty one.
        visible = can_see_job(interaction, job)
        prompt, negative = (job.prompt, job.negative_prompt) if visible else ("", "")
        await interaction.response.send_modal(b.RemixModal(job.id, prompt, negative))

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
        embed = parameters_embed(job)
        if not can_see_job(interaction, job):
            embed = hidden_parameters(embed)
        if removed(job):
            note = expired_text(job.id, deps(interaction).settings.image_retention_days)
            embed.description = f"{embed.description}\n\n{note}" if embed.description else note
        await interaction.response.send_message(embed=embed, ephemeral=True)

    async def delete(self, interaction: discord.Interaction, job_id: int, action: str, index: int | None) -> None:
        """Delete the job's result: its message (only the job's own, never another message carrying its buttons),
        its image files, and mark it deleted (its row stays for quotas and the audit log)."""
        d = deps(interaction)
        job = await self._job(interaction, job_id)
        moderator = is_moderator(interaction)
        if job.user_id != interaction.user.id and not moderator:
            raise NotJobOwner(job_id)
        message = interaction.message
        if message is None or job.posted_message_id is None or message.id != job.posted_message_id:
            raise NotJobMessage(job_id)
        await interaction.response.defer()
        # The message first: if Discord refuses, nothing changed and the member can try again.
        with contextlib.suppress(discord.NotFound):
            await message.delete()
        deleted = await d.jobs.mark_deleted(job.id)
        removed = remove_files(d.images, deleted) if deleted is not None else 0
        if job.user_id != interaction.user.id:
            await audit(interaction, "job.delete", f"job:{job.id}", {"message_id": message.id, "owner": job.user_id})
        log.info("job %s: result deleted by %s (%d image file(s) removed)", job.id, interaction.user.id, removed)

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


def hidden_parameters(embed: discord.Embed) -> discord.Embed:
    """`embed` (parameters_embed) without the prompt and the negative prompt, for a member who may not see them."""
    kept = [f for f in embed.fields if f.name not in ("Prompt", "Negative prompt")]
    embed.clear_fields()
    for f in kept:
        embed.add_field(name=f.name, value=f.value, inline=f.inline)
    embed.description = "Only the job's owner, moderators and members who can see its channel see its prompt."
    return embed


def remove_files(store: Any, job: Any) -> int:
    """Remove the image files of a deleted job and its cached grid; returns how many files went."""
    removed = 0
    for image in job.images:
        try:
            removed += bool(store.delete(image.path))
        except OSError:
            log.warning("job %s: could not remove %s", job.id, image.path, exc_info=True)
    # Grids are cached per set of images shown (flagged ones left out): remove every one of the job's.
    folder = store.absolute(store.grid_path(job.id, [])).parent
    for grid in folder.glob(f"{job.id}_grid_*"):
        try:
            grid.unlink()
            removed += 1
        except OSError:
            log.warning("job %s: could not remove %s", job.id, grid, exc_info=True)
    return removed


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
