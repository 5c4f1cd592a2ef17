"""/settings: a member's own defaults for /imagine in this server, and public or stealth mode.

`/settings` with no options shows every value a job of theirs would get here and where it comes from (this command's
option, their default, the channel's default, the server's default, the model's card: bot.services.preferences).
Options set defaults; `reset:` clears one (or `all`). `mode:stealth` keeps their new jobs out of the web gallery and
the ⭐ showcase (Discord has no per-member message visibility: the result is posted in its channel as usual).

`gather` collects what `preferences.resolve` reads for one interaction; /imagine uses it too, so both apply and show
the same precedence.
"""

from __future__ import annotations

from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.errors import InvalidSetting
from bot.exts.common import deps, guild_id_of, is_moderator, role_ids_of
from bot.exts.imagine import models
from bot.exts.imagine.options import ASPECTS
from bot.exts.styles.cog import MAX_STYLE_OPTION_CHARS, style_choices
from bot.services.preferences import (
    FIELDS,
    MAX_COUNT,
    Defaults,
    Levels,
    PreferenceService,
    Resolution,
    StyleDefaults,
    resolve,
)
from bot.services.styles import StyleNotFound, StyleService
from bot.ui.embeds import lines_embed
from bot.ui.text import safe_text
from generation.protocol.contract import MAX_GUIDANCE, MAX_STEPS

NO_PINGS = discord.AllowedMentions.none()
#: Longest model name (a card's name has at most 80 characters).
MAX_MODEL_CHARS = 80


def preferences_of(interaction: discord.Interaction) -> PreferenceService:
    return PreferenceService(deps(interaction).sessions)


def channel_of(interaction: discord.Interaction) -> int:
    """The channel whose defaults apply: a thread counts as its parent channel (as for the art channels)."""
    channel = interaction.channel
    if isinstance(channel, discord.Thread) and channel.parent_id:
        return channel.parent_id
    return interaction.channel_id or 0


def check_aspect(aspect: str | None) -> None:
    if aspect is not None and aspect not in ASPECTS:
        raise InvalidSetting("aspect", aspect[:20], f"one of {', '.join(ASPECTS)}")


async def gather(interaction: discord.Interaction, option: dict[str, Any]) -> Levels:
    """What `resolve` needs for a job of `interaction`'s member in its channel: the options given, the member's and
    the channel's defaults, the server's default model, which models and styles can be used now, and the cards.

    A style named in `option` must exist (StyleNotFound, as before); one of a default that is gone is passed over by
    `resolve` with a note. When no model is announced yet (right after a start) a default model is not doubted here:
    `start_job` waits for the workers and refuses it then if it is not served."""
    d = deps(interaction)
    guild_id = guild_id_of(interaction)
    user_id = interaction.user.id
    prefs = PreferenceService(d.sessions)
    member = await prefs.member(guild_id, user_id)
    channel = await prefs.channel(guild_id, channel_of(interaction))
    policy = await d.model_policy.policy(guild_id)
    served = await d.dispatcher.served_models()
    moderator = is_moderator(interaction)
    styles = StyleService(d.sessions)
    found: dict[str, StyleDefaults | None] = {}
    for source, name in (("option", option.get("style")), ("member", member.style), ("channel", channel.style)):
        if not name or name in found:
            continue
        try:
            style = await styles.resolve(guild_id, user_id, name)
        except (StyleNotFound, InvalidSetting):
            if source == "option":
                raise
            found[name] = None
        else:
            found[name] = found[style.label] = StyleDefaults(style.label, style.model, style.guidance, style)

    def model_problem(name: str) -> str | None:
        if not served:
            return None
        model = models.find(served, name)
        if model is None:
            return "it is not served now"
        if not moderator and policy.is_hidden(model.name):
            return "the moderators took it off the list"
        return None

    def card_of(name: str | None) -> Any:
        try:
            return models.choose(served, policy, name, moderator=moderator).card
        except Exception:  # noqa: BLE001 - no model to read a card from: resolve shows none
            return None

    limits = await d.quota.effective_limits(guild_id, user_id, role_ids_of(interaction.user))
    return Levels(option=option, member=member, channel=channel, server_model=policy.default_model,
                  model_problem=model_problem, style_of=found.get, card_of=card_of, steps_limit=limits.max_steps)


def shown(name: str, value: Any, resolution: Resolution) -> str:
    """A resolved value as /settings prints it."""
    card = resolution.card
    if value is None:
        if name == "model":
            return f"chosen automatically ({card.name})" if card is not None else "chosen automatically (none served now)"
        if name == "style":
            return "none"
        if name == "aspect":
            return f"the model's size ({card.default_width}×{card.default_height})" if card is not None else "the model's size"
        return "the model's (none served now)"
    if isinstance(value, float):
        return f"{value:g}"
    return safe_text(str(value), 80, single_line=True)


def settings_lines(resolution: Resolution, member: Defaults) -> list[str]:
    lines = [f"**{name}**: {shown(name, resolution.value(name), resolution)} — {resolution[name].label}"
             for name in FIELDS]
    lines.append(f"**mode**: {'stealth (your new jobs stay out of the web gallery and the ⭐ showcase)' if member.stealth else 'public'}")
    lines.extend(f"⚠️ {note}" for note in resolution.notes)
    return lines


RESETS = [*FIELDS, "mode", "all"]


@app_commands.guild_only()
class Settings(commands.Cog):
    def __init__(self, bot: commands.Bot):
        self.bot = bot

    @app_commands.command(name="settings", description="Your defaults for /imagine here (no options: show them)")
    @app_commands.describe(
        model="Your default model",
        style="Your default style (a server style, or my:NAME for your own)",
        aspect="Your default shape",
        steps="Your default denoising steps",
        guidance="Your default guidance (0-30)",
        count="Your default number of images (1-4)",
        mode="public, or stealth: your new jobs stay out of the web gallery and the ⭐ showcase",
        reset="Clear one of your defaults (or all of them)",
    )
    @app_commands.choices(
        aspect=[app_commands.Choice(name=a, value=a) for a in ASPECTS],
        mode=[app_commands.Choice(name=m, value=m) for m in ("public", "stealth")],
        reset=[app_commands.Choice(name=r, value=r) for r in RESETS],
    )
    async def settings(
        self,
        interaction: discord.Interaction,
        model: app_commands.Range[str, 1, MAX_MODEL_CHARS] | None = None,
        style: app_commands.Range[str, 1, MAX_STYLE_OPTION_CHARS] | None = None,
        aspect: str | None = None,
        steps: app_commands.Range[int, 1, MAX_STEPS] | None = None,
        guidance: app_commands.Range[float, 0.0, MAX_GUIDANCE] | None = None,
        count: app_commands.Range[int, 1, MAX_COUNT] | None = None,
        mode: str | None = None,
        reset: str | None = None,
    ) -> None:
        guild_id = guild_id_of(interaction)
        prefs = preferences_of(interaction)
        said = []
        if reset is not None:
            if reset not in RESETS:
                raise InvalidSetting("reset", reset[:20], f"one of {', '.join(RESETS)}")
            await prefs.reset_member(guild_id, interaction.user.id, None if reset == "all" else reset)
            said.append("Cleared all your defaults." if reset == "all" else f"Cleared your default {reset}.")
        if mode is not None and mode not in ("public", "stealth"):
            raise InvalidSetting("mode", mode[:20], "public or stealth")
        check_aspect(aspect)
        if style is not None:  # a style that exists now (it may go later: /imagine then passes over it)
            style = (await StyleService(deps(interaction).sessions).resolve(guild_id, interaction.user.id, style)).label
        if model is not None:  # a model offered now (it may go later: /imagine then passes over it)
            d = deps(interaction)
            model = models.choose(await d.dispatcher.served_models(), await d.model_policy.policy(guild_id), model,
                                  moderator=is_moderator(interaction)).name
        values = {"model": model, "style": style, "aspect": aspect, "steps": steps, "guidance": guidance,
                  "count": count, "stealth": None if mode is None else mode == "stealth"}
        if any(v is not None for v in values.values()):
            await prefs.set_member(guild_id, interaction.user.id, **values)
            said.append("Saved.")
        member = await prefs.member(guild_id, interaction.user.id)
        resolution = resolve(await gather(interaction, {}))
        embed = lines_embed("Your settings for /imagine here", settings_lines(resolution, member))
        embed.set_footer(text="Order: a command's option > your default > the channel's > the server's > the model's")
        await interaction.response.send_message(" ".join(said) or None, embed=embed, ephemeral=True,
                                                allowed_mentions=NO_PINGS)

    @settings.autocomplete("model")
    async def model_autocomplete(self, interaction: discord.Interaction, current: str
                                 ) -> list[app_commands.Choice[str]]:
        return await models.model_choices(interaction, current)

    @settings.autocomplete("style")
    async def style_autocomplete(self, interaction: discord.Interaction, current: str
                                 ) -> list[app_commands.Choice[str]]:
        return await style_choices(interaction, current)
