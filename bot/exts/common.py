"""Small helpers the extensions share: who is asking, where, whether they moderate, and who may see a job."""

from __future__ import annotations

import math
import weakref
from typing import Any

import discord
from discord import app_commands

from bot.deps import Deps
from bot.errors import BlockedPrompt, BotError


class NotInGuild(BotError):
    def __init__(self) -> None:
        super().__init__("This works only inside a server.")


class NotModerator(BotError):
    def __init__(self) -> None:
        super().__init__("Only moderators (Manage Server permission or the moderator role) can do that.")


class GuildNotAllowed(BotError, app_commands.CheckFailure):
    def __init__(self) -> None:
        super().__init__("This bot is not available in this server.")


class JobDeleted(BotError):
    def __init__(self, job_id: int):
        self.job_id = job_id
        super().__init__(f"Job #{job_id} was deleted: its images and prompt are gone.")


class JobNotVisible(BotError):
    def __init__(self, job_id: int):
        self.job_id = job_id
        super().__init__(f"Job #{job_id} was posted in a channel you can not see.")


class NotJobMessage(BotError):
    def __init__(self, job_id: int):
        self.job_id = job_id
        super().__init__(f"This message is not the result of job #{job_id}, so 🗑️ does not delete it.")


class BlockedNegativePrompt(BlockedPrompt):
    """A blocked term in the negative prompt: matched like the prompt (same terms, same rules)."""

    def __init__(self, term: str):
        BotError.__init__(self, f"Your negative prompt contains a blocked term (`{term}`). Please rephrase it.")
        self.term = term


class QueueFull(BotError):
    def __init__(self, limit: int):
        self.limit = limit
        super().__init__(f"This server already has {limit} jobs waiting or running, the most the bot takes; "
                         "nothing was charged. Please try again when some have finished.")


class OptionOutOfRange(BotError, app_commands.CheckFailure):
    """An option value outside what its command declares. Discord enforces the declared bounds in its client, but a
    stale command list or a hand-made request can still deliver one, so every command checks them again here."""


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def option_problem(param: app_commands.Parameter, value: Any) -> str | None:
    """What is wrong with `value` for the declared option `param` (its type, choices, length or range), or None."""
    kind = param.type
    lo, hi = param.min_value, param.max_value
    if param.choices:
        allowed = [c.value for c in param.choices]
        if value not in allowed:
            return f"is {_shown(value)}, but it has to be one of: {', '.join(str(a) for a in allowed[:25])}."
        return None
    if kind is discord.AppCommandOptionType.string:
        if not isinstance(value, str):
            return "has to be text."
        if lo is not None and len(value) < lo:
            return f"needs at least {_num(lo)} character(s)."
        if hi is not None and len(value) > hi:
            return f"is {len(value)} characters long, but at most {_num(hi)} are allowed."
        return None
    if kind is discord.AppCommandOptionType.integer:
        if isinstance(value, bool) or not isinstance(value, int):
            return f"is {_shown(value)}, but it has to be a whole number."
    elif kind is discord.AppCommandOptionType.number:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return f"is {_shown(value)}, but it has to be a number."
    else:
        return None
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        v, low, high = _num(value), _num(lo), _num(hi)
        if lo is not None and hi is not None:
            return f"is {v}, but it has to be from {low} to {high}."
        return f"is {v}, but it has to be at least {low}." if lo is not None else f"is {v}, but at most {high} is allowed."
    return None


def _num(x: float | int | None) -> str:
    if x is None:
        return ""
    return str(x) if isinstance(x, int) else f"{x:g}"


#: Each command's declared options by name, made once (`Command.parameters` builds a new wrapper per option per call,
#: on the path every interaction takes before its first answer).
_declared: weakref.WeakKeyDictionary[app_commands.Command, tuple[tuple[str, app_commands.Parameter], ...]] = (
    weakref.WeakKeyDictionary())


def declared_options(command: app_commands.Command) -> tuple[tuple[str, app_commands.Parameter], ...]:
    found = _declared.get(command)
    if found is None:
        found = _declared[command] = tuple((p.display_name, p) for p in command.parameters)
    return found


async def check_declared_options(interaction: discord.Interaction) -> bool:
    """A command check: every option value within what the command declares (see OptionOutOfRange)."""
    command = interaction.command
    if not isinstance(command, app_commands.Command):
        return True
    given = vars(interaction.namespace)
    for name, param in declared_options(command):
        value = given.get(name)
        if value is None:
            continue
        problem = option_problem(param, value)
        if problem is not None:
            raise OptionOutOfRange(f"`{param.display_name}` {problem}")
    return True


def add_option_checks(tree: app_commands.CommandTree) -> int:
    """Add `check_declared_options` to every slash command of `tree` (once); returns how many got it."""
    n = 0
    for command in tree.walk_commands():
        if isinstance(command, app_commands.Command) and check_declared_options not in command.checks:
            command.add_check(check_declared_options)
            n += 1
    return n


def deps(interaction: discord.Interaction) -> Deps:
    """The settings, services and queue of the bot that received `interaction`."""
    return deps_of(interaction.client)


def deps_of(client: discord.Client) -> Deps:
    return client.deps  # type: ignore[attr-defined]  # an ImagineBot


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
    mod_role = deps(interaction).settings.mod_role_id
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


def guild_allowed(client: discord.Client, guild_id: int | None) -> bool:
    """Whether the operator lets the bot serve guild `guild_id` (setting ALLOWED_GUILD_IDS; empty: every guild)."""
    return deps_of(client).settings.guild_allowed(guild_id)


def job_channel_id(job: Any) -> int:
    """The channel a job shows in: where its result was posted, else where it was asked for."""
    return job.posted_channel_id or job.channel_id


def can_see_job(interaction: discord.Interaction, job: Any) -> bool:
    """THE rule for who sees a job's prompt, parameters and images (/show, ℹ️, ✏️, the other buttons, the PNG
    metadata of /show): moderators always; once deleted with 🗑️, nobody else (a moderator may need to look into what
    was deleted; its owner chose to take it down, and its images are gone); until then its owner, and any other
    member who can view the channel it was posted in, asked of Discord's permissions for that member in that channel
    (the interaction's resolved permissions when the job's channel is the one the interaction comes from). A channel
    the bot no longer knows is visible to nobody but the owner and moderators."""
    user = interaction.user
    if is_moderator(interaction):
        return True
    if getattr(job, "deleted_at", None) is not None:
        return False
    if job.user_id == user.id:
        return True
    channel_id = job_channel_id(job)
    if channel_id == interaction.channel_id:
        return bool(interaction.permissions.view_channel)
    guild = interaction.guild
    channel = guild.get_channel_or_thread(channel_id) if guild is not None else None
    if channel is None or not isinstance(user, discord.Member):
        return False
    return bool(channel.permissions_for(user).view_channel)
