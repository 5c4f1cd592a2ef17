"""/quota, /history, /show and /help: read-only commands about the member's own usage and jobs."""

from __future__ import annotations

import asyncio
import io
import logging
from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.errors import JobNotFound
from bot.exts.common import deps, guild_id_of, is_moderator, model_card, role_ids_of
from bot.ui.embeds import BLUE, history_embed, parameters_embed, quota_embed
from bot.ui.images import compose_grid, fit_to_limit
from bot.ui.text import EMBED_FIELD_VALUE, fit_embed, safe_text

log = logging.getLogger(__name__)

def describe_model(card: dict[str, Any]) -> str:
    """A few lines on what the model knows, from its card's fields (whatever of them it has)."""
    lines: list[str] = []
    if card.get("description"):
        lines.append(str(card["description"]))
    knows = card.get("knows") or card.get("vocabulary") or card.get("attributes")
    if isinstance(knows, dict):
        for key, values in knows.items():
            if isinstance(values, list | tuple):
                lines.append(f"**{key}**: {', '.join(map(str, values))}")
    elif isinstance(knows, list | tuple):
        lines.append(", ".join(map(str, knows)))
    examples = card.get("examples") or card.get("example_prompts") or card.get("prompts")
    if isinstance(examples, list | tuple) and examples:
        lines.append("Try: " + " · ".join(f"`{e}`" for e in list(examples)[:4]))
    if card.get("default_width") and card.get("default_height"):
        lines.append(f"Native size: {card['default_width']}×{card['default_height']} px")
    return "\n".join(lines)


class Account(commands.Cog):
    def __init__(self, bot: commands.Bot):
        self.bot = bot

    @app_commands.command(name="quota", description="How many images you have left today, and when it resets.")
    @app_commands.guild_only()
    async def quota(self, interaction: discord.Interaction) -> None:
        status = await deps(interaction).quota.status(guild_id_of(interaction), interaction.user.id, role_ids_of(interaction.user))
        await interaction.response.send_message(embed=quota_embed(status), ephemeral=True)

    @app_commands.command(name="history", description="Your most recent jobs in this server.")
    @app_commands.describe(count="How many jobs to list (1-20)")
    @app_commands.guild_only()
    async def history(self, interaction: discord.Interaction, count: app_commands.Range[int, 1, 20] = 10) -> None:
        jobs = await deps(interaction).jobs.history(guild_id_of(interaction), interaction.user.id, count)
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
        files = []
        embed = parameters_embed(found)
        if found.images:
            pngs = await asyncio.to_thread(lambda: [d.images.read(i.path) for i in found.images if not i.nsfw])
            if pngs:
                grid = await asyncio.to_thread(compose_grid, pngs)
                fitted = await asyncio.to_thread(fit_to_limit, grid, f"job{found.id}.png", interaction.filesize_limit)
                files.append(discord.File(fp=io.BytesIO(fitted.data), filename=fitted.filename))
                embed.set_image(url=f"attachment://{fitted.filename}")
        if found.posted_channel_id and found.posted_message_id:
            url = f"https://discord.com/channels/{found.guild_id}/{found.posted_channel_id}/{found.posted_message_id}"
            embed.add_field(name="Posted", value=f"[jump to the message]({url})", inline=False)
        visible = found.user_id == interaction.user.id or is_moderator(interaction)
        if not visible:
            embed.description = "Only the job's owner and moderators can see the whole prompt."
            embed.clear_fields()
        await interaction.followup.send(embed=embed, files=files, ephemeral=True)

    @app_commands.command(name="help", description="How to use the bot, and what the model can draw.")
    async def help(self, interaction: discord.Interaction) -> None:
        settings = deps(interaction).settings
        embed = discord.Embed(title="Imagine — help", colour=BLUE)
        embed.description = (
            "`/imagine prompt:…` draws four images from your text; use the buttons under the result:\n"
            "**U1–U4** upscale one image · **V1–V4** a subtle variation · **V1 strong–V4 strong** a bolder one\n"
            "🔄 the same prompt with a new seed · ✏️ edit the prompt and rerun · ℹ️ parameters · 🗑️ delete\n"
            "✖ on the progress message cancels a job while it waits or runs (nothing is charged)."
        )
        embed.add_field(
            name="Options",
            value="`negative` what to avoid · `seed` repeat a result · `steps` more is finer but slower · "
            "`guidance` how closely to follow the prompt · `aspect` or `size` · `scheduler` · `count` 1–4 images · "
            "`timeline` an animation of the denoising",
            inline=False,
        )
        embed.add_field(name="Your account", value="`/quota` what is left today · `/history` your jobs · `/show job:<id>` one job", inline=False)
        card = model_card(settings.model_path)
        about = describe_model(card) if card else ""
        embed.add_field(
            name="What the default model knows",
            value=safe_text(about, EMBED_FIELD_VALUE, markdown=True) if about else "The model's card was not found; ask a moderator what it was trained on.",
            inline=False,
        )
        if is_moderator(interaction):
            embed.add_field(name="Moderators", value="`/mod …` quotas, bans, blocked terms, channels, NSFW policy, queue, pause/resume, stats, log", inline=False)
        await interaction.response.send_message(embed=fit_embed(embed), ephemeral=True)
