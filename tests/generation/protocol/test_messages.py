"""Queue messages: JSON round trips, the wire shape, strict parsing, and refused messages dropped (with the reason
logged) by real subscriptions against a real nats-server."""

from __future__ import annotations

import asyncio
import base64
import json
import logging

import pytest

from generation.protocol.messages import (
    JobMessage,
    MaxDeliveries,
    MessageError,
    Outcome,
    ProgressEvent,
    StoredImage,
    WorkerInfo,
)
from tests.generation.protocol.test_queue import CountingEngine, next_outcome, req, start_worker, stop_worker
from tests.support.natsutil import connect, nats_server_fixture  # noqa: F401

QUEUE_LOG = "generation.protocol.queue"

OUTCOME = Outcome(
    7, "succeeded", (StoredImage(0, 42, "7/ab/0.png", 1234, "ff" * 32, nsfw=True),), "7/ab/timeline.webp",
    worker="w1", model="tiny", device="cpu", attempt=2, timings={"run": 1.25, "queue": 0.5}, request_digest="abcd",
)
PROGRESS = ProgressEvent(3, "step", 2, 10, bytes(range(256)), "w", 2)
INFO = WorkerInfo("w", "fake", "fake", "ready", device="cpu", host="h", pid=12, jobs=(1, 2), max_batch=4,
                  load_seconds=1.5, sent_at=1700000000.25)
JOB = JobMessage(5, {"prompt": "a cat", "steps": 3, "init_image": None}, "0123456789abcdef", "input/5")

ALL = [OUTCOME, PROGRESS, INFO, JOB, MaxDeliveries(17, 3, "workers-_default"), OUTCOME.images[0]]


def wire(message) -> dict:
    return json.loads(message.to_json())


@pytest.mark.parametrize("message", ALL, ids=lambda m: type(m).__name__)
def test_every_message_survives_json(message):
    """Each message type comes back equal from its JSON."""
    assert type(message).from_json(message.to_json()) == message
    assert type(message).from_json(message.to_json().decode()) == message


def test_the_wire_shape_is_unchanged():
    """Field names as keys, tuples as arrays, bytes as standard padded base64, no extra keys."""
    assert wire(PROGRESS) == {"job_id": 3, "kind": "step", "step": 2, "total": 10,
                              "preview": base64.b64encode(bytes(range(256))).decode(), "worker": "w", "attempt": 2,
                              "mac": ""}
    assert "+" in wire(PROGRESS)["preview"] and "/" in wire(PROGRESS)["preview"]  # not the URL-safe alphabet
    assert wire(ProgressEvent(3, "started"))["preview"] is None
    out = wire(OUTCOME)
    assert out["images"] == [{"index": 0, "seed": 42, "object": "7/ab/0.png", "size": 1234, "sha256": "ff" * 32,
                              "nsfw": True}]
    assert out["timings"] == {"run": 1.25, "queue": 0.5} and out["timeline_object"] == "7/ab/timeline.webp"
    assert wire(INFO)["jobs"] == [1, 2]
    assert wire(JOB) == {"job_id": 5, "request": {"prompt": "a cat", "steps": 3, "init_image": None},
                         "digest": "0123456789abcdef", "init_object": "input/5", "secret": ""}
    # The job's secret travels as standard base64; an outcome's signature as 64 lowercase hex digits ("" unsigned).
    assert wire(JobMessage(5, {}, secret=bytes(range(32))))["secret"] == base64.b64encode(bytes(range(32))).decode()
    assert out["mac"] == ""


def test_messages_written_by_hand_the_old_way_are_read():
    """JSON built with json.dumps (as the previous version wrote it) parses, ints accepted where floats are wanted."""
    old = {"job_id": 3, "kind": "step", "step": 2, "total": 10, "preview": base64.b64encode(b"\x89PNG").decode(),
           "worker": "w", "attempt": 1}
    assert ProgressEvent.from_json(json.dumps(old)).preview == b"\x89PNG"
    info = dict(wire(INFO), load_seconds=2, sent_at=1700000000)
    assert WorkerInfo.from_json(json.dumps(info)).load_seconds == 2.0
    assert Outcome.from_json(json.dumps({"job_id": 1, "status": "failed", "error": "no"})) == Outcome(1, "failed",
                                                                                                    error="no")


@pytest.mark.parametrize("message", ALL, ids=lambda m: type(m).__name__)
def test_an_unknown_field_is_refused(message):
    """A field the type does not have refuses the message, naming the field."""
    data = json.dumps(wire(message) | {"colour": "red"})
    with pytest.raises(MessageError) as e:
        type(message).from_json(data)
    assert e.value.message_type == type(message).__name__
    assert str(e.value) == f"{type(message).__name__}: field `colour`: unknown field"


def test_a_worker_announcement_with_more_fields_is_refused():
    """WorkerInfo used to drop unknown keys silently; now it refuses them like every other message."""
    with pytest.raises(MessageError, match="field `gpu_temperature`: unknown field"):
        WorkerInfo.from_json(json.dumps(wire(INFO) | {"gpu_temperature": 71}))


MISTYPED = [
    (PROGRESS, {"job_id": "3"}, "job_id", "valid integer"),
    (PROGRESS, {"step": 2.0}, "step", "valid integer"),
    (PROGRESS, {"step": 2.5}, "step", "valid integer"),
    (PROGRESS, {"attempt": True}, "attempt", "valid integer"),
    (PROGRESS, {"preview": "not base64!"}, "preview", "base64"),
    (PROGRESS, {"preview": "AAA"}, "preview", "base64"),  # unpadded
    (PROGRESS, {"preview": "-_-_"}, "preview", "base64"),  # URL-safe alphabet
    (PROGRESS, {"preview": [1, 2]}, "preview", "base64"),
    (PROGRESS, {"kind": "finished"}, "kind", "'started', 'loading', 'step' or 'released'"),
    (OUTCOME, {"status": "done"}, "status", "'succeeded', 'failed' or 'cancelled'"),
    (OUTCOME, {"job_id": True}, "job_id", "valid integer"),
    (OUTCOME, {"error": None}, "error", "valid string"),
    (OUTCOME, {"timings": {"run": "1.5"}}, "timings.run", "valid number"),
    (OUTCOME, {"images": [{"index": 0}]}, "images[0].seed", "missing"),
    (OUTCOME, {"images": [wire(OUTCOME)["images"][0] | {"nsfw": 1}]}, "images[0].nsfw", "valid boolean"),
    (INFO, {"pid": True}, "pid", "valid integer"),
    (INFO, {"jobs": ["1"]}, "jobs[0]", "valid integer"),
    (INFO, {"serves_default": "yes"}, "serves_default", "valid boolean"),
    (INFO, {"state": "sleeping"}, "state", "'loading'"),
    (INFO, {"max_batch": 4.0}, "max_batch", "valid integer"),
    (JOB, {"job_id": "5"}, "job_id", "valid integer"),
    (JOB, {"request": "a cat"}, "request", "an object"),
    (JOB, {"digest": 5}, "digest", "valid string"),
    (JOB, {"init_object": 5}, "init_object", "valid string"),
]


@pytest.mark.parametrize(("message", "change", "field", "problem"), MISTYPED,
                         ids=[f"{type(m).__name__}-{f}-{i}" for i, (m, _, f, _) in enumerate(MISTYPED)])
def test_a_mistyped_field_is_refused(message, change, field, problem):
    """No coercion: a string job id, a float step, a bool count, bad base64, a status or kind not in the list, a
    null string... each refuses the message with the type, the field and what was wrong."""
    with pytest.raises(MessageError) as e:
        type(message).from_json(json.dumps(wire(message) | change))
    text = str(e.value)
    assert text.startswith(f"{type(message).__name__}: field `{field}`: "), text
    assert problem in text


@pytest.mark.parametrize("data", [b"", b"nope", b"\xff\xfe", b"[]", b"3", b"null"])
def test_what_is_not_a_json_object_is_refused(data):
    with pytest.raises(MessageError, match=r"^Outcome: "):
        Outcome.from_json(data)


def test_a_missing_field_is_refused():
    with pytest.raises(MessageError, match=r"^WorkerInfo: field `state`: missing$"):
        WorkerInfo.from_json(json.dumps({k: v for k, v in wire(INFO).items() if k != "state"}))


def test_building_a_mistyped_message_fails_at_the_sender():
    """The constructors are strict too, so a sender's bug shows where it is made."""
    with pytest.raises(ValueError):
        ProgressEvent("3", "step")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        ProgressEvent(3, "step", preview="abc")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Outcome(1, "done")  # type: ignore[arg-type]


def test_max_deliveries_advisory_takes_only_what_it_needs():
    """The server's advisory says more than we read; those extra keys are the server's business, ours are strict."""
    advisory = {"type": "io.nats.jetstream.advisory.v1.max_deliver", "id": "x", "timestamp": "2024-01-01T00:00:00Z",
                "stream": "IMAGINE_JOBS", "consumer": "workers-_default", "stream_seq": 17, "deliveries": 3}
    assert MaxDeliveries.from_advisory(json.dumps(advisory)) == MaxDeliveries(17, 3, "workers-_default")
    assert MaxDeliveries.from_advisory(b'{"stream_seq": 4}') == MaxDeliveries(4)
    for bad, why in [({"stream_seq": "17"}, "field `stream_seq`"), ({"deliveries": 3}, "field `stream_seq`: missing"),
                     ([17], "object")]:
        with pytest.raises(MessageError, match=why):
            MaxDeliveries.from_advisory(json.dumps(bad))
    with pytest.raises(MessageError, match="JSON"):
        MaxDeliveries.from_advisory(b"{")


# --- refused messages on a real server -------------------------------------------------------------------------------
async def wait_for(condition, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.02)


def refusals(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == QUEUE_LOG and "could not be read" in r.getMessage()]


async def test_a_malformed_announcement_is_dropped_and_logged(nats_server, caplog):
    """A worker announcement with an unknown field and one with a mistyped field never reach the callback; the log
    says which field and why. A repeat of the same mistake is logged once as a warning."""
    caplog.set_level(logging.DEBUG, logger=QUEUE_LOG)
    q = await connect(nats_server)
    sender = await connect(nats_server, name="sender")
    got: list[WorkerInfo] = []

    async def on_info(info: WorkerInfo) -> None:
        got.append(info)

    await q.subscribe_workers(on_info)
    await q.nc.flush()
    subject = q.config.worker_subject("rogue")
    await sender.nc.publish(subject, json.dumps(wire(INFO) | {"gpu_temperature": 71}).encode())
    await sender.nc.publish(subject, json.dumps(wire(INFO) | {"gpu_temperature": 71}).encode())
    await sender.nc.publish(subject, json.dumps(wire(INFO) | {"pid": "12"}).encode())
    await sender.announce(INFO)  # a good one last: once it arrives, the bad ones were handled
    await sender.nc.flush()
    await wait_for(lambda: got)
    await asyncio.sleep(0.1)
    assert got == [INFO]
    records = refusals(caplog)
    assert [r.levelno for r in records] == [logging.WARNING, logging.DEBUG, logging.WARNING]
    assert subject in records[0].getMessage()
    assert "WorkerInfo: field `gpu_temperature`: unknown field" in records[0].getMessage()
    assert "WorkerInfo: field `pid`: Input should be a valid integer (got '12')" in records[2].getMessage()
    await sender.close()
    await q.close()


async def test_a_malformed_progress_event_is_dropped_and_logged(nats_server, caplog):
    """A progress event whose preview is not base64 is dropped with the reason; the next good one goes through."""
    caplog.set_level(logging.WARNING, logger=QUEUE_LOG)
    q = await connect(nats_server)
    got: list[ProgressEvent] = []

    async def on_progress(ev: ProgressEvent) -> None:
        got.append(ev)

    await q.subscribe_progress(on_progress)
    await q.nc.flush()
    await q.nc.publish(q.config.progress_subject(3), json.dumps(wire(PROGRESS) | {"preview": "%%%"}).encode())
    await q.nc.publish(q.config.progress_subject(3), json.dumps(wire(PROGRESS) | {"step": 2.0}).encode())
    await q.publish_progress(PROGRESS)
    await wait_for(lambda: got)
    await asyncio.sleep(0.1)
    assert got == [PROGRESS]
    text = caplog.text
    assert "ProgressEvent: field `preview`: Input should be valid base64" in text
    assert "ProgressEvent: field `step`: Input should be a valid integer (got 2.0)" in text
    await q.close()


async def test_a_malformed_outcome_is_dropped_and_logged(nats_server, caplog):
    """An outcome in the results stream that does not parse: `parse_result_message` and `get_outcome` give None
    (nothing to act on) and log why, instead of raising or handing over a half-read outcome."""
    caplog.set_level(logging.WARNING, logger=QUEUE_LOG)
    q = await connect(nats_server)
    sub = await q.results_subscription()
    bad = json.dumps(wire(Outcome(8, "succeeded")) | {"status": "done"}).encode()
    await q.js.publish(q.config.result_subject(8), bad, stream=q.config.results_stream)
    await q.publish_outcome(Outcome(9, "failed", error="no"))
    msgs = await sub.fetch(2, timeout=5)
    parsed = [q.parse_result_message(m) for m in msgs]
    assert parsed == [None, Outcome(9, "failed", error="no")]
    assert await q.get_outcome(8) is None
    assert await q.get_outcome(9) == Outcome(9, "failed", error="no")
    assert "Outcome: field `status`: Input should be 'succeeded', 'failed' or 'cancelled' (got 'done')" in caplog.text
    assert q.config.result_subject(8) in caplog.text
    await q.close()


async def test_an_unreadable_job_envelope_fails_the_job_with_the_reason(nats_server, caplog):
    """A job message whose envelope is mistyped (a string job id) fails the job named by its header, at once, with
    the reason; the engine never sees it."""
    caplog.set_level(logging.WARNING, logger="generation.worker")
    q = await connect(nats_server)
    sub = await q.results_subscription()
    payload = json.dumps({"job_id": "9", "request": req().to_dict(), "digest": "", "init_object": None}).encode()
    await q.js.publish(q.config.job_subject("_default", 9), payload, headers={"Nats-Msg-Id": "9", "Imagine-Job": "9"})
    engine = CountingEngine(0.01)
    w, task, wq = await start_worker(nats_server, engine)
    out = await next_outcome(sub, q)
    assert out.job_id == 9 and out.status == "failed" and out.attempt == 1
    assert "could not be read" in out.error and "field `job_id`: Input should be a valid integer" in out.error
    assert engine.calls == []
    assert "job 9: its job message could not be read: JobMessage: field `job_id`" in caplog.text
    await stop_worker(w, task, wq)
    await q.close()


async def test_a_job_with_a_source_image_still_round_trips(nats_server):
    """The request travels as a raw dict; its source image goes through the object store and comes back."""
    q = await connect(nats_server)
    request = req(mode="variation", init_image=b"\x89PNG source", strength=0.5)
    await q.publish_job(21, request)
    sub = await q.job_subscription("_default")
    [msg] = await sub.fetch(1, timeout=5)
    message = JobMessage.from_json(msg.data)
    assert message.job_id == 21 and message.init_object == "input/21"
    assert message.request["init_image"] is None and message.request["prompt"] == request.prompt
    assert await q.get_object("input/21") == b"\x89PNG source"
    await msg.ack()
    await q.close()
