"""/quota, /history, /show and /help: read-only commands about the member's own usage and jobs."""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands
from PIL import Image as PILImage

from bot.errors import JobNotFound
from bot.exts.common import JobDeleted, JobNotVisible, can_see_job, deps, guild_id_of, is_moderator, role_ids_of
from bot.exts.imagine import models
from bot.services.costs import default_job_units
from bot.services.images import removed
from bot.services.model_policy import ModelPolicy
from bot.services.retention import expired_text
from bot.ui.embeds import BLUE, history_embed, parameters_embed, quota_embed
from bot.ui.images import fit_to_limit, job_grid
from bot.ui.text import EMBED_FIELD_VALUE, fit_embed, safe_text

if TYPE_CHECKING:
    from bot.dispatch.registry import ServedModel
    from generation.protocol.cards import ModelCard

log = logging.getLogger(__name__)

#: What /show says instead of the picture when an image file fails its sha256 check (or is gone).
SHOW_DAMAGED = ("The images of this job are not shown: a stored image file is missing or does not match its record "
                "(it was changed or damaged on disk). A moderator can look into it.")

#: What /show (to a moderator) says of a job deleted with 🗑️.
JOB_DELETED = "This job was deleted with 🗑️: its message and image files are gone."


def without_text_chunks(png: bytes) -> bytes:
    """`png` re-encoded without its text metadata (the A1111 `parameters` chunk holds the prompt): Pillow writes
    text chunks only when it is handed them, so decoding and saving again drops them."""
    with PILImage.open(io.BytesIO(png)) as im:
        im.load()
        out = io.BytesIO()
        im.save(out, format="PNG")
    return out.getvalue()


#: Architectures whose prompts the worker reads with the A1111 syntax (the SD path, `generation.engine.prompts`).
WEIGHTED_PROMPT_ARCHITECTURES = frozenset({"shapes", "sd1", "sd2", "sdxl"})


def prompt_syntax(card: ModelCard) -> str:
    """One sentence on the prompt syntax the model's architecture reads."""
    if card.architecture in WEIGHTED_PROMPT_ARCHITECTURES:
        return ("Prompt syntax: `(word:1.3)` or `(word)` stresses words, `[word]` softens them, `\\(` `\\)` are "
                "brackets, `BREAK` starts a new chunk; long prompts are read whole.")
    return "Weights like `(word:1.3)` and `BREAK` are not applied on this model: it reads the words without them."


#: Most LoRA or embedding names /help lists for a model.
HELP_NAMES = 15


def describe_model(card: ModelCard) -> str:
    """A few lines on one model from its card: what it is, what it knows, prompts to try, the prompt syntax it
    reads, its sizes and steps."""
    lines: list[str] = []
    lines.append(f"**{card.name}**" + (f" — {card.description}" if card.description else ""))
    for kind, words in card.knows.items():
        if words:
            lines.append(f"**{kind}**: {', '.join(words)}")
    if card.example_prompts:
        lines.append("Try: " + " · ".join(f"`{e}`" for e in card.example_prompts[:4]))
    lines.append(prompt_syntax(card))
    lines.append(f"Native size: {card.default_width}×{card.default_height} px · sizes {card.min_side}–{card.max_side} px "
                 f"(multiples of {card.multiple}) · {card.default_steps} steps (at most {card.max_steps})")
    if not card.negative_prompt:
        lines.append("It takes no negative prompt.")
    if card.loras:
        lines.append("**LoRAs** (`<lora:name:0.8>` in the prompt, or `lora`): "
                     + _names([lora.name for lora in card.loras]))
    if card.embeddings:
        lines.append("**Embeddings** (write the name in the prompt or negative prompt): " + _names(card.embeddings))
    return "\n".join(lines)


def _names(names: Sequence[str], limit: int = HELP_NAMES) -> str:
    """Names in backticks, at most `limit` of them, then how many more there are."""
    shown = ", ".join(f"`{name}`" for name in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def served_line(model: ServedModel, policy: ModelPolicy) -> str:
    """One served model in /help's list: name, short description, native size, state."""
    about = ", ".join(p for p in (models.short_description(model.card), models.native_size(model.card)) if p)
    return " · ".join([f"`{model.name}` — {about}", *models.state_marks(model, policy)])


#: /help's field about starting from an image and editing a result (a field value holds at most 1024 characters).
EDITING_HELP = (
    "`/imagine image:` start from your picture, `strength:` how far to move from it (0 keeps it, 1 ignores it) · "
    "`hires:` 1.5×/2×: draw smaller, upscale, refine (for sizes above the model's best) · `/describe image:` four "
    "prompts for a picture · on a message: Apps → **Describe this image** / **Imagine from this image**\n"
    "Under one image: **Vary (subtle/strong)** · 🖌️ **Vary (Region)** redraws a part · **Zoom Out** 1.5x/2x · "
    "**Pan** left/right/up/down · **Make square** · **Upscale** 2x/4x"
)


class Account(commands.Cog):
    def __init__(self, bot: commands.Bot):
        self.bot = bot

    @app_commands.command(name="quota", description="Your fast and relax credits left today, when they reset, and "
                                                     "what a job costs on each model.")
    @app_commands.guild_only()
    async def quota(self, interaction: discord.Interaction) -> None:
        d = deps(interaction)
        status = await d.quota.status(guild_id_of(interaction), interaction.user.id, role_ids_of(interaction.user))
        # What a default job (DEFAULT_JOB_IMAGES images at the card's defaults) costs on each model the member may
        # choose, from the workers' announcements in memory (it waits only in the first seconds after a start while
        # no worker has announced itself, as /help does; none served: the field is left out).
        served = await d.dispatcher.served_models()
        policy = await d.model_policy.policy(guild_id_of(interaction))
        costs = [(m.name, default_job_units(m.card)) for m in models.offered(served, policy)]
        await interaction.response.send_message(embed=quota_embed(status, costs), ephemeral=True)

    @app_commands.command(name="history", description="Your most recent jobs in this server.")
    @app_commands.describe(count="How many jobs to list (1-20)")
    @app_commands.guild_only()
    async def history(self, interaction: discord.Interaction, count: app_commands.Range[int, 1, 20] = 10) -> None:
        jobs = await deps(interaction).jobs.history(guild_id_of(interaction), interaction.user.id, count)
        # A job deleted with 🗑️ is shown to nobody but moderators (bot.exts.common.can_see_job), its owner included.
        jobs = [j for j in jobs if j.deleted_at is None]
        await interaction.response.send_message(embed=history_embed(jobs), ephemeral=True)

    @app_commands.command(name="show", description="The parameters and images of one job.")
    @app_commands.describe(job="The job number (shown in the footer of every result)")
    @app_commands.guild_only()
    async def show(self, interaction: discord.Interaction, job: app_commands.Range[int, 1]) -> None:
        d = deps(interaction)
        # Reading and composing the images may take a moment: answer "thinking…" first (privately).
        await interaction.response.defer(ephemeral=True, thinking=True)
        found = await d.jobs.find(job)
        if found is None or found.guild_id != guild_id_of(interaction):
            raise JobNotFound(job)
        # One rule for who sees a job (bot.exts.common.can_see_job): a job posted in a channel the member can not
        # view, or deleted with 🗑️, is refused to them; a moderator sees a deleted job's parameters, without images.
        if not can_see_job(interaction, found):
            raise JobDeleted(job) if found.deleted_at is not None else JobNotVisible(job)
        # The prompt travels inside each PNG (its A1111 `parameters` chunk): only the owner and moderators get it.
        keep_metadata = found.user_id == interaction.user.id or is_moderator(interaction)
        files = []
        embed = parameters_embed(found)
        note = JOB_DELETED if found.deleted_at is not None else ""
        shown = [i for i in found.images if not i.nsfw] if found.deleted_at is None else []
        if shown and removed(found):
            # Removed after IMAGE_RETENTION_DAYS (bot.services.retention): the parameters stay, the picture is gone.
            note, shown = expired_text(found.id, d.settings.image_retention_days), []
        if shown:
            try:
                if len(shown) == 1 and not keep_metadata:
                    # A single image is sent as it was stored, so its text chunks go first.
                    only = shown[0]
                    grid = await asyncio.to_thread(lambda: without_text_chunks(d.images.read(only.path, only.sha256)))
                else:
                    # Each file read with its recorded sha256; the grid comes from its cache file after the first time.
                    grid = await asyncio.to_thread(job_grid, d.images, found.id, shown)
            except (OSError, ValueError) as e:
                log.warning("job %d: /show did not show its images: %s", found.id, e)
                note = SHOW_DAMAGED
            else:
                fitted = await asyncio.to_thread(fit_to_limit, grid, f"job{found.id}.png", interaction.filesize_limit)
                files.append(discord.File(fp=io.BytesIO(fitted.data), filename=fitted.filename))
                embed.set_image(url=f"attachment://{fitted.filename}")
        if found.posted_channel_id and found.posted_message_id and found.deleted_at is None:
            url = f"https://discord.com/channels/{found.guild_id}/{found.posted_channel_id}/{found.posted_message_id}"
            embed.add_field(name="Posted", value=f"[jump to the message]({url})", inline=False)
        if note:
            embed.description = f"{embed.description}\n\n{note}" if embed.description else note
        await interaction.followup.send(embed=embed, files=files, ephemeral=True)

    @app_commands.command(name="help", description="How to use the bot, and what the models can draw.")
    async def help(self, interaction: discord.Interaction) -> None:
        d = deps(interaction)
        moderator = is_moderator(interaction)
        embed = discord.Embed(title="Imagine — help", colour=BLUE)
        embed.description = (
            "`/imagine prompt:…` draws four images from your text; use the buttons under the result:\n"
            "**U1–U4** upscale one image · **V1–V4** a subtle variation · **V1 strong–V4 strong** a bolder one\n"
            "🔄 the same prompt with a new seed · ✏️ edit the prompt and rerun · ℹ️ parameters · 🗑️ delete\n"
            "✖ on the progress message cancels a job while it waits or runs (nothing is charged)."
        )
        embed.add_field(
            name="Options",
            value="`model` which model draws it · `negative` what to avoid · `seed` repeat a result · "
            "`steps` more is finer but slower · `guidance` how closely to follow the prompt · `aspect` or `size` · "
            "`scheduler` · `count` 1–4 images · `timeline` an animation of the denoising · `lora` a LoRA of the model · "
            "`style` a server style or yours · `{a, b}` in the prompt: one job per option (you confirm count and cost)",
            inline=False,
        )
        embed.add_field(name="From an image", value=EDITING_HELP, inline=False)
        embed.add_field(name="Your account", value="`/quota` credits left today (fast and relax) · `/settings` your defaults and stealth mode · "
                        "`/style save|list|remove` your styles · `/history` your jobs · `/show job:<id>` one job",
                        inline=False)
        served = await d.dispatcher.served_models()
        policy = await d.model_policy.policy(interaction.guild_id or 0)
        shown = models.offered(served, policy, moderator=moderator)
        target = models.automatic(served, policy)
        if not served:
            about = ("No image worker is running right now (or it is still loading its model), so no model is served "
                     "and nothing can be drawn; please try again later.")
        elif target is None:
            about = ("The server's default model is not served right now; choose one of the models below with `model`."
                     if policy.default_model else "No model is offered in this server right now; ask a moderator.")
        else:
            about = describe_model(target.card)
        embed.add_field(name="What the default model knows", value=safe_text(about, EMBED_FIELD_VALUE, markdown=True), inline=False)
        if shown:
            lines = [served_line(m, policy) for m in shown]
            embed.add_field(name="Models served now", value=safe_text("\n".join(lines), EMBED_FIELD_VALUE, markdown=True),
                            inline=False)
        if moderator:
            mod_text = ("`/mod …` quotas, bans, blocked terms, channels, NSFW policy, queue, pause/resume, stats, log · "
                        "`/mod model default|hide|show|list` which models members get · `/mod style` the server's styles "
                        "· `/mod channel-defaults` a channel's defaults · `/mod showcase` · `/mod gallery`")
            if len(models.offered(served, policy)) > 1 and not policy.default_model:
                mod_text += (f"\nNo default model is set: members who name no model get `{target.name}`, the first by "
                             "name, which changes as workers come and go. Set one with `/mod model default`."
                             if target is not None else "")
            embed.add_field(name="Moderators", value=mod_text, inline=False)
        await interaction.response.send_message(embed=fit_embed(embed), ephemeral=True)
