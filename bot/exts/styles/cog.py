"""/style save|list|remove: a member's own styles; `apply_style` and `style_choices` for /imagine's `style` option.

A style is applied before the request is built: its template takes the member's prompt, its negative prompt is put
before the member's own, and its model, sampler and guidance are used where the member chose none. The job then goes
through the same checks as any other (blocked terms on the expanded prompt, the model's card), and records the
style's name (`GenerationRequest.style`). The server's styles are kept with `/mod style` (bot.exts.mod.cog).
"""

from __future__ import annotations

from dataclasses import dataclass

import discord
from discord import app_commands
from discord.ext import commands

from bot.exts.common import deps, guild_id_of
from bot.services.styles import (
    MAX_NEGATIVE_CHARS,
    MAX_PERSONAL_STYLES,
    MAX_TEMPLATE_CHARS,
    PERSONAL_PREFIX,
    Style,
    StyleService,
)
from bot.ui.embeds import lines_embed
from bot.ui.text import CHOICE_NAME, CHOICES, plain_text, safe_text
from generation.protocol.contract import MAX_GUIDANCE, MAX_STYLE_NAME_CHARS

#: Longest `style` option: `my:` and a name.
MAX_STYLE_OPTION_CHARS = len(PERSONAL_PREFIX) + MAX_STYLE_NAME_CHARS


def styles_of(interaction: discord.Interaction) -> StyleService:
    return StyleService(deps(interaction).sessions)


@dataclass(frozen=True)
class Applied:
    """What /imagine sends after applying a style: the options it changed, and the name the job records."""

    prompt: str
    negative: str
    model: str | None
    scheduler: str | None
    guidance: float | None
    style: str


async def apply_style(interaction: discord.Interaction, name: str, prompt: str, negative: str | None, *,
                      model: str | None, scheduler: str | None, guidance: float | None) -> Applied:
    """The options of /imagine with the style `name` applied (StyleNotFound names the style when there is none)."""
    style = await styles_of(interaction).resolve(guild_id_of(interaction), interaction.user.id, name)
    return Applied(
        prompt=style.expand(prompt),
        negative=style.negative_with(negative),
        model=model or style.model,
        scheduler=scheduler or style.sampler,
        guidance=guidance if guidance is not None else style.guidance,
        style=style.label,
    )


def describe(style: Style, limit: int = 300) -> str:
    """One line about a style, safe to echo: its template, negative prompt and defaults."""
    parts = [f"`{safe_text(style.prompt, limit, single_line=True)}`"]
    if style.negative:
        parts.append(f"negative: `{safe_text(style.negative, limit // 2, single_line=True)}`")
    if style.model:
        parts.append(f"model: {safe_text(style.model, 80, single_line=True)}")
    if style.sampler:
        parts.append(f"sampler: {style.sampler}")
    if style.guidance is not None:
        parts.append(f"guidance: {style.guidance:g}")
    return " · ".join(parts)


async def style_choices(interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
    """The styles a member may use whose name holds what was typed: the server's, then their own (as `my:NAME`)."""
    if interaction.guild_id is None:
        return []
    typed = (current or "").strip().casefold().removeprefix(PERSONAL_PREFIX)
    found = await styles_of(interaction).usable(interaction.guild_id, interaction.user.id)
    return [
        app_commands.Choice(name=plain_text(f"{s.label} — {'yours' if s.personal else 'server'}: {s.prompt}",
                                            CHOICE_NAME), value=s.label)
        for s in found if typed in s.name
    ][:CHOICES]


@app_commands.guild_only()
class Styles(commands.GroupCog, group_name="style", group_description="Your own styles for /imagine"):
    def __init__(self, bot: commands.Bot):
        self.bot = bot
        super().__init__()

    @app_commands.command(name="save", description=f"Save a style of your own (at most {MAX_PERSONAL_STYLES})")
    @app_commands.describe(
        name="Its name: letters, digits, - or _ (use it as style:my:NAME, or NAME)",
        prompt="The prompt, with {prompt} where your prompt goes",
        negative="Added to the negative prompt",
        model="The model it uses when you choose none",
        sampler="The sampler it uses when you choose none",
        guidance="The guidance it uses when you choose none",
    )
    async def save(
        self,
        interaction: discord.Interaction,
        name: app_commands.Range[str, 1, MAX_STYLE_NAME_CHARS],
        prompt: app_commands.Range[str, 1, MAX_TEMPLATE_CHARS],
        negative: app_commands.Range[str, 0, MAX_NEGATIVE_CHARS] | None = None,
        model: app_commands.Range[str, 1, 80] | None = None,
        sampler: app_commands.Range[str, 1, 40] | None = None,
        guidance: app_commands.Range[float, 0.0, MAX_GUIDANCE] | None = None,
    ) -> None:
        style, created = await styles_of(interaction).save_personal(
            guild_id_of(interaction), interaction.user.id, name, prompt, negative=negative, model=model,
            sampler=sampler, guidance=guidance)
        verb = "Saved" if created else "Replaced"
        await interaction.response.send_message(
            f"{verb} your style **{style.label}**: {describe(style)}\nUse it with `/imagine style:{style.label}`.",
            ephemeral=True, allowed_mentions=discord.AllowedMentions.none())

    @app_commands.command(name="list", description="The styles you can use: the server's and your own")
    async def list_(self, interaction: discord.Interaction) -> None:
        service = styles_of(interaction)
        guild_id = guild_id_of(interaction)
        server = await service.server_styles(guild_id)
        mine = await service.personal_styles(guild_id, interaction.user.id)
        lines = [f"**{s.label}** — {describe(s, 120)}" for s in server]
        lines += [f"**{s.label}** (yours) — {describe(s, 120)}" for s in mine]
        lines.append(f"You keep {len(mine)} of at most {MAX_PERSONAL_STYLES} styles of your own.")
        await interaction.response.send_message(
            embed=lines_embed("Styles", lines), ephemeral=True, allowed_mentions=discord.AllowedMentions.none())

    @app_commands.command(name="remove", description="Remove a style of your own")
    @app_commands.describe(name="The style's name")
    async def remove(self, interaction: discord.Interaction,
                     name: app_commands.Range[str, 1, MAX_STYLE_OPTION_CHARS]) -> None:
        removed = await styles_of(interaction).remove_personal(guild_id_of(interaction), interaction.user.id, name)
        shown = safe_text(name, MAX_STYLE_OPTION_CHARS, single_line=True)
        await interaction.response.send_message(
            f"Removed your style **{shown}**." if removed else f"You have no style named **{shown}**.",
            ephemeral=True, allowed_mentions=discord.AllowedMentions.none())

    @remove.autocomplete("name")
    async def _mine(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        if interaction.guild_id is None:
            return []
        typed = (current or "").strip().casefold().removeprefix(PERSONAL_PREFIX)
        mine = await styles_of(interaction).personal_styles(interaction.guild_id, interaction.user.id)
        return [app_commands.Choice(name=plain_text(f"{s.name} — {s.prompt}", CHOICE_NAME), value=s.name)
                for s in mine if typed in s.name][:CHOICES]
