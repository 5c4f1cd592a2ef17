"""The signature of an outcome: an HMAC-SHA256, keyed with its job's secret, over what the bot records of it.

Anyone who can publish on the results subject can write an `Outcome`; only the worker that ran the job knows the
job's secret (the bot makes it with the job and sends it in the job message, `JobMessage.secret`). The worker signs
its outcome (`sign_outcome`), and the bot records an outcome only when `outcome_verified` says the signature is the
one its job's secret makes, so a forged outcome (no signature, a wrong one, one made with another job's secret, one
planted before its job existed) changes nothing.

The signature covers the outcome in a canonical form (`canonical_outcome`): a fixed label, the job id, the attempt,
the status, the request digest, every image's index, seed, object, size, sha256 and nsfw flag (in the outcome's
order), the timeline object and the error text — everything the bot acts on — and a describe job's prompt
suggestions (appended only when there are some, so every other outcome signs as it always did). The worker's name,
model, device and timings are only shown and logged, and are not covered.

Progress events are signed the same way (`progress_mac`, label `imaginebot-progress-v1`) over the job id, attempt,
kind, step, total, worker name and the preview's sha256: the bot marks a job started, counts its attempts, shows its
progress and its preview only from events its worker signed, so nobody else can show a member a picture of their own
in a job's progress message.

Threat model: the secret travels in the job message, so whoever can read the jobs stream can read it, until the queue
itself is authenticated. The signature keeps out those who can publish results but not read jobs (and everyone,
once the queue is authenticated).

Torch-free and database-free: both the worker and the bot import it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import re

from generation.protocol.messages import Outcome, ProgressEvent

#: Told apart from any other use of the secret: a signature of something else can never pass for an outcome's.
LABEL = "imaginebot-outcome-v1"
#: The same for progress events: a progress event's signature never passes for an outcome's, nor the reverse.
PROGRESS_LABEL = "imaginebot-progress-v1"
_HEX_MAC = re.compile(r"[0-9a-f]{64}")


def canonical_outcome(outcome: Outcome) -> bytes:
    """The bytes an outcome's signature covers (its `mac` left out): compact JSON of an array, keys never reordered,
    every string escaped to ASCII, so the same outcome always gives the same bytes on every side."""
    content = [
        LABEL,
        outcome.job_id,
        outcome.attempt,
        outcome.status,
        outcome.request_digest,
        [[img.index, img.seed, img.object, img.size, img.sha256, img.nsfw] for img in outcome.images],
        outcome.timeline_object,
        outcome.error,
    ]
    if outcome.suggestions:  # a describe job's; left out when none, so every other outcome signs as it always did
        content.append(list(outcome.suggestions))
    return json.dumps(content, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def outcome_mac(secret: bytes, outcome: Outcome) -> str:
    """The HMAC-SHA256 (lowercase hex) of an outcome with its job's `secret`; the outcome's own `mac` is ignored."""
    if not secret:
        raise ValueError("an outcome cannot be signed without its job's secret")
    return hmac.new(secret, canonical_outcome(outcome), hashlib.sha256).hexdigest()


def sign_outcome(secret: bytes, outcome: Outcome) -> Outcome:
    """The outcome with its `mac` set; with no secret (a job message from a bot that sends none) it stays unsigned,
    which the bot refuses."""
    if not secret:
        return outcome
    return dataclasses.replace(outcome, mac=outcome_mac(secret, outcome))


def outcome_verified(secret: bytes | None, outcome: Outcome) -> bool:
    """Whether the outcome's `mac` is the one `secret` makes (compared in constant time). False without a secret, or
    when the outcome has no mac or one that is not 64 lowercase hex digits."""
    if not secret or not _HEX_MAC.fullmatch(outcome.mac or ""):
        return False
    return hmac.compare_digest(outcome_mac(secret, outcome).encode("ascii"), outcome.mac.encode("ascii"))


def canonical_progress(ev: ProgressEvent) -> bytes:
    """The bytes a progress event's signature covers (its `mac` left out); the preview by its sha256."""
    preview = hashlib.sha256(ev.preview).hexdigest() if ev.preview is not None else ""
    content = [PROGRESS_LABEL, ev.job_id, ev.attempt, ev.kind, ev.step, ev.total, ev.worker, preview]
    return json.dumps(content, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def progress_mac(secret: bytes, ev: ProgressEvent) -> str:
    """The HMAC-SHA256 (lowercase hex) of a progress event with its job's `secret`; the event's own `mac` is ignored."""
    if not secret:
        raise ValueError("a progress event cannot be signed without its job's secret")
    return hmac.new(secret, canonical_progress(ev), hashlib.sha256).hexdigest()


def sign_progress(secret: bytes, ev: ProgressEvent) -> ProgressEvent:
    """The event with its `mac` set (left unsigned without a secret, which the bot refuses)."""
    if not secret:
        return ev
    return dataclasses.replace(ev, mac=progress_mac(secret, ev))


def progress_verified(secret: bytes | None, ev: ProgressEvent) -> bool:
    """Whether the event's `mac` is the one `secret` makes (constant-time compare); False without a secret or mac."""
    if not secret or not _HEX_MAC.fullmatch(ev.mac or ""):
        return False
    return hmac.compare_digest(progress_mac(secret, ev).encode("ascii"), ev.mac.encode("ascii"))
