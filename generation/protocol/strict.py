"""Strict parsing for everything that crosses the queue: the base of the message types and the model card.

Both processes read what the other wrote, possibly a different version of it, and the NATS subjects are open to
anything that can connect. A message is therefore parsed strictly: a field of the wrong type (a string job id, a float
step, a bool where a number is wanted, bytes that are not base64), an unknown field or a missing one refuses the
whole message with a `MessageError` that names the message type, the field and what was wrong, instead of letting
`"3"` become 3 or an unknown key slip by unnoticed.

The types are pydantic dataclasses (frozen, strict, no extra fields), built like plain dataclasses; `Message` gives
them `to_json()` / `from_json()`.
"""

from __future__ import annotations

import base64
import binascii
from functools import cache
from typing import Annotated, Any, Self

from pydantic import ConfigDict, PlainSerializer, PlainValidator, TypeAdapter, ValidationError, ValidationInfo

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
def adapter(cls: type) -> TypeAdapter:
    return TypeAdapter(cls)


def short(value: Any, limit: int = 60) -> str:
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
        what = f"{err.get('ctx', {}).get('error', err['msg'])} (got {short(err.get('input'))})"
    else:
        what = f"{err['msg']} (got {short(err.get('input'))})"
    where = _location(err["loc"])
    return f"field `{where}`: {what}" if where else what


def message_error(cls: type, e: ValidationError) -> MessageError:
    return MessageError(cls.__name__, [_problem(err) for err in e.errors(include_url=False)])


class Message:
    """`to_json()` / `from_json()` of every message type."""

    def to_json(self) -> bytes:
        return adapter(type(self)).dump_json(self)

    @classmethod
    def from_json(cls, data: bytes | str) -> Self:
        """Parse one message; raises `MessageError` (naming the field and the problem) when it does not fit."""
        try:
            return adapter(cls).validate_json(data)
        except ValidationError as e:
            raise message_error(cls, e) from e
