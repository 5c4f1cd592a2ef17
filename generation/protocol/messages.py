"""The messages that travel on the NATS queue between the bot and the workers, as typed, strictly parsed models.

Both processes read messages the other wrote, possibly a different version of it, and the NATS subjects are open to
anything that can connect. A message is therefore parsed strictly: a field of the wrong type (a string job id, a float
step, a bool where a number is wanted, a preview that is not base64), an unknown field or a missing one refuses the
whole message with a `MessageError` that names the message type, the field and what was wrong, instead of letting
`"3"` become 3 or an unknown key slip by unnoticed. Readers (`generation.protocol.queue.JobQueue`, the worker) drop a
refused message with a warning that gives the reason.

The models are pydantic dataclasses (frozen, strict, no extra fields), so they are built like the plain dataclasses they
replace (`Outcome(job_id, "failed", error=...)`); building one with a mistyped value fails at the sender. The wire JSON
is what it always was: field names as keys, tuples as arrays, bytes (`ProgressEvent.preview`) as standard, padded
base64 strings.

This module imports neither torch nor discord nor nats; both sides import it (through `generation.protocol.queue`).
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import field
from functools import cache
from typing import Annotated, Any, Literal, Self

from pydantic import ConfigDict, PlainSerializer, PlainValidator, TypeAdapter, ValidationError, ValidationInfo
from pydantic.dataclasses import dataclass

#: The model token of jobs that name no model (served by every worker unless it was started with `--no-default`).
DEFAULT_TOKEN = "_default"

OutcomeStatus = Literal["succeeded", "failed", "cancelled"]
WorkerState = Literal["loading", "ready", "busy", "stopping", "stopped", "failed"]

#: Strict: no coercion ("3" is not an int, 3.0 is not an int, True is not an int); forbid: no unknown fields.
STRICT = ConfigDict(strict=True, extra="forbid")


class MessageError(ValueError):
    """A queue message that could not be read: not JSON, or a field missing, unknown or of the wrong type.

    `str(e)` reads like ``WorkerInfo: field `pid`: Input should be a valid integer (got '12')``."""

    def __init__(self, message_type: str, problems: list[str]):
        self.message_type = message_type
        self.problems = tuple(problems)
        super().__init__(f"{message_type}: {'; '.join(problems) or 'unreadable'}")


def _b64_bytes(value: Any, info: ValidationInfo) -> bytes:
    """Bytes travel as standard base64 in JSON; in Python they are plain bytes."""
    if info.mode != "json":
        if isinstance(value, bytes):
            return value
        raise ValueError("Input should be bytes")
    if not isinstance(value, str):
        raise ValueError("Input should be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ValueError(f"Input should be valid base64 ({e})") from None


def _b64_str(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")


#: Bytes that are written as a standard base64 string (pydantic's own base64 is the URL-safe alphabet, which an
#: older reader using `base64.b64decode` would misread).
Base64Bytes = Annotated[
    bytes, PlainValidator(_b64_bytes), PlainSerializer(_b64_str, return_type=str, when_used="json")
]


@cache
def _adapter(cls: type) -> TypeAdapter:
    return TypeAdapter(cls)


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _location(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _problem(err: Any) -> str:
    """One validation error in words: the field and what was wrong with it."""
    kind = err["type"]
    if kind == "unexpected_keyword_argument":
        what = "unknown field"
    elif kind in ("missing", "missing_argument", "missing_keyword_only_argument"):
        what = "missing"
    elif kind == "json_invalid":
        what = err["msg"]
    elif kind == "value_error":  # raised by a validator of ours: its own words, without pydantic's "Value error, "
        what = f"{err.get('ctx', {}).get('error', err['msg'])} (got {_short(err.get('input'))})"
    else:
        what = f"{err['msg']} (got {_short(err.get('input'))})"
    where = _location(err["loc"])
    return f"field `{where}`: {what}" if where else what


def _message_error(cls: type, e: ValidationError) -> MessageError:
    return MessageError(cls.__name__, [_problem(err) for err in e.errors(include_url=False)])


class _Message:
    """`to_json()` / `from_json()` of every message type."""

    def to_json(self) -> bytes:
        return _adapter(type(self)).dump_json(self)

    @classmethod
    def from_json(cls, data: bytes | str) -> Self:
        """Parse one message; raises `MessageError` (naming the field and the problem) when it does not fit."""
        try:
            return _adapter(cls).validate_json(data)
        except ValidationError as e:
            raise _message_error(cls, e) from e


@dataclass(frozen=True, config=STRICT)
class StoredImage(_Message):
    """One image of an outcome, stored in the object store under `object`."""

    index: int
    seed: int
    object: str
    size: int
    sha256: str
    nsfw: bool = False


@dataclass(frozen=True, config=STRICT)
class Outcome(_Message):
    """The final word of a worker on a job: succeeded (with images), failed (with a reason) or cancelled."""

    job_id: int
    status: OutcomeStatus
    images: tuple[StoredImage, ...] = ()
    timeline_object: str | None = None
    error: str = ""
    worker: str = ""
    model: str = ""
    device: str = ""
    attempt: int = 1
    timings: dict[str, float] = field(default_factory=dict)
    request_digest: str = ""


@dataclass(frozen=True, config=STRICT)
class ProgressEvent(_Message):
    """`started` when a worker takes a job, `step` for each denoising step, `released` when a stopping worker hands
    the job back to the queue."""

    job_id: int
    kind: Literal["started", "step", "released"]
    step: int = 0
    total: int = 0
    #: A small PNG of the image so far (base64 in JSON).
    preview: Base64Bytes | None = None
    worker: str = ""
    attempt: int = 1


@dataclass(frozen=True, config=STRICT)
class WorkerInfo(_Message):
    """What a worker announces about itself (every few seconds and on every change of state).

    Unknown fields are refused like in every other message: a worker and a bot of different versions that disagree
    on the announcement show up as warnings in the bot's log rather than as a worker that is silently half-read."""

    name: str
    model: str
    token: str
    #: `failed`: the model could not be loaded (`error` says why); the worker takes no job and exits.
    state: WorkerState
    device: str = ""
    host: str = ""
    pid: int = 0
    jobs: tuple[int, ...] = ()
    serves_default: bool = True
    max_batch: int = 1
    load_seconds: float = 0.0
    sent_at: float = 0.0
    error: str = ""

    @property
    def tokens(self) -> tuple[str, ...]:
        return (self.token, DEFAULT_TOKEN) if self.serves_default and self.token != DEFAULT_TOKEN else (self.token,)


@dataclass(frozen=True, config=STRICT)
class JobMessage(_Message):
    """The payload of a job message. A source image travels in the object store (`init_object`).

    Only the envelope is parsed here; `request` stays the raw dict, which the worker checks with
    `GenerationRequest.from_dict`, so a request that breaks the contract fails its job with the contract's reason
    (and the bot's refund), not as an unreadable message."""

    job_id: int
    request: dict[str, Any]
    digest: str = ""
    init_object: str | None = None


@dataclass(frozen=True, config=STRICT)
class MaxDeliveries(_Message):
    """The server gave up on a job message after its last delivery was not acked."""

    stream_seq: int
    deliveries: int = 0
    consumer: str = ""

    @classmethod
    def from_advisory(cls, data: bytes | str) -> MaxDeliveries:
        """Read the server's max-deliveries advisory. It says more than we need (type, id, timestamp, stream, ...)
        and its schema is the server's, so only the fields used here are taken, each checked strictly."""
        try:
            d = json.loads(data)
        except (ValueError, UnicodeDecodeError) as e:
            raise MessageError(cls.__name__, [f"Invalid JSON: {e}"]) from e
        if not isinstance(d, dict):
            raise MessageError(cls.__name__, [f"Input should be an object (got {_short(d)})"])
        picked = {k: d[k] for k in ("stream_seq", "deliveries", "consumer") if k in d}
        try:
            return _adapter(cls).validate_json(json.dumps(picked))
        except ValidationError as e:
            raise _message_error(cls, e) from e
