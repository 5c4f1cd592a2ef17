"""Someone who can reach the NATS port: forged outcomes and progress events, poisoned result messages, a deleted
stream, and an image file changed on the bot's disk. Real nats-server, the real dispatcher with the real SQLite
services (in the test process, or in a child process where memory is measured), the real bot in simcord for /show.

Each test asserts that the job concerned ends failed and refunded (or goes through) with a reason that quotes nothing
of the attacker's message, that nothing is posted for it, and that the other jobs are not held up."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import sqlite3
import struct
import subprocess
import sys
import zlib

import pytest
from PIL import Image, ImageFile

from bot.dispatch.recorder import GIVEN_UP, MISMATCH, MISSING, RETRY
from generation.protocol.queue import JobQueue, Outcome, ProgressEvent, QueueConfig, StoredImage, WorkerInfo
from generation.protocol.signing import sign_outcome, sign_progress
from tests.support.faultkit import FAST, DispatchWorld, wait_until
from tests.support.natsutil import REPO

pytestmark = pytest.mark.slow

#: The side of the forged image: 81 million pixels, 81 MB to decode in grey, 243 MB once made RGB for a grid.
BOMB_SIDE = 9000


# --- the attacker's tools ------------------------------------------------------------------------------------------
def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(side: int = BOMB_SIDE) -> bytes:
    """A valid 8-bit greyscale PNG of side × side pixels of one colour, made row by row with zlib (nothing of its
    size is ever held in memory): about 77 KiB for 9000 × 9000."""
    packer = zlib.compressobj(9)
    row = b"\0" * (side + 1)  # filter byte 0, then black pixels
    idat = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def png(size: tuple[int, int] = (64, 64), color=(10, 200, 10)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="PNG")
    return out.getvalue()


async def attacker(url: str, config: QueueConfig = FAST) -> JobQueue:
    return await JobQueue.connect(url, config, name="attacker")


async def forge_outcome(q: JobQueue, job_id: int, images: dict[int, bytes | None], *, digest: str = "",
                        worker: str = "evil\nworker", secret: bytes = b"", mac: str = "") -> None:
    """Publish a succeeded outcome for `job_id` whose image `i` is `images[i]` put in the object store (None: an
    object name that is not there), signed with `secret` when given (an attacker who has the job's secret: the
    outcome is the job's as far as the bot can tell), or carrying `mac` as it is."""
    stored = []
    for index, data in images.items():
        name = f"forged/{job_id}/{index}.png"
        if data is not None:
            await q.put_object(name, data)
        blob = data or b"gone"
        stored.append(StoredImage(index, 1, name, len(blob), hashlib.sha256(blob).hexdigest()))
    out = Outcome(job_id, "succeeded", images=tuple(stored), worker=worker, request_digest=digest, mac=mac)
    await q.publish_outcome(sign_outcome(secret, out) if secret else out)


async def secret_of(world: DispatchWorld, job_id: int) -> bytes:
    return (await world.services.jobs.get(job_id)).secret


async def signed(world: DispatchWorld, out: Outcome) -> Outcome:
    """An outcome as the job's worker sends it: with its job's request digest, signed with the job's secret."""
    digest = await digest_of(world, out.job_id)
    return sign_outcome(await secret_of(world, out.job_id), dataclasses.replace(out, request_digest=digest))


async def digest_of(world: DispatchWorld, job_id: int) -> str:
    from generation.protocol.queue import request_digest

    return request_digest((await world.services.jobs.get(job_id)).request)


@pytest.fixture
async def world(tmp_path, migrated_template, nats_server):
    w = DispatchWorld(tmp_path, migrated_template, nats_server.url)
    await w.start()
    try:
        yield w
    finally:
        await w.close()


# --- a forged outcome with a decompression bomb --------------------------------------------------------------------
CHILD = r"""
import asyncio, json, logging, resource, sys
from pathlib import Path

from PIL import ImageFile

from bot.ui.images import limit_pillow

limit_pillow()  # as `python -m bot` does at start
loads = []
_load = ImageFile.ImageFile.load


def counting_load(self):
    loads.append(self.size)
    return _load(self)


ImageFile.ImageFile.load = counting_load
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")


def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def main(url, tmp, template):
    from tests.hardening.test_attacker import attacker, bomb_png, digest_of, forge_outcome, secret_of
    from tests.support.faultkit import DispatchWorld, wait_until

    world = DispatchWorld(Path(tmp), Path(template), url)
    await world.start()
    try:
        (job_id,) = await world.submit(1, steps=4)  # 64x64, one image; no worker takes it
        bomb = bomb_png()
        q = await attacker(url)
        before = peak_mb()
        await forge_outcome(q, job_id, {0: bomb}, digest=await digest_of(world, job_id),
                            secret=await secret_of(world, job_id))
        await wait_until(lambda: world.rows([job_id])[job_id]["status"] != "queued", 30, 0.05, "the outcome")
        await asyncio.sleep(0.5)
        await world.dispatcher.drain_listeners()
        after = peak_mb()
        row = world.rows([job_id])[job_id]
        await q.close()
        print(json.dumps({"job": job_id, "bytes": len(bomb), "before_mb": before, "after_mb": after,
                          "loads": loads, "row": {k: row[k] for k in ("status", "charge_state", "error")},
                          "posts": sum(world.listener.posts.values()),
                          "files": sorted(p.name for p in (Path(tmp) / "data").rglob("*.png"))}))
    finally:
        await world.close()


asyncio.run(main(*sys.argv[1:4]))
"""


def test_a_forged_outcome_with_a_huge_image_header_is_refused_before_decoding(tmp_path, migrated_template,
                                                                                nats_server, reliability):
    """The header of the forged image says 9000×9000 (a 77 KiB PNG): the bot refuses it from its header, decodes
    nothing, fails and refunds the job with a reason that quotes nothing of the outcome, posts nothing, keeps no file,
    logs one line (the attacker's worker name as a short repr), and its peak memory grows by less than 200 MB.
    Measured in a child process: its peak RSS is its own."""
    assert 70_000 < len(bomb_png()) < 85_000
    done = subprocess.run([sys.executable, "-c", CHILD, nats_server.url, str(tmp_path), str(migrated_template)],
                          cwd=REPO, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-4000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    grew = got["after_mb"] - got["before_mb"]
    print(f"forged {got['bytes']} bytes: peak RSS {got['before_mb']:.0f} MB -> {got['after_mb']:.0f} MB; {got['row']}")
    refused = [line for line in done.stderr.splitlines() if f"job {got['job']} failed" in line]
    ok = (got["loads"] == [] and got["row"] == {"status": "failed", "charge_state": "refunded", "error": MISMATCH + RETRY}
          and got["posts"] == 0 and got["files"] == [] and grew < 200 and len(refused) == 1)
    reliability.record("forged outcome: 9000x9000 PNG header (77 KiB)", runs=1, failures=int(not ok),
                       note=f"peak RSS +{grew:.0f} MB")
    assert got["loads"] == [], "an image was decoded"
    assert got["row"] == {"status": "failed", "charge_state": "refunded", "error": MISMATCH + RETRY}
    assert got["posts"] == 0 and got["files"] == []
    assert grew < 200, f"peak RSS grew by {grew:.0f} MB"
    assert len(refused) == 1 and "more pixels than the bot decodes" in refused[0], refused
    assert "'evil\\nworker'" in refused[0]  # the attacker's name as a short repr, never a line of its own
    assert not any(line.startswith("worker") for line in done.stderr.splitlines())


async def test_a_forged_outcome_of_the_wrong_size_is_refused_from_its_header(world, monkeypatch, reliability, caplog):
    """Without the bot's Pillow limit (a library default that would decode 81 million pixels), the size check alone
    refuses the 9000×9000 header; a forged image of another plausible size is refused too; an outcome with the
    job's own size still goes through. Nothing is decoded."""
    loads = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: loads.append(self.size))
    ids = await world.submit(3, steps=4)
    q = await attacker(world.url)
    try:
        with caplog.at_level(logging.INFO, logger="bot.dispatch"):
            await forge_outcome(q, ids[0], {0: bomb_png()}, digest=await digest_of(world, ids[0]),
                                secret=await secret_of(world, ids[0]))
            await forge_outcome(q, ids[1], {0: png((128, 128))}, digest=await digest_of(world, ids[1]),
                                secret=await secret_of(world, ids[1]))
            await forge_outcome(q, ids[2], {0: png((64, 64))}, digest=await digest_of(world, ids[2]),
                                secret=await secret_of(world, ids[2]))
            tally = await world.settle(timeout=30)
    finally:
        await q.close()
    rows = world.rows(ids)
    assert [rows[i]["status"] for i in ids] == ["failed", "failed", "posted"], rows
    assert {rows[i]["error"] for i in ids[:2]} == {MISMATCH + RETRY}
    assert {rows[i]["charge_state"] for i in ids[:2]} == {"refunded"} and tally.lost == [] and tally.duplicated == []
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and "failed" in r.getMessage()]
    assert any("header states 9000x9000" in line for line in lines) and any("128x128" in line for line in lines)
    assert loads == []
    reliability.record("forged outcomes: image header of another size than the job", runs=3,
                       failures=int(loads != []), lost=len(tally.lost), duplicated=len(tally.duplicated))


async def test_an_object_is_held_to_its_stated_size_and_to_the_cap(nats_server, reliability):
    """The object store's info of an object states its size: above the cap nothing is fetched; an info that
    understates the size (someone rewrote it) stops the read at the stated size."""
    import base64

    from generation.protocol.queue import ObjectTooLarge

    q = await attacker(nats_server.url)
    try:
        data = bytes(range(256)) * 1200  # 300 KiB: three chunks
        await q.put_object("big", data)
        assert await q.get_object("big", max_size=len(data)) == data
        with pytest.raises(ObjectTooLarge):
            await q.get_object("big", max_size=len(data) - 1)
        bucket = q.config.images_bucket
        meta = f"$O.{bucket}.M.{base64.urlsafe_b64encode(b'big').decode()}"
        info = json.loads((await q.js.get_last_msg(f"OBJ_{bucket}", meta)).data)
        await q.js.publish(meta, json.dumps(info | {"size": 1000}).encode(), headers={"Nats-Rollup": "sub"})
        with pytest.raises(ObjectTooLarge):
            await q.get_object("big", max_size=32 * 1024 * 1024)
        assert len(q.nc._subs) <= 2  # the chunk subscription was closed
    finally:
        await q.close()
    reliability.record("object store: object larger than stated or than the cap", runs=2)


# --- poison: a missing object at restart, a message that always fails ----------------------------------------------
async def test_an_outcome_naming_a_missing_object_does_not_stop_a_restart(tmp_path, migrated_template, nats_server,
                                                                          caplog, reliability):
    """While the bot is down three outcomes arrive: one whose image is there, one naming an object that is not there,
    one that failed. `reconcile()` at start completes: the first job is posted, the second failed and refunded (one
    log line), the third failed; afterwards nothing is handed out again."""
    world = DispatchWorld(tmp_path, migrated_template, nats_server.url)
    try:
        jobs = [await world.services.jobs.create(1000, 2000, 1, [], prompt=f"job {n}", steps=4, width=64, height=64,
                                                 num_images=1) for n in range(3)]
        ok, missing, failed = (j.id for j in jobs)
        world.created.extend([ok, missing, failed])
        q = await attacker(world.url)
        await forge_outcome(q, ok, {0: png()}, digest=await digest_of(world, ok), worker="w1",
                            secret=await secret_of(world, ok))
        await forge_outcome(q, missing, {0: None}, digest=await digest_of(world, missing), worker="w1",
                            secret=await secret_of(world, missing))
        await q.publish_outcome(await signed(world, Outcome(failed, "failed", error="out of memory", worker="w1")))
        with caplog.at_level(logging.INFO, logger="bot.dispatch"):
            report = await asyncio.wait_for(world.dispatcher.start(listener=world.listener), 60)
            tally = await world.settle(timeout=30)
        assert report is not None and sorted(report.collected) == sorted([ok, missing, failed]) and not report.errors
        rows = world.rows([ok, missing, failed])
        assert rows[ok]["status"] == "posted" and world.listener.posts[ok] == 1
        assert (rows[missing]["status"], rows[missing]["charge_state"], rows[missing]["error"]) == (
            "failed", "refunded", MISSING + RETRY)
        assert rows[failed]["status"] == "failed" and rows[failed]["charge_state"] == "refunded"
        lines = [r.getMessage() for r in caplog.records if f"job {missing} " in r.getMessage()
                 and r.levelno >= logging.WARNING]
        assert len(lines) == 1 and "no object" in lines[0], lines
        # The results consumer reads the same three messages after reconcile: each is acked, none comes back.
        await asyncio.sleep(1.0)
        info = await q.js.consumer_info(world.config.results_stream, world.dispatcher.results_durable)
        assert info.num_ack_pending == 0 and info.num_pending == 0 and info.num_redelivered == 0
        await q.close()
    finally:
        await world.close()
    reliability.record("restart with an outcome naming a missing object", runs=1, lost=len(tally.lost),
                       duplicated=len(tally.duplicated), note="3 jobs")
    assert tally.lost == [] and tally.duplicated == [], str(tally)


async def test_a_poisoned_results_message_is_given_up_after_its_max_deliveries(tmp_path, migrated_template,
                                                                                 nats_server, caplog, reliability):
    """Handling one outcome always fails (here: a bug for that job). The consumer hands it out `results_max_deliver`
    times, then the bot gives it up: one ERROR dead-letter line with the subject and the job id, the job failed and
    refunded, the message terminated (never handed out again). Other outcomes go through meanwhile."""
    config = QueueConfig(ack_wait=2.0, max_deliver=3, duplicate_window=60.0, results_max_deliver=3)
    world = DispatchWorld(tmp_path, migrated_template, nats_server.url, config=config)
    recorder = world.dispatcher.recorder
    recorder.retry_delays = (0.05,)
    try:
        await world.start()
        poisoned, other = await world.submit(2, steps=4)
        handled: list[int] = []
        real = recorder._record

        async def record(out):
            handled.append(out.job_id)
            if out.job_id == poisoned:
                raise RuntimeError("a bug that hits this job only")
            return await real(out)

        recorder._record = record
        q = await attacker(world.url, config)
        with caplog.at_level(logging.WARNING, logger="bot.dispatch"):
            await q.publish_outcome(await signed(world, Outcome(poisoned, "failed", error="x", worker="w1")))
            await q.publish_outcome(await signed(world, Outcome(other, "failed", error="y", worker="w1")))
            await wait_until(lambda: world.rows([poisoned])[poisoned]["status"] == "failed", 30, 0.05, "the give-up")
            await asyncio.sleep(1.0)  # it would come again by now
        info = await q.js.consumer_info(config.results_stream, world.dispatcher.results_durable)
        await q.close()
    finally:
        await world.close()
    rows = world.rows([poisoned, other])
    dead = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR and "dead letter" in r.getMessage()]
    ok = (handled.count(poisoned) == 3 and rows[poisoned]["error"] == GIVEN_UP + RETRY
          and rows[poisoned]["charge_state"] == "refunded" and rows[other]["status"] == "failed" and len(dead) == 1)
    reliability.record("results message that always fails: given up after max deliveries", runs=1,
                       failures=int(not ok))
    assert handled.count(poisoned) == 3, handled
    assert (rows[poisoned]["status"], rows[poisoned]["charge_state"], rows[poisoned]["error"]) == (
        "failed", "refunded", GIVEN_UP + RETRY)
    assert rows[other]["status"] == "failed" and rows[other]["error"] == "y"
    assert len(dead) == 1 and f"imagine.results.{poisoned}" in dead[0] and f"(job {poisoned})" in dead[0]
    assert info.num_ack_pending == 0 and info.num_pending == 0


# --- a deleted stream ---------------------------------------------------------------------------------------------
async def test_a_stream_deleted_under_the_running_dispatcher_is_recreated(world, reliability):
    """`nats stream rm` of the job stream and the results stream, and `nats object rm` of the image bucket, while the
    bot runs: the bot creates them again (with the results consumer and the worker's shared consumer), and the next
    job goes through to a post, without a restart of the bot or the worker."""
    worker = world.worker("--fake-engine", "0.02")
    first = await world.submit(1, steps=4)
    await world.settle(first, timeout=60)
    q = await attacker(world.url)
    c = world.config
    for stream in (c.jobs_stream, c.results_stream):
        await q.js.delete_stream(stream)
    await q.js.delete_object_store(c.images_bucket)
    await q.nc.close()
    second = await world.submit(1, steps=4)
    tally = await world.settle(timeout=60)
    reliability.record("job and results streams and image bucket deleted while running", runs=1,
                       lost=len(tally.lost), duplicated=len(tally.duplicated), note="2 jobs")
    assert tally.lost == [] and tally.duplicated == [], f"{tally}\n{world.logs()}"
    assert sorted(tally.delivered) == sorted(first + second)
    assert worker.proc.poll() is None


# --- progress events and announcements for jobs the bot does not run --------------------------------------------
async def test_progress_and_announcements_for_unknown_job_ids_allocate_nothing(world, reliability):
    """300 progress events (every kind, each with a preview) for job ids the bot does not run, and announcements
    listing 1000 such ids: the preview map and every per-job dict stay empty, the registry keeps no such id, and a
    real job's progress still comes through."""
    (real,) = await world.submit(1, steps=4)  # no worker: it waits in the stream
    await wait_until(lambda: world.dispatcher.events.is_active(real), 10, 0.05, "the job to be dispatched")
    q = await attacker(world.url)
    kinds = ["started", "loading", "step", "released"]
    preview = png((32, 32))
    for n in range(300):
        await q.publish_progress(ProgressEvent(100_000 + n, kinds[n % 4], 1, 4, preview, "evil"))
    for _ in range(5):
        await q.announce(WorkerInfo(name="evil", model="", token="_default", state="stopped",
                                    jobs=tuple(range(200_000, 201_000))))
    # A forged event for the real job (no signature, then a preview under a signature made for another one) is
    # dropped; the worker's own signed event comes through (core NATS keeps the order).
    secret = (await world.services.jobs.get(real)).secret
    await q.publish_progress(ProgressEvent(real, "step", 1, 4, preview, "evil"))
    signed_step = sign_progress(secret, ProgressEvent(real, "step", 1, 4, None, "w1"))
    await q.publish_progress(dataclasses.replace(signed_step, preview=preview))
    await q.publish_progress(signed_step)
    await wait_until(lambda: any(e.job_id == real and e.kind == "progress" for e in world.events), 10, 0.05,
                     "the real job's progress")
    await q.close()
    d = world.dispatcher
    leftovers = {
        "previews": d.events._previews, "active": d.events._active - {real}, "watchers": d.events._watchers,
        "started_at": d.recorder._started_at, "locks": d.recorder._locks,
        "announced jobs": d.registry._workers["evil"][0].jobs,
        "events": [e for e in world.events if e.job_id != real],
        "forged previews": [e for e in world.events if e.job_id == real and e.preview is not None],
        "secrets": set(d.recorder._secrets) - {real},
    }
    reliability.record("300 forged progress events and announcements for unknown jobs", runs=1,
                       failures=int(any(leftovers.values())))
    assert not any(leftovers.values()), leftovers


# --- an image file changed on the bot's disk --------------------------------------------------------------------
async def test_show_refuses_an_image_that_does_not_match_its_sha256(tmp_path, migrated_template, reliability):
    """/show reads every image with its recorded sha256: a file changed on disk is not shown, the member is told
    why in words (and nothing of the file), the rest of the answer is there; once the file is right again the grid
    is shown."""
    from bot.exts.account.cog import SHOW_DAMAGED
    from tests.bot.exts.conftest import World

    w = World(tmp_path, migrated_template)
    await w.start()
    try:
        await w.alice.slash(w.art, "imagine", prompt="a red circle")
        job = await w.latest_job()
        await w.finish(job.id)
        job = await w.services.jobs.get(job.id)
        victim = w.settings.data_dir / job.images[1].path
        original = victim.read_bytes()
        victim.write_bytes(png((job.width, job.height), (0, 0, 0)))
        # Posting cached the grid it composed from the verified files; without that cache /show reads every file.
        for cached in (w.settings.data_dir / "images").rglob("*.grid"):
            cached.unlink()
        refused = await w.alice.slash(w.art, "show", job=job.id)
        victim.write_bytes(original)
        shown = await w.alice.slash(w.art, "show", job=job.id)
    finally:
        await w.close()
    embed = refused.response.embeds[0]
    ok = (refused.ephemeral and refused.response.attachments == [] and SHOW_DAMAGED in (embed.description or "")
          and shown.response.attachments[0].filename == f"job{job.id}.png")
    reliability.record("/show of a job whose image file was changed on disk", runs=1, failures=int(not ok))
    assert refused.ephemeral and refused.response.attachments == []
    assert SHOW_DAMAGED in (embed.description or "") and {f.name for f in embed.fields} >= {"Seed"}
    assert shown.response.attachments[0].filename == f"job{job.id}.png"


# --- outcomes the bot can verify (signed with the job's secret) ------------------------------------------------------
def stored_sha256(world: DispatchWorld, job_id: int) -> set[str]:
    with sqlite3.connect(world.db_path, timeout=30) as con:
        return {r[0] for r in con.execute("select sha256 from image where job_id = ?", (job_id,))}


async def test_forged_outcomes_without_the_jobs_signature_are_dropped_and_the_worker_finishes(world, caplog,
                                                                                          reliability):
    """Before any worker runs the job, an attacker publishes for it: a succeeded outcome with no signature (the right
    request digest, under the plain message id `result-<id>` an older worker used), one with a wrong signature, one
    signed with another job's secret (the attacker's own job: its images), and a failed and a cancelled outcome.
    Each is dropped in one log line: nothing posted, the job neither failed nor refunded. Then a real worker (fake
    engine) runs the job and its signed outcome is recorded and posted, once."""
    target, own = await world.submit(2, steps=4)
    digest = await digest_of(world, target)
    forged = png((64, 64), (255, 0, 255))
    q = await attacker(world.url)
    with caplog.at_level(logging.INFO, logger="bot.dispatch"):
        await forge_outcome(q, target, {0: forged}, digest=digest)
        await forge_outcome(q, target, {0: forged}, digest=digest, mac="0" * 64)
        await forge_outcome(q, target, {0: forged}, digest=digest, secret=await secret_of(world, own))
        await q.publish_outcome(Outcome(target, "failed", error="evil\nreason", request_digest=digest, mac="1" * 64))
        await q.publish_outcome(Outcome(target, "cancelled", request_digest=digest, mac="2" * 64))
        await wait_until(lambda: sum(f"job {target}: outcome dropped" in r.getMessage() for r in caplog.records) >= 5,
                         30, 0.05, "the forged outcomes")
        await asyncio.sleep(0.5)
        row = world.rows([target])[target]
        assert (row["status"], row["charge_state"], row["error"]) == ("queued", "reserved", None)
        assert world.listener.posts[target] == 0 and stored_sha256(world, target) == set()
        dropped = [r.getMessage() for r in caplog.records if f"job {target}:" in r.getMessage()]
        # One line each; the attacker's text only as a short repr (the worker's name), never its error text.
        assert len(dropped) == 5 and not any("\n" in line or "reason" in line for line in dropped), dropped
        world.worker()
        tally = await world.settle(timeout=60)
    await q.close()
    rows = world.rows([target, own])
    assert rows[target]["status"] == "posted" and world.listener.posts[target] == 1, world.logs()
    assert rows[own]["status"] == "posted" and world.listener.posts[own] == 1
    assert stored_sha256(world, target) and hashlib.sha256(forged).hexdigest() not in stored_sha256(world, target)
    reliability.record("forged outcomes without the job's signature", runs=1, lost=len(tally.lost),
                       duplicated=len(tally.duplicated), note="5 forgeries, then the real worker")
    assert tally.lost == [] and tally.duplicated == [], str(tally)


async def test_an_outcome_planted_for_a_future_job_id_is_never_accepted(tmp_path, migrated_template, nats_server,
                                                                       caplog, reliability):
    """While the bot is down, an attacker plants outcomes for the next job id: unsigned and signed with a guessed
    secret, with the request digest of the request that job will make. The job is made, and at start `reconcile()`
    reads the planted outcome: it is dropped (the job is neither failed nor posted), the job is fed, and a real worker
    finishes it."""
    world = DispatchWorld(tmp_path, migrated_template, nats_server.url)
    try:
        params = dict(steps=4, width=64, height=64, num_images=1, seed=7)
        first = await world.services.jobs.create(1000, 2000, 1, [], prompt="first", **params)
        future = first.id + 1
        from generation.protocol.contract import GenerationRequest
        from generation.protocol.queue import request_digest

        digest = request_digest(GenerationRequest(prompt="second", **params))
        q = await attacker(world.url)
        forged = png((64, 64), (255, 0, 255))
        await forge_outcome(q, future, {0: forged}, digest=digest)
        await forge_outcome(q, future, {0: forged}, digest=digest, secret=bytes(32))
        second = await world.services.jobs.create(1000, 2000, 1, [], prompt="second", **params)
        assert second.id == future and await digest_of(world, future) == digest
        world.created.extend([first.id, second.id])
        with caplog.at_level(logging.INFO, logger="bot.dispatch"):
            report = await asyncio.wait_for(world.dispatcher.start(listener=world.listener), 60)
            await asyncio.sleep(1.0)
            row = world.rows([future])[future]
            assert row["status"] == "queued" and row["charge_state"] == "reserved" and row["error"] is None
            assert world.listener.posts[future] == 0
            assert any(f"job {future}: outcome dropped" in r.getMessage() for r in caplog.records)
            world.worker()
            tally = await world.settle(timeout=60)
        assert report is not None and not report.errors
        rows = world.rows([first.id, future])
        assert rows[future]["status"] == "posted" and world.listener.posts[future] == 1, world.logs()
        assert rows[first.id]["status"] == "posted"
        assert hashlib.sha256(forged).hexdigest() not in stored_sha256(world, future)
        await q.close()
    finally:
        await world.close()
    reliability.record("an outcome planted for a future job id", runs=1, lost=len(tally.lost),
                       duplicated=len(tally.duplicated), note="2 planted outcomes")
    assert tally.lost == [] and tally.duplicated == [], str(tally)


# --- an authenticated, least-privilege queue (the configuration of `python -m generation.protocol.natsconfig`) -------
@pytest.fixture
def secure_nats(tmp_path):
    from tests.support.securenats import start_secure_nats

    s = start_secure_nats(tmp_path)
    try:
        yield s
    finally:
        s.stop()


async def attempt(q: JobQueue, hint: str, action, timeout: float = 5.0) -> bool:
    """Run `action` (a coroutine function) as identity `q`; True when the server refused it: a permission violation
    naming a subject that contains `hint` (case aside) arrives. The refused call itself never gets an answer."""
    task = asyncio.ensure_future(action())
    try:
        await wait_until(lambda: any(hint.lower() in s.lower() for s in q.denied) or (task.done() and "done"),
                         timeout, 0.02, f"a refusal of {hint}")
    except AssertionError:
        pass
    refused = any(hint.lower() in s.lower() for s in q.denied)
    task.cancel()
    with contextlib.suppress(BaseException):
        await task
    return refused


async def test_an_unauthenticated_client_and_a_wrong_password_are_refused_at_once(secure_nats, reliability):
    """The server written by the project's command: no credentials, a wrong password, the right user with another
    identity's password: each is refused at the first connect (ConnectRefused, in well under the connect timeout),
    with a message that names the server and the settings and quotes no password."""
    import time

    from generation.protocol.queue import ConnectRefused

    tries = [None, secure_nats.auth("bot", password="not-the-password"),
             secure_nats.auth("bot", password=secure_nats.password("worker-1"))]
    refused = 0
    for auth in tries:
        t0 = time.monotonic()
        try:
            q = await JobQueue.connect(secure_nats.url, name="attacker", auth=auth, connect_timeout=30.0)
        except ConnectRefused as e:
            assert time.monotonic() - t0 < 5.0
            assert f"NATS at {secure_nats.url} refused the login (Authorization Violation)" in str(e)
            assert "not-the-password" not in str(e) and secure_nats.password("worker-1") not in str(e)
            refused += 1
        else:
            await q.close()
    reliability.record("queue: unauthenticated client, wrong password, another identity's password", runs=len(tries),
                       failures=len(tries) - refused, note=f"{refused} of {len(tries)} refused")
    assert refused == len(tries)


async def test_the_worker_identity_cannot_queue_jobs_read_results_or_touch_streams(secure_nats, reliability):
    """With the bot's streams and consumers in place and an outcome waiting for the bot, the worker identity tries
    what an attacker holding a worker's credentials would: queue a job, read the bot's results consumer (pull from
    it, make a consumer of its own, subscribe to the results or to the bot's inbox), and delete, purge or change the
    streams. Every try is a permission violation, and nothing changed."""
    from nats.js.api import ConsumerConfig, StreamConfig

    bot = await JobQueue.connect(secure_nats.url, FAST, name="bot", auth=secure_nats.auth("bot"))
    worker = await JobQueue.connect(secure_nats.url, FAST, name="worker", setup=False,
                                    auth=secure_nats.auth("worker-1"))
    try:
        await worker.prepare(wait=10)
        results = await bot.results_subscription()
        await worker.publish_outcome(Outcome(7, "failed", error="waiting for the bot", request_digest="d" * 16))
        js = worker.nc.jetstream(timeout=2.0)
        request = json.dumps({"job_id": 99, "request": {}, "request_digest": "x"}).encode()
        seen: list[bytes] = []

        async def snoop(msg) -> None:
            seen.append(msg.data)

        attacks = {
            "publish a job": ("imagine.jobs._default.99", lambda: js.publish("imagine.jobs._default.99", request)),
            "publish a job (core)": ("imagine.jobs.fake.98",
                                     lambda: worker.nc.publish("imagine.jobs.fake.98", request)),
            "pull from the bot's results consumer": ("consumer.msg.next.imagine_results",
                                                     lambda: _pull(js, "bot-results", "IMAGINE_RESULTS")),
            "make a consumer of the results": ("create.imagine_results.evil", lambda: js.add_consumer(
                "IMAGINE_RESULTS", ConsumerConfig(durable_name="evil", filter_subject="imagine.results.>"))),
            "make a named consumer of the results": ("create.imagine_results.evil2", lambda: js.add_consumer(
                "IMAGINE_RESULTS", ConsumerConfig(name="evil2", durable_name="evil2",
                                                  filter_subject="imagine.results.*"))),
            "subscribe to the results": ("imagine.results.>", lambda: worker.nc.subscribe("imagine.results.>",
                                                                                          cb=snoop)),
            "subscribe to the bot's inbox": ("_inbox.bot.>", lambda: worker.nc.subscribe("_INBOX.bot.>", cb=snoop)),
            "cancel a job": ("imagine.cancel.7", lambda: worker.nc.publish("imagine.cancel.7", b"")),
            "delete the job stream": ("stream.delete.imagine_jobs", lambda: js.delete_stream("IMAGINE_JOBS")),
            "purge the results stream": ("stream.purge.imagine_results", lambda: js.purge_stream("IMAGINE_RESULTS")),
            "purge the image store": ("stream.purge.obj_imagine-images",
                                      lambda: js.purge_stream("OBJ_imagine-images")),
            "shrink the job stream": ("stream.update.imagine_jobs", lambda: js.update_stream(StreamConfig(
                name="IMAGINE_JOBS", subjects=["imagine.jobs.>"], max_msgs=1))),
            "delete the bot's consumer": ("consumer.delete.imagine_results",
                                          lambda: js.delete_consumer("IMAGINE_RESULTS", "bot-results")),
        }
        refused = {name: await attempt(worker, hint, action) for name, (hint, action) in attacks.items()}
        # Nothing changed: no job queued, the streams and the bot's consumer are there, the outcome is still the
        # bot's to read, and the snooping subscriptions got nothing.
        assert await bot.job_in_queue(99) is None and await bot.job_in_queue(98) is None
        for stream in ("IMAGINE_JOBS", "IMAGINE_RESULTS", "OBJ_imagine-images"):
            info = await bot.js.stream_info(stream)
            assert info.config.max_msgs in (-1, None, 0) or info.config.max_msgs > 1
        assert (await bot.js.consumer_info("IMAGINE_RESULTS", "bot-results")).name == "bot-results"
        got = await results.fetch(1, timeout=5)
        assert bot.parse_result_message(got[0]).job_id == 7
        await got[0].ack()
        await asyncio.sleep(0.3)
        assert seen == []
        assert bot.denied == []  # the bot did all of that without a single refusal
    finally:
        await worker.close()
        await bot.close()
    reliability.record("queue: the worker identity tries what only the bot or the admin may do",
                       runs=len(attacks), failures=sum(not r for r in refused.values()),
                       note=f"{sum(refused.values())} of {len(attacks)} refused")
    assert all(refused.values()), refused


async def _pull(js, durable: str, stream: str):
    sub = await js.pull_subscribe_bind(durable, stream)
    return await sub.fetch(1, timeout=2)


async def test_the_bot_identity_cannot_delete_or_purge_the_queues_streams(secure_nats, reliability):
    """Only the admin identity may delete or purge a stream of the queue: the bot's tries are refused, and its own
    job stays queued."""
    from generation.protocol.contract import GenerationRequest

    bot = await JobQueue.connect(secure_nats.url, FAST, name="bot", auth=secure_nats.auth("bot"))
    try:
        await bot.publish_job(1, GenerationRequest("kept", steps=2, width=64, height=64), secret=b"k" * 32)
        js = bot.nc.jetstream(timeout=2.0)
        attacks = {
            "delete the job stream": ("stream.delete.imagine_jobs", lambda: js.delete_stream("IMAGINE_JOBS")),
            "delete the results stream": ("stream.delete.imagine_results", lambda: js.delete_stream("IMAGINE_RESULTS")),
            "purge the job stream": ("stream.purge.imagine_jobs", lambda: js.purge_stream("IMAGINE_JOBS")),
            "delete the cancel bucket": ("stream.delete.kv_imagine-cancel",
                                         lambda: js.delete_stream("KV_imagine-cancel")),
        }
        refused = {name: await attempt(bot, hint, action) for name, (hint, action) in attacks.items()}
        assert await bot.job_in_queue(1) is not None
        admin = await JobQueue.connect(secure_nats.url, FAST, name="admin", setup=False,
                                       auth=secure_nats.auth("admin"))
        assert await admin.js.purge_stream("IMAGINE_JOBS") and admin.denied == []  # the admin may
        await admin.close()
    finally:
        await bot.close()
    reliability.record("queue: the bot identity tries to delete or purge the queue's streams", runs=len(attacks),
                       failures=sum(not r for r in refused.values()),
                       note=f"{sum(refused.values())} of {len(attacks)} refused")
    assert all(refused.values()), refused


async def test_the_bot_and_a_real_worker_finish_jobs_under_these_permissions(tmp_path, migrated_template,
                                                                            secure_nats, reliability):
    """The real dispatcher (bot identity) and a real worker process (worker identity, its credentials in its
    environment) finish jobs, and a job cancelled while it runs is stopped (the cancel mark, the cancel subject,
    the removal of its message), without a single permission refused on either side."""
    world = DispatchWorld(tmp_path, migrated_template, secure_nats.url, auth=secure_nats.auth("bot"))
    try:
        await world.start()
        env = {k: v for k, v in secure_nats.env("worker-1").items() if k != "NATS_URL"}
        w = world.worker("--fake-engine", "0.02", env=env)
        [long] = await world.submit(1, steps=150)  # 3 s on the fake engine
        ids = await world.submit(3, steps=4)
        await world.mid_job(w, long, step=1)
        await world.services.jobs.cancel(long, by=1)
        await world.dispatcher.cancel(long)
        tally = await world.settle(timeout=90)
        queue = world.dispatcher.queue
        assert queue is not None and queue.denied == []
        assert "refused this identity" not in w.log(), w.log()
    finally:
        await world.close()
    reliability.record("queue: bot and worker identities finish jobs end to end", runs=len(ids) + 1,
                       lost=len(tally.lost), duplicated=len(tally.duplicated), note="one of them cancelled")
    assert tally.lost == [] and tally.duplicated == [] and sorted(tally.delivered) == sorted(ids), str(tally)
    assert tally.refunded == [long], str(tally)


async def test_the_embedded_server_wants_credentials_and_no_command_line_shows_them(tmp_path, migrated_template,
                                                                                   monkeypatch, reliability):
    """The default single-machine mode, as another local user sees it: the embedded server refuses a client without
    credentials (and one with a guessed password); the local worker's command line (/proc/<pid>/cmdline, readable by
    everyone) holds neither the URL nor a password: its credentials are in its environment, readable by its own user
    only, with a password made at this start; the configuration and the credentials file are 0600 in a 0700 folder,
    and the configuration holds only a hash of each password. A job goes through under these permissions."""
    import os
    import shutil
    import stat

    from bot.config import Settings
    from bot.db import create_engine
    from bot.dispatch.local import open_dispatcher
    from bot.services import build_services
    from generation.protocol.natsauth import NatsAuth
    from generation.protocol.queue import ConnectRefused
    from tests.conftest import sqlite_url
    from tests.support.faultkit import PostingListener

    monkeypatch.setenv("DISCORD_TOKEN", "discord-secret-token")
    data = tmp_path / "data"
    data.mkdir()
    shutil.copyfile(migrated_template, data / "bot.db")
    settings = Settings(_env_file=None, data_dir=data, database_url=sqlite_url(data / "bot.db"),
                        nats_max_store="256MiB")
    engine = create_engine(settings.database_url)
    services = build_services(settings, engine)
    refused = 0
    try:
        async with open_dispatcher(settings, services, config=FAST, worker_args=["--fake-engine", "0.01"]) as d:
            listener = PostingListener(services.jobs)
            await d.start(listener=listener)
            url = d.local_server.url
            for auth in (None, NatsAuth(user="worker", password="guessed"), NatsAuth(user="bot", password="bot")):
                try:
                    q = await JobQueue.connect(url, name="local-attacker", auth=auth, connect_timeout=10.0)
                except ConnectRefused:
                    refused += 1
                else:
                    await q.close()
            worker = d.local_worker
            cmdline = open(f"/proc/{worker.process.pid}/cmdline", "rb").read().decode().split("\0")
            environ = dict(item.split("=", 1) for item in
                           open(f"/proc/{worker.process.pid}/environ", "rb").read().decode().split("\0") if "=" in item)
            password = environ["NATS_PASSWORD"]
            assert environ["NATS_USER"] == "worker" and environ["NATS_URL"] == url and len(password) >= 40
            assert "DISCORD_TOKEN" not in environ
            assert not any(url in part or password in part or "nats://" in part for part in cmdline), cmdline
            assert "--nats-url" not in cmdline
            folder = data / "nats"
            conf, creds = folder / "nats-server.conf", folder / "worker.env"
            assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
            assert stat.S_IMODE(os.stat(conf).st_mode) == 0o600 and stat.S_IMODE(os.stat(creds).st_mode) == 0o600
            assert password not in conf.read_text() and "$2a$" in conf.read_text()
            assert f"NATS_PASSWORD={password}" in creds.read_text() and f"NATS_URL={url}" in creds.read_text()
            assert "max_file_store: 268435456" in conf.read_text()
            job = await services.jobs.create(1000, 2000, 1, [], prompt="local", steps=4, width=64, height=64,
                                             num_images=1)
            await d.publish(job)
            await wait_until(lambda: listener.posts[job.id] == 1, 60, 0.1, "the job to be posted")
            assert d.queue.denied == []
    finally:
        await engine.dispose()
    reliability.record("embedded queue: clients without the start's credentials", runs=3, failures=3 - refused,
                       note=f"{refused} of 3 refused; no secret on the local worker's command line")
    assert refused == 3
