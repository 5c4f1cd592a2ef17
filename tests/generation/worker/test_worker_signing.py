"""A worker process (fake engine) signs each outcome with its job's secret, never logs the secret, and is not made
to skip a job by an outcome someone planted for it."""

from __future__ import annotations

import asyncio
import base64
import secrets
import time

from generation.protocol.contract import GenerationRequest
from generation.protocol.queue import Outcome, request_digest
from generation.protocol.signing import outcome_verified
from tests.support.natsutil import FAST, WorkerProcess, connect, nats_server_fixture, outcome_of  # noqa: F401


async def signed_outcome_of(q, job_id: int, timeout: float = 60.0) -> Outcome:
    """The job's stored outcome once it is a signed one (the planted one comes first)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = await q.get_outcome(job_id)
        if out is not None and out.mac:
            return out
        await asyncio.sleep(0.02)
    raise AssertionError(f"no signed outcome for job {job_id}")


def req(prompt: str) -> GenerationRequest:
    return GenerationRequest(prompt=prompt, steps=3, width=64, height=64, num_images=1, seed=5)


async def test_the_worker_signs_with_the_jobs_secret_and_ignores_a_planted_outcome(nats_server, tmp_path):
    q = await connect(nats_server)
    one, two = secrets.token_bytes(32), secrets.token_bytes(32)
    # Planted before the job runs, under the plain message id an unsigned outcome gets: it must neither make the
    # worker skip the job nor make the server drop the real outcome as a duplicate.
    await q.publish_outcome(Outcome(2, "succeeded", request_digest=request_digest(req("two"))))
    w = WorkerProcess(nats_server.url, tmp_path, "signer", "--fake-engine", "0.01")
    try:
        await q.publish_job(1, req("one"), secret=one)
        await q.publish_job(2, req("two"), secret=two)
        out1 = await outcome_of(q, 1)
        out2 = await signed_outcome_of(q, 2)
        assert out1.status == out2.status == "succeeded" and out2.images
        assert outcome_verified(one, out1) and outcome_verified(two, out2)
        assert not outcome_verified(two, out1) and not outcome_verified(one, out2)
        assert out1.request_digest == request_digest(req("one"))
        await q.publish_job(3, req("three"))  # a job message with no secret: the outcome goes unsigned
        out3 = await outcome_of(q, 3)
        assert out3.status == "succeeded" and out3.mac == ""
    finally:
        await q.close()
        assert w.stop() == 0
    log = w.log()
    for secret in (one, two):
        assert secret.hex() not in log and base64.b64encode(secret).decode() not in log and repr(secret) not in log
