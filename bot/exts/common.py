"""Small helpers the extensions share: who is asking, where, and whether they moderate."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import discord

from bot.errors import BotError


class NotInGuild(BotError):
    def __init__(self) -> None:
        super().__init__("This works only inside a server.")


class NotModerator(BotError):
    def __init__(self) -> None:
        super().__init__("Only moderators (Manage Server permission or the moderator role) can do that.")


def deps(interaction: discord.Interaction) -> Any:
    return interaction.client.deps  # type: ignore[attr-defined]


def guild_id_of(interaction: discord.Interaction) -> int:
    if interaction.guild_id is None:
        raise NotInGuild()
    return interaction.guild_id


def role_ids_of(user: discord.abc.User) -> list[int]:
    roles = getattr(user, "roles", None) or []
    return [r.id for r in roles if not r.is_default()]


def is_moderator(interaction: discord.Interaction) -> bool:
    """Manage Server in this channel, or the configured moderator role (setting `mod_role_id`). Server-side check:
    Discord's own command permissions can be changed by a server's admins, so every moderator action asks again."""
    user = interaction.user
    perms = getattr(user, "guild_permissions", None)
    if perms is not None and (perms.manage_guild or perms.administrator):
        return True
    if interaction.permissions.manage_guild or interaction.permissions.administrator:
        return True
    mod_role = getattr(deps(interaction).settings, "mod_role_id", None)
    return bool(mod_role) and mod_role in role_ids_of(user)


def require_moderator(interaction: discord.Interaction) -> None:
    if not is_moderator(interaction):
        raise NotModerator()


async def audit(interaction: discord.Interaction, action: str, target: str | None, details: dict[str, Any] | None = None) -> None:
    """Write one audit-log entry for an action the services do not log themselves (they log their own)."""
    from bot.db.engine import run_write
    from bot.services.audit import write_audit

    guild_id = guild_id_of(interaction)
    await run_write(deps(interaction).sessions, lambda s: write_audit(s, guild_id, interaction.user.id, action, target, details))


MODEL_CARD = "imaginebot.json"


def model_card(model_path: str | None) -> dict[str, Any]:
    """The model folder's `imaginebot.json` (what the model was trained to draw), or {} when there is none."""
    if not model_path:
        return {}
    path = Path(model_path)
    card = path / MODEL_CARD if path.is_dir() else path.with_name(MODEL_CARD)
    try:
        data = json.loads(card.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
