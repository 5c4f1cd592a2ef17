"""Domain errors of the bot. Each carries a user-facing message (`user_message`) that says what was wrong and what
is allowed; the bot's error handler sends it as an ephemeral reply. `str(error)` is the same text, so logs read well.

All of them derive from `BotError`; anything else that reaches the error handler is a bug and is logged as such.
"""

from __future__ import annotations

import math
from datetime import datetime


def _when(at: datetime) -> str:
    """A Discord timestamp (rendered in the reader's time zone) plus the relative form."""
    ts = int(at.timestamp())
    return f"<t:{ts}:t> (<t:{ts}:R>)"


class BotError(Exception):
    """Base of all domain errors. `user_message` is safe to show to the member who caused it."""

    def __init__(self, user_message: str):
        self.user_message = user_message
        super().__init__(user_message)


# --- quota -----------------------------------------------------------------------------------------------------
class QuotaError(BotError):
    """The request was refused by the member's quota; nothing was charged."""


class QuotaExceeded(QuotaError):
    """The job's cost does not fit in what is left of the member's daily budget (nor of the relax budget, when the
    member has one). Amounts are units, hundredths of a credit (bot.services.costs); the message shows credits."""

    def __init__(
        self,
        requested: int,
        used: int,
        limit: int,
        resets_at: datetime | None,
        *,
        relax_used: int = 0,
        relax_limit: int = 0,
    ):
        from bot.services.costs import format_credits as c

        self.requested = requested
        self.used = used
        self.limit = limit
        self.resets_at = resets_at
        self.relax_used = relax_used
        self.relax_limit = relax_limit
        left = max(0, limit - used)
        if limit <= 0 and relax_limit <= 0:
            super().__init__("Your roles allow no credits in this server; ask a moderator if that seems wrong.")
            return
        msg = f"This job costs {c(requested)} credit(s) but you have {c(left)} of your {c(limit)} daily credits left"
        if relax_limit > 0:
            msg += f", and {c(max(0, relax_limit - relax_used))} of your {c(relax_limit)} relax credits."
        else:
            msg += "."
        most = max(limit, relax_limit)
        if resets_at is not None and requested <= most:
            msg += f" Your allowance resets at {_when(resets_at)}."
        elif requested > most:
            msg += f" At most {c(most)} credit(s) fit in one day: ask for fewer, smaller images or fewer steps."
        super().__init__(msg)


class TooManyActiveJobs(QuotaError):
    """The member already has as many queued or running jobs as allowed."""

    def __init__(self, active: int, limit: int):
        self.active = active
        self.limit = limit
        if limit <= 0:
            super().__init__("Your roles allow no image jobs in this server; ask a moderator if that seems wrong.")
            return
        super().__init__(
            f"You already have {active} job(s) queued or running; at most {limit} at a time are allowed. "
            "Wait for one to finish or cancel it."
        )


class OnCooldown(QuotaError):
    """The member started a job moments ago; the per-member cooldown (setting IMAGINE_COOLDOWN_SECONDS) holds the
    next one until `retry_at`. Nothing was charged."""

    def __init__(self, retry_at: datetime, cooldown: float):
        self.retry_at = retry_at
        self.cooldown = cooldown
        ts = math.ceil(retry_at.timestamp())
        super().__init__(
            f"You are starting images a little fast: one every {cooldown:g} s. "
            f"You can start the next one <t:{ts}:R>; nothing was charged."
        )


class LimitExceeded(QuotaError):
    """A request parameter is above what the member's roles allow (steps, image side)."""

    def __init__(self, field: str, value: int, maximum: int):
        self.field = field
        self.value = value
        self.maximum = maximum
        super().__init__(f"`{field}` is {value}, but your roles allow at most {maximum}.")


# --- requests and jobs -----------------------------------------------------------------------------------------
class InvalidRequest(BotError):
    """A generation parameter is out of range (wraps `generation.protocol.contract.RequestError`)."""

    def __init__(self, message: str, field: str | None = None):
        self.field = field
        super().__init__(message)


class JobNotFound(BotError):
    def __init__(self, job_id: int):
        self.job_id = job_id
        super().__init__(f"Job #{job_id} does not exist.")


class SourceImageNotFound(BotError):
    """A variation/upscale points at an image that does not exist (or whose job has not succeeded)."""

    def __init__(self, job_id: int, index: int):
        self.job_id = job_id
        self.index = index
        super().__init__(f"Image {index + 1} of job #{job_id} is not available; only finished images can be reused.")


class IllegalTransition(BotError):
    """A job was asked to move between states the state machine does not connect."""

    def __init__(self, job_id: int, from_status: str, to_status: str, allowed_from: tuple[str, ...] = ()):
        self.job_id = job_id
        self.from_status = from_status
        self.to_status = to_status
        self.allowed_from = allowed_from
        msg = f"Job #{job_id} cannot go from `{from_status}` to `{to_status}`"
        if allowed_from:
            msg += f"; only a job that is {' or '.join(allowed_from)} can become {to_status}"
        super().__init__(msg + ".")


class NotJobOwner(BotError):
    def __init__(self, job_id: int):
        self.job_id = job_id
        super().__init__(f"Job #{job_id} is not yours; only its owner or a moderator can do that.")


# --- models ----------------------------------------------------------------------------------------------------
def _names(names: list[str]) -> str:
    return ", ".join(f"`{n}`" for n in names[:15]) + (f" and {len(names) - 15} more" if len(names) > 15 else "")


def _shown_name(name: str) -> str:
    """A model name a member typed, shown in a refusal: one line, at most 80 characters, no backticks."""
    text = " ".join(str(name).split()).replace("`", "'")
    return text if len(text) <= 80 else text[:79] + "…"


class ModelUnavailable(BotError):
    """The job's model can not be used now (no worker serves it, or it is not offered here); nothing was charged."""


class NoModelServed(ModelUnavailable):
    def __init__(self) -> None:
        super().__init__(
            "No image worker is running right now (or it is still loading its model), so nothing can be drawn. "
            "Nothing was charged; please try again in a minute, or tell a moderator if it lasts."
        )


class ModelNotServed(ModelUnavailable):
    """The member asked for a model no live worker serves."""

    def __init__(self, name: str, offered: list[str]):
        self.name = name
        self.offered = offered
        msg = f"No worker serves the model `{_shown_name(name)}` right now."
        msg += f" Models you can use: {_names(offered)}." if offered else " No model is offered in this server now."
        super().__init__(msg + " Nothing was charged.")


class ModelNotOffered(ModelUnavailable):
    """The member asked for a model this server's moderators hid."""

    def __init__(self, name: str, offered: list[str]):
        self.name = name
        self.offered = offered
        msg = f"The model `{_shown_name(name)}` is not offered in this server."
        msg += f" Models you can use: {_names(offered)}." if offered else ""
        super().__init__(msg + " Nothing was charged.")


class DefaultModelNotServed(ModelUnavailable):
    """The member named no model and the server's default model is not served now."""

    def __init__(self, name: str, offered: list[str]):
        self.name = name
        self.offered = offered
        msg = f"This server's default model `{_shown_name(name)}` is not served right now."
        if offered:
            msg += f" Choose one with the `model` option: {_names(offered)}."
        super().__init__(msg + " Nothing was charged.")


class NoModelOffered(ModelUnavailable):
    """Every served model is hidden in this server."""

    def __init__(self) -> None:
        super().__init__("No model is offered in this server right now; please ask a moderator. Nothing was charged.")


# --- moderation ------------------------------------------------------------------------------------------------
class UserBanned(BotError):
    def __init__(self, reason: str | None = None, until: datetime | None = None):
        self.reason = reason
        self.until = until
        msg = "You are banned from generating images in this server"
        if until is not None:
            msg += f" until {_when(until)}"
        if reason:
            msg += f". Reason: {reason}"
        super().__init__(msg + ".")


class BlockedPrompt(BotError):
    def __init__(self, term: str):
        self.term = term
        super().__init__(f"Your prompt contains a blocked term (`{term}`). Please rephrase it.")


class NotArtChannel(BotError):
    def __init__(self, channel_ids: list[int]):
        self.channel_ids = channel_ids
        where = ", ".join(f"<#{c}>" for c in channel_ids[:10])
        super().__init__(f"Images can only be generated in the art channels of this server: {where}.")


class QueuePaused(BotError):
    def __init__(self) -> None:
        super().__init__("The moderators have paused the image queue of this server; please try again later.")


class InvalidSetting(BotError):
    """A moderator passed a value a setting does not accept."""

    def __init__(self, name: str, value: object, allowed: str):
        self.name = name
        self.value = value
        self.allowed = allowed
        super().__init__(f"`{name}` is {value!r}, but {allowed}.")
