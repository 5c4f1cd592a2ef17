"""One place that turns any error of a command, button or modal into a reply.

- A domain error (`bot.errors.BotError`) is the member's to fix: its `user_message` goes back ephemerally.
- A request the contract refuses (`generation.protocol.contract.RequestError`) names the field and the rule: same.
- The database stayed locked longer than the bot waits (`bot.db.engine.is_busy_error`): nothing was written, so
  nothing was charged; the member is asked to try again.
- The disk under the database is full (`bot.db.engine.is_full_error`): nothing was written or charged either; the
  member is told so, and the log gets an ERROR line for the moderators (it lasts until someone frees space).
- A Discord-side check (missing permissions, cooldown, a transformer that refused a value): a short explanation.
- Anything else is a bug: the member gets a short apology with the job id (when one is known) and an error id,
  and the log gets the full traceback on one line with the same ids.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.db.engine import is_busy_error, is_full_error
from bot.errors import BotError
from bot.ui.text import CONTENT, safe_text
from generation.protocol.contract import RequestError

log = logging.getLogger("bot.errors")


def _unwrap(error: BaseException) -> BaseException:
    while isinstance(error, app_commands.CommandInvokeError | commands.CommandInvokeError) and error.original is not None:
        error = error.original
    return error


def user_message_for(error: BaseException) -> str | None:
    """The friendly text for an error the member can act on, or None for a bug."""
    error = _unwrap(error)
    if isinstance(error, BotError):
        return error.user_message
    if isinstance(error, RequestError):
        return f"That request cannot run: {error}"
    if is_busy_error(error):
        return ("The bot is very busy right now and could not save that (its database stayed locked). "
                "Nothing was charged; please try again in a minute.")
    if is_full_error(error):
        return ("The bot's disk is full, so that could not be saved. Nothing was charged; "
                "please let a moderator know.")
    if isinstance(error, app_commands.MissingPermissions | app_commands.MissingRole | app_commands.MissingAnyRole):
        return "Only moderators can use this command."
    if isinstance(error, app_commands.NoPrivateMessage):
        return "This command works only inside a server."
    if isinstance(error, app_commands.CommandOnCooldown):
        return f"Slow down a little; try again in {error.retry_after:.0f} s."
    if isinstance(error, app_commands.TransformerError):
        return f"`{error.value}` is not a valid value for that option."
    if isinstance(error, app_commands.CheckFailure):
        return "You cannot use this here."
    return None


async def send_private(interaction: discord.Interaction, text: str, **kwargs: Any) -> None:
    """Answer `interaction` with a message only its member sees, whether or not it was answered or deferred already
    (`kwargs`: a view, ...). Raises discord.HTTPException when Discord refuses it.

    A command deferred in public ("thinking…", see bot.exts.imagine.flow.defer) is the exception: Discord turns the
    first follow-up of a deferred interaction into that public message, keeping its flags. So that message is
    completed first, the private answer goes out as a message of its own, and the public one is removed."""
    quiet = discord.AllowedMentions.none()
    if interaction.extras.pop("public_defer", False):
        await interaction.edit_original_response(content="(answered privately)")
        await interaction.followup.send(text, ephemeral=True, allowed_mentions=quiet, **kwargs)
        with contextlib.suppress(discord.HTTPException):
            await interaction.delete_original_response()
    elif interaction.response.is_done():
        await interaction.followup.send(text, ephemeral=True, allowed_mentions=quiet, **kwargs)
    else:
        await interaction.response.send_message(text, ephemeral=True, allowed_mentions=quiet, **kwargs)


async def send_ephemeral(interaction: discord.Interaction, text: str) -> None:
    """Answer ephemerally whether or not the interaction was already answered/deferred (`send_private`); a refusal
    by Discord is logged."""
    try:
        await send_private(interaction, safe_text(text, CONTENT, markdown=True))
    except discord.HTTPException:
        log.warning("could not deliver an error message to interaction %s", interaction.id, exc_info=True)


async def report_error(interaction: discord.Interaction, error: BaseException, *, job_id: int | None = None) -> None:
    """Reply to `interaction` about `error`: friendly for domain errors, an apology plus a log line for bugs."""
    message = user_message_for(error)
    if message is not None:
        if is_full_error(_unwrap(error)):
            log.error("interaction %s refused: the database's disk is full (%s); free space so the bot can save again",
                      interaction.id, _unwrap(error))
        else:
            log.info("refused interaction %s of user %s: %s", interaction.id, interaction.user.id,
                     _unwrap(error).__class__.__name__)
        await send_ephemeral(interaction, message)
        return
    original = _unwrap(error)
    job_id = job_id if job_id is not None else getattr(original, "job_id", None)
    error_id = secrets.token_hex(4)
    what = interaction.command.qualified_name if interaction.command else (interaction.data or {}).get("custom_id", "?")
    log.error(
        "unexpected error %s in %s (interaction %s, user %s, job %s)",
        error_id, what, interaction.id, interaction.user.id, job_id if job_id is not None else "-",
        exc_info=(type(original), original, original.__traceback__),
    )
    apology = "Sorry, something went wrong on our side"
    apology += f" with job #{job_id}" if job_id is not None else ""
    apology += f". The moderators can find it in the log as error `{error_id}`."
    await send_ephemeral(interaction, apology)


class ErrorHandler(commands.Cog):
    """Installs `report_error` as the app command tree's error handler."""

    def __init__(self, bot: commands.Bot):
        self.bot = bot
        self._previous: Any = None

    async def cog_load(self) -> None:
        self._previous = self.bot.tree.on_error
        self.bot.tree.on_error = self.on_app_command_error  # type: ignore[method-assign]

    async def cog_unload(self) -> None:
        if self._previous is not None:
            self.bot.tree.on_error = self._previous  # type: ignore[method-assign]

    async def on_app_command_error(self, interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
        await report_error(interaction, error)
