"""The messages that travel on the NATS queue between the bot and the workers, as typed, strictly parsed models.

Every message is parsed strictly (`generation.protocol.strict`): an unknown, missing or mistyped field refuses the
whole message with a `MessageError` naming the field. Readers (`generation.protocol.queue.JobQueue`, the worker)
drop a refused message with a warning that gives the reason.

The models are built like plain dataclasses (`Outcome(job_id, "failed", error=...)`); building one with a mistyped
value fails at the sender. The wire JSON is field names as keys, tuples as arrays, bytes (`ProgressEvent.preview`)
as standard, padded base64 strings.

This module imports neither torch nor discord nor nats; both sides import it (through `generation.protocol.queue`).
"""

from __future__ import annotations

import json
import re
from dataclasses import field
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, ValidationError, field_validator
from pydantic.dataclasses import dataclass

from generation.protocol.cards import ModelCard
from generation.protocol.contract import MAX_SUGGESTION_CHARS
from generation.protocol.strict import STRICT, Base64Bytes, Message, MessageError, adapter, message_error, short

#: The model token of jobs that name no model (served by every worker unless it was started with `--no-default`).
DEFAULT_TOKEN = "_default"

#: Most prompt suggestions one outcome carries (a `describe` job's).
MAX_SUGGESTIONS = 8
#: The length of a job's secret (`JobMessage.secret`).
JOB_SECRET_BYTES = 32
_HEX_MAC = re.compile(r"[0-9a-f]{64}")


def _mac_is_hex(value: str) -> str:
    if value and not _HEX_MAC.fullmatch(value):
        raise ValueError("should be 64 lowercase hex digits")
    return value


#: An HMAC-SHA256 in lowercase hex, or "" when unsigned (which the bot refuses).
HexMac = Annotated[str, AfterValidator(_mac_is_hex)]

OutcomeStatus = Literal["succeeded", "failed", "cancelled"]
WorkerState = Literal["loading", "ready", "busy", "stopping", "stopped", "failed"]


def model_token(name: str) -> str:
    """The subject/consumer-safe token of a model name; "" (the worker's default) maps to `_default`."""
    token = re.sub(r"[^a-z0-9_-]+", "-", (name or "").strip().lower()).strip("-_")
    return token[:64] if token else DEFAULT_TOKEN


@dataclass(frozen=True, config=STRICT)
class StoredImage(Message):
    """One image of an outcome, stored in the object store under `object`."""

    index: int
    seed: int
    object: str
    size: int
    sha256: str
    nsfw: bool = False


@dataclass(frozen=True, config=STRICT)
class Outcome(Message):
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
    #: HMAC-SHA256 (64 lowercase hex digits) of the outcome with its job's secret (`generation.protocol.signing`);
    #: "" when unsigned, which the bot refuses.
    mac: HexMac = ""
    #: A `describe` job's prompt suggestions (it has no images); signed with the rest.
    suggestions: tuple[str, ...] = ()

    @field_validator("suggestions")
    @classmethod
    def _few_short_suggestions(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(value) > MAX_SUGGESTIONS or any(len(text) > MAX_SUGGESTION_CHARS for text in value):
            raise ValueError(f"should be at most {MAX_SUGGESTIONS} texts of at most {MAX_SUGGESTION_CHARS} characters")
        return value


@dataclass(frozen=True, config=STRICT)
class ProgressEvent(Message):
    """`started` when a worker takes a job, `loading` while the worker loads the job's model into memory first,
    `step` for each denoising step, `released` when a stopping worker hands the job back to the queue."""

    job_id: int
    kind: Literal["started", "loading", "step", "released"]
    step: int = 0
    total: int = 0
    #: A small PNG of the image so far (base64 in JSON).
    preview: Base64Bytes | None = None
    worker: str = ""
    attempt: int = 1
    #: HMAC-SHA256 (hex) with the job's secret over the event (`generation.protocol.signing.progress_mac`): the bot
    #: acts on a progress event, and shows its preview, only when it matches.
    mac: HexMac = ""


@dataclass(frozen=True, config=STRICT)
class WorkerInfo(Message):
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
    #: The card of every model this worker serves (`model` is the first), as it built them when it loaded them. A
    #: worker still loading its first model announces none yet.
    models: tuple[ModelCard, ...] = ()

    @property
    def tokens(self) -> tuple[str, ...]:
        """The queue tokens this worker pulls from: its models', and the default queue unless `--no-default`."""
        own = tuple(dict.fromkeys([self.token, *(model_token(card.name) for card in self.models)]))
        return (*own, DEFAULT_TOKEN) if self.serves_default and DEFAULT_TOKEN not in own else own

    def card(self, name: str) -> ModelCard | None:
        """The card of the model called `name` (compared as queue tokens), or None when this worker lacks it."""
        token = model_token(name)
        return next((c for c in self.models if model_token(c.name) == token), None)


@dataclass(frozen=True, config=STRICT)
class JobMessage(Message):
    """The payload of a job message. A source image travels in the object store (`init_object`).

    Only the envelope is parsed here; `request` stays the raw dict, which the worker checks with
    `GenerationRequest.from_dict`, so a request that breaks the contract fails its job with the contract's reason
    (and the bot's refund), not as an unreadable message."""

    job_id: int
    request: dict[str, Any]
    digest: str = ""
    init_object: str | None = None
    #: The job's secret (`JOB_SECRET_BYTES` random bytes, standard base64 in JSON): the worker signs the job's
    #: outcome with it (`generation.protocol.signing`). Left out of the repr; the worker never logs it. NOTE: until
    #: the queue is authenticated, whoever can read the jobs stream can read it (and so sign that job's outcome).
    #: Empty from a bot that sends none: the outcome then goes unsigned (and such a bot does not check it).
    secret: Base64Bytes = field(default=b"", repr=False)

    @field_validator("secret")
    @classmethod
    def _secret_length(cls, value: bytes) -> bytes:
        if value and len(value) != JOB_SECRET_BYTES:
            raise ValueError(f"should be {JOB_SECRET_BYTES} bytes (got {len(value)})")
        return value


@dataclass(frozen=True, config=STRICT)
class MaxDeliveries(Message):
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
            raise MessageError(cls.__name__, [f"Input should be an object (got {short(d)})"])
        picked = {k: d[k] for k in ("stream_seq", "deliveries", "consumer") if k in d}
        try:
            return adapter(cls).validate_json(json.dumps(picked))
        except ValidationError as e:
            raise message_error(cls, e) from e
