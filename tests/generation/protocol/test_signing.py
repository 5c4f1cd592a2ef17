"""The signature of an outcome and of a progress event: a stable canonical form, every covered field covered, strict
checking."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json

import pytest

from generation.protocol.messages import JobMessage, MessageError, Outcome, ProgressEvent, StoredImage
from generation.protocol.signing import (
    canonical_outcome,
    canonical_progress,
    outcome_mac,
    outcome_verified,
    progress_mac,
    progress_verified,
    sign_outcome,
    sign_progress,
)

SECRET = bytes(range(32))
IMAGES = (StoredImage(0, 11, "5/ab/0.png", 1000, "a" * 64), StoredImage(1, 12, "5/ab/1.png", 2000, "b" * 64, True))
OUTCOME = Outcome(5, "succeeded", IMAGES, "5/ab/timeline.webp", error="", worker="w1", model="tiny", device="cpu",
                  attempt=2, timings={"run": 1.5}, request_digest="0123456789abcdef")


def test_the_canonical_form_is_stable():
    """Pinned: a change of the canonical form breaks every outcome signed by a worker of the other version."""
    assert canonical_outcome(OUTCOME) == (
        b'["imaginebot-outcome-v1",5,2,"succeeded","0123456789abcdef",[[0,11,"5/ab/0.png",1000,"' + b"a" * 64
        + b'",false],[1,12,"5/ab/1.png",2000,"' + b"b" * 64 + b'",true]],"5/ab/timeline.webp",""]'
    )
    expected = hmac.new(SECRET, canonical_outcome(OUTCOME), hashlib.sha256).hexdigest()
    assert outcome_mac(SECRET, OUTCOME) == expected
    signed = sign_outcome(SECRET, OUTCOME)
    assert signed.mac == expected and outcome_mac(SECRET, signed) == expected  # the mac itself is not covered
    assert Outcome.from_json(signed.to_json()) == signed and outcome_verified(SECRET, Outcome.from_json(signed.to_json()))
    assert canonical_outcome(Outcome(1, "failed", error="naïve \u2028 \"x\"")).isascii()


def _image(i: int, **change) -> tuple[StoredImage, ...]:
    images = list(IMAGES)
    images[i] = dataclasses.replace(images[i], **change)
    return tuple(images)


@pytest.mark.parametrize("change", [
    {"job_id": 6}, {"attempt": 3}, {"status": "failed"}, {"request_digest": "0123456789abcdee"},
    {"request_digest": ""}, {"timeline_object": None}, {"timeline_object": "5/ab/other.webp"}, {"error": "x"},
    {"images": IMAGES[:1]}, {"images": IMAGES[::-1]}, {"images": ()},
    {"images": _image(0, index=2)}, {"images": _image(0, seed=12)}, {"images": _image(1, size=2001)},
    {"images": _image(1, sha256="c" * 64)}, {"images": _image(0, object="6/ab/0.png")}, {"images": _image(1, nsfw=False)},
])
def test_changing_any_covered_field_breaks_the_signature(change):
    signed = sign_outcome(SECRET, OUTCOME)
    assert outcome_verified(SECRET, signed)
    assert not outcome_verified(SECRET, dataclasses.replace(signed, **change))


def test_what_is_only_shown_is_not_covered():
    signed = sign_outcome(SECRET, OUTCOME)
    shown = dataclasses.replace(signed, worker="w2", model="m", device="cuda", timings={})
    assert outcome_verified(SECRET, shown)


def test_no_wrong_or_other_signature_verifies():
    signed = sign_outcome(SECRET, OUTCOME)
    assert not outcome_verified(SECRET, OUTCOME)  # unsigned
    assert not outcome_verified(bytes(32), signed)  # another job's secret
    assert not outcome_verified(b"", signed) and not outcome_verified(None, signed)
    assert not outcome_verified(SECRET, dataclasses.replace(signed, mac="0" * 64))
    assert sign_outcome(b"", OUTCOME) == OUTCOME  # nothing to sign with: left unsigned
    with pytest.raises(ValueError):
        outcome_mac(b"", OUTCOME)


@pytest.mark.parametrize("mac", ["zz", "A" * 64, "a" * 63, "a" * 65, 5])
def test_a_mac_that_is_not_64_lowercase_hex_digits_refuses_the_outcome(mac):
    raw = json.dumps(json.loads(OUTCOME.to_json()) | {"mac": mac})
    with pytest.raises(MessageError, match="mac"):
        Outcome.from_json(raw)


def test_the_job_secret_travels_as_base64_of_32_bytes_and_is_never_shown():
    msg = JobMessage(5, {"prompt": "x"}, "0123456789abcdef", None, SECRET)
    assert JobMessage.from_json(msg.to_json()) == msg
    assert SECRET.hex() not in repr(msg) and repr(SECRET) not in repr(msg) and "secret" not in repr(msg)
    assert JobMessage.from_json(b'{"job_id":5,"request":{}}').secret == b""  # a bot that sends none
    for bad in ('"c2hvcnQ="', '"not base64!"', "5", "null", '"' + "A" * 44 + '"'):
        with pytest.raises(MessageError, match="secret"):
            JobMessage.from_json(f'{{"job_id":5,"request":{{}},"secret":{bad}}}')


# --- progress events ----------------------------------------------------------------------------------------------
STEP = ProgressEvent(5, "step", 3, 20, b"\x89PNG preview", "w1", 2)


def test_the_progress_canonical_form_is_stable_and_covers_the_preview_by_its_hash():
    preview = hashlib.sha256(b"\x89PNG preview").hexdigest()
    assert canonical_progress(STEP) == f'["imaginebot-progress-v1",5,2,"step",3,20,"w1","{preview}"]'.encode()
    assert canonical_progress(ProgressEvent(5, "started", total=20)).endswith(b',""]')
    signed = sign_progress(SECRET, STEP)
    assert signed.mac == hmac.new(SECRET, canonical_progress(STEP), hashlib.sha256).hexdigest() == progress_mac(SECRET, signed)
    assert progress_verified(SECRET, ProgressEvent.from_json(signed.to_json()))


@pytest.mark.parametrize("change", [
    {"job_id": 6}, {"attempt": 3}, {"kind": "released"}, {"step": 4}, {"total": 21}, {"worker": "w2"},
    {"preview": b"\x89PNG other"}, {"preview": None},
])
def test_changing_any_field_of_a_progress_event_breaks_its_signature(change):
    signed = sign_progress(SECRET, STEP)
    assert not progress_verified(SECRET, dataclasses.replace(signed, **change))


def test_a_progress_signature_is_neither_an_outcomes_nor_another_jobs():
    signed = sign_progress(SECRET, STEP)
    assert not progress_verified(SECRET, STEP) and not progress_verified(bytes(32), signed)
    assert not progress_verified(None, signed) and sign_progress(b"", STEP) == STEP
    # The labels keep the two kinds apart even for a secret both know.
    assert canonical_progress(STEP)[:26] != canonical_outcome(OUTCOME)[:26]
    with pytest.raises(MessageError, match="mac"):
        ProgressEvent.from_json(json.dumps(json.loads(STEP.to_json()) | {"mac": "A" * 64}))
