"""What each job button does. Everything is read from the database by job id, so a button works on a message of
any age and after any restart; nothing here lives in memory between clicks.

- U<n>: upscale image n (a new one-image job of mode `upscale`).
- V<n> / V<n> strong: four variations of image n (img2img with STRENGTH_SUBTLE / STRENGTH_STRONG).
- 🔄: the same job again with a new seed.   ✏️: a modal to edit the prompt, then a new job.
- ℹ️: the parameters (ephemeral).   🗑️: delete the result message and its image files (owner or moderator).
- ✖: cancel a queued or running job (owner or moderator); nothing is charged.
- On a single-image result (an upscale, a Vary (Region), a Zoom Out / Pan) whose model can redraw part of an image
  (its card's `inpainting`): 🖌️ Vary (Region) answers with an ephemeral menu of regions (`REGION_CHOICES`), the
  choice opens a modal with the prompt to edit, and its submission starts an `inpaint` job of that region; Zoom Out
  2x / 1.5x, Pan ⬅ ➡ ⬆ ⬇ and Make square (non-square images only) start an `outpaint` job. Each is a one-image job
  of the image, its width and height the image's size fitted within the model's sides (the engine resizes the
  source to them), through `start_job` like every other button (visibility, cooldown, quota, fairness).
- 🎨 1–4 under /describe's suggestions: /imagine with that suggestion (charged like /imagine).

Who sees what follows one rule, `bot.exts.common.can_see_job`: ℹ️ and the ✏️ modal show the prompt only to those
who may see the job, and U/V/🔄 (which would show the prompt again in the new job) are refused to the others.
A job deleted with 🗑️ keeps its row (quotas, audit log); its buttons answer that it was deleted.
A job whose image files were removed after IMAGE_RETENTION_DAYS (bot.services.retention) keeps its row too: 🔄 and
✏️ draw it again, U/V answer that its images were removed (`ImagesExpired`), ℹ️ says so under its parameters.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import re
from typing import Any

import discord
from discord.ext import commands

from bot.errors import InvalidRequest, JobNotFound, NotJobOwner, SourceImageNotFound
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
from bot.exts.imagine.options import clean_prompt, fit_side
from bot.services.images import read_header, removed
from bot.services.retention import ImagesExpired, expired_text
from bot.ui import buttons as b
from bot.ui.embeds import cancelled_embed, parameters_embed
from generation.protocol.contract import (
    DEFAULT_FEATHER,
    MAX_UPSCALE_SIDE,
    STRENGTH_INPAINT,
    STRENGTH_OUTPAINT,
    STRENGTH_STRONG,
    STRENGTH_SUBTLE,
    STRENGTH_UPSCALE,
    UPSCALE_FACTORS,
)
from generation.protocol.regions import OUTPAINT_LABELS, OUTPAINTS, REGION_CHOICES, RegionError, canonical_region

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
        "style": job.style,
        "source_job_id": job.source_job_id,
        "source_image_index": job.source_image_index,
        # The editing modes' own fields (defaults for every other mode), so 🔄 of an edit repeats that edit.
        "region": job.region,
        "outpaint": job.outpaint,
        "feather": job.feather,
        "upscale_factor": job.upscale_factor,
        # The hires fix (txt2img, variation, img2img): 🔄 and V draw the same way; an upscale or edit sets it off.
        "hires": job.hires,
    }


class JobActions(commands.Cog):
    def __init__(self, bot: commands.Bot):
        self.bot = bot

    async def cog_load(self) -> None:
        self.bot.job_actions = self  # type: ignore[attr-defined]
        self.bot.add_dynamic_items(b.RegionSelect)

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
                b.VARY_REGION: self.vary_region,
                b.OUTPAINT: self.outpaint,
                b.PROMPT: self.suggestion,
                b.UPSCALE_MORE: self.upscale_more,
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
        params = same_params(job) | {"mode": "upscale", "num_images": 1, "source_job_id": job.id, "source_image_index": index, "seed": job.images[index].seed, "timeline": False, "hires": 0.0}
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

    # --- editing a single-image result: Vary (Region), Zoom Out, Pan, Make square ------------------------------------
    async def _edit_source(self, interaction: discord.Interaction, job_id: int) -> tuple[Any, dict[str, Any]]:
        """The single-image job an edit starts from, and the new job's parameters: one image of the same prompt and
        model, its source that image, its width x height the image's size fitted within the model's sides."""
        job = await self._source(interaction, job_id, 0)
        if len(job.images) != 1:
            raise SourceImageNotFound(job_id, 0)
        d = deps(interaction)
        card = d.dispatcher.card(job.model)
        if card is not None and not card.inpainting:
            raise InvalidRequest(f"The model `{card.name}` cannot redraw part of an image (no Vary (Region), Zoom Out "
                                 "or Pan).", "mode")
        width, height = await asyncio.to_thread(_image_size, d.images, job.images[0])
        if card is not None:
            scale = min(1.0, card.max_side / max(width, height))
            width, height = fit_side(width * scale, card), fit_side(height * scale, card)
        params = same_params(job) | {"num_images": 1, "source_job_id": job.id, "source_image_index": 0,
                                     "seed": None, "timeline": False, "width": width, "height": height,
                                     "feather": DEFAULT_FEATHER, "region": "", "outpaint": "", "upscale_factor": 2,
                                     "hires": 0.0}
        return job, params

    async def vary_region(self, interaction: discord.Interaction, job_id: int, action: str, index: int | None) -> None:
        """🖌️: the region menu, to the clicker only (nothing is charged until the prompt modal is submitted)."""
        await self._edit_source(interaction, job_id)
        await interaction.response.send_message("Which part should be redrawn?", view=b.region_view(job_id),
                                                ephemeral=True)

    async def region_chosen(self, interaction: discord.Interaction, job_id: int, region: str) -> None:
        """A region was picked in the menu: the prompt modal (the job's prompt for those who may see it)."""
        try:
            region = canonical_region(region)
            job = await self._job(interaction, job_id)
            await deps(interaction).moderation.check_not_banned(job.guild_id, interaction.user.id)
            label = dict(REGION_CHOICES).get(region, region)
            prompt = job.prompt if can_see_job(interaction, job) else ""
            await interaction.response.send_modal(b.RegionModal(job.id, region, label, prompt))
        except RegionError as error:
            await report_error(interaction, InvalidRequest(str(error), "region"), job_id=job_id)
        except Exception as error:  # noqa: BLE001
            await report_error(interaction, error, job_id=job_id)

    async def outpaint(self, interaction: discord.Interaction, job_id: int, action: str, index: int | None) -> None:
        if index is None or not 0 <= index < len(OUTPAINTS):
            raise InvalidRequest(f"No outpainting number {index}; there are {len(OUTPAINTS)}.", "outpaint")
        kind = OUTPAINTS[index]
        job, params = await self._edit_source(interaction, job_id)
        if kind == "square" and params["width"] == params["height"]:
            raise InvalidRequest("The image is square already; Make square grows a non-square one.", "outpaint")
        log.info("job %s: %s", job.id, OUTPAINT_LABELS[kind])
        await start_job(interaction, **(params | {"mode": "outpaint", "outpaint": kind,
                                                  "strength": STRENGTH_OUTPAINT}))

    async def upscale_more(self, interaction: discord.Interaction, job_id: int, action: str, index: int | None
                           ) -> None:
        """Upscale 2x / 4x of a single-image result: with the refine pass while the result stays within the model's
        `upscale_limit`, without it (strength 0) up to `MAX_UPSCALE_SIDE`; refused beyond."""
        if index not in UPSCALE_FACTORS:
            raise InvalidRequest(f"An upscale makes an image {' or '.join(map(str, UPSCALE_FACTORS))} times larger.",
                                 "upscale_factor")
        job = await self._source(interaction, job_id, 0)
        if len(job.images) != 1:
            raise SourceImageNotFound(job_id, 0)
        d = deps(interaction)
        width, height = await asyncio.to_thread(_image_size, d.images, job.images[0])
        card = d.dispatcher.card(job.model)
        side = index * max(width, height)
        if side > MAX_UPSCALE_SIDE:
            raise InvalidRequest(f"Upscaled {index}x this image would be {side} px a side; at most {MAX_UPSCALE_SIDE} "
                                 "are made.", "upscale_factor")
        refine = card is not None and side <= card.upscale_limit()
        params = same_params(job) | {"mode": "upscale", "upscale_factor": index, "num_images": 1,
                                     "source_job_id": job.id, "source_image_index": 0, "seed": job.images[0].seed,
                                     "timeline": False, "width": width, "height": height, "region": "",
                                     "outpaint": "", "strength": min(STRENGTH_UPSCALE, job.strength) if refine else 0.0,
                                     "hires": 0.0}
        await start_job(interaction, **params)

    async def suggestion(self, interaction: discord.Interaction, job_id: int, action: str, index: int | None) -> None:
        """A /describe result's button n: /imagine with suggestion n (the member's automatic model and its
        defaults, four images, charged like /imagine)."""
        from bot.dispatch.recorder import read_suggestions
        from bot.exts.describe.flow import defaults_of

        job = await self._visible_job(interaction, job_id)
        texts = await asyncio.to_thread(read_suggestions, deps(interaction).images, job.id)
        if job.mode != "describe" or index is None or not 0 <= index < len(texts):
            raise InvalidRequest(f"Job #{job.id} has no suggestion {(index or 0) + 1}.", "prompt")
        prompt = clean_prompt(texts[index])
        await start_job(interaction, build=defaults_of, prompt=prompt, negative_prompt="", num_images=4,
                        timeline=False)

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
    async def on_modal_submit(self, interaction: discord.Interaction) -> None:
        """Remix modal submissions, matched by custom_id so they work even across a restart."""
        custom_id = str((interaction.data or {}).get("custom_id", ""))
        region = b.REGION_MODAL.fullmatch(custom_id)
        if region is not None:
            await self._region_submitted(interaction, int(region["job_id"]), region["region"])
            return
        match = _MODAL_ID.fullmatch(custom_id)
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

    async def _region_submitted(self, interaction: discord.Interaction, job_id: int, region: str) -> None:
        """The Vary (Region) modal: an inpaint job of `region` with the (edited) prompt."""
        try:
            values = _modal_values(interaction.data or {})
            region = canonical_region(region)
            prompt = clean_prompt(values.get("prompt"))
            _, params = await self._edit_source(interaction, job_id)
            await start_job(interaction, **(params | {"mode": "inpaint", "region": region, "prompt": prompt,
                                                      "strength": STRENGTH_INPAINT}))
        except RegionError as error:
            await report_error(interaction, InvalidRequest(str(error), "region"), job_id=job_id)
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
        files = []
        if job.source_job_id is not None and can_see_job(interaction, job):
            source = await self._source_file(interaction, job)
            if source is not None:  # the image the job started from, shown small (a member's upload included)
                files.append(discord.File(io.BytesIO(source), filename="source.png"))
                embed.set_thumbnail(url="attachment://source.png")
        await interaction.response.send_message(embed=embed, files=files, ephemeral=True)

    @staticmethod
    async def _source_file(interaction: discord.Interaction, job: Any) -> bytes | None:
        """The bytes of the image a job started from (checked against its sha256); None when it is gone."""
        d = deps(interaction)
        try:
            image = await d.jobs.get_image(job.source_job_id, job.source_image_index or 0)
            return await asyncio.to_thread(d.images.read, image.path, image.sha256)
        except Exception:  # noqa: BLE001 - removed, damaged or deleted: ℹ️ shows the parameters alone
            return None

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


def _image_size(store: Any, image: Any) -> tuple[int, int]:
    """The size a stored image's header states (nothing decoded)."""
    header = read_header(store.read(image.path, image.sha256))
    return header.width, header.height


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
