"""Worker faults: `kill -9` of the worker in the middle of a job, many times in a row; a worker whose model does not
load. Real nats-server, real `python -m generation.worker --fake-engine` processes, the real dispatcher and SQLite
services in the test process."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from tests.support.faultkit import DispatchWorld, journal_runs
from tests.support.reliability import soak_runs

pytestmark = pytest.mark.slow


@pytest.fixture
async def world(tmp_path, migrated_template, nats_server):
    w = DispatchWorld(tmp_path, migrated_template, nats_server.url)
    await w.start()
    try:
        yield w
    finally:
        await w.close()


async def test_worker_kill_9_mid_job_many_times_in_a_row(world, reliability):
    """Each run: a job starts on the current worker, the worker is killed with SIGKILL half-way through, a fresh
    worker starts. Every job must end posted exactly once (the killed attempt never counts twice)."""
    runs = soak_runs(3, 20)
    worker = world.worker("--fake-engine", "0.05", "--max-batch", "1")
    failures = 0
    killed_jobs = []
    for run in range(runs):
        (job_id,) = await world.submit(1, steps=20)  # 20 steps × 0.05 s: one second of work
        try:
            await world.mid_job(worker, job_id, step=4)
        except AssertionError:
            failures += 1
            print(f"run {run}: the job never started on {worker.name}\n{world.logs()}")
            continue
        worker.kill9()
        killed_jobs.append(job_id)
        worker = world.worker("--fake-engine", "0.05", "--max-batch", "1")
    tally = await world.settle(timeout=30 + 5 * runs)
    runs_by_prompt = journal_runs(world.journal)
    ran_twice = [p for p, n in runs_by_prompt.items() if n > 1]
    print(f"{runs} kills: {tally}; jobs that ran more than once: {ran_twice}")
    reliability.record("worker kill -9 mid-job, fresh worker after each", runs=runs, failures=failures,
                       lost=len(tally.lost), duplicated=len(tally.duplicated))
    assert failures == 0
    assert tally.lost == [] and tally.duplicated == [], str(tally)
    assert sorted(tally.delivered) == sorted(world.created), str(tally)
    assert ran_twice == [], f"a killed job also finished on the killed worker: {ran_twice}"
    attempts = {i: r["attempts"] for i, r in world.rows(killed_jobs).items()}
    assert all(n >= 2 for n in attempts.values()), attempts


async def test_worker_kill_9_with_a_full_queue_and_a_second_worker(world, reliability):
    """Two workers share a queue of jobs; one is killed mid-job repeatedly while the other keeps going. Every job is
    posted exactly once."""
    rounds = soak_runs(2, 10)
    steady = world.worker("--fake-engine", "0.03", "--max-batch", "2")
    victim = world.worker("--fake-engine", "0.03", "--max-batch", "2")
    await world.submit(4 * rounds, steps=15, user=1)
    await world.submit(4 * rounds, steps=15, user=2)
    failures = 0
    for _ in range(rounds):
        try:
            await world.mid_job(victim)
        except AssertionError:
            failures += 1
        victim.kill9()
        victim = world.worker("--fake-engine", "0.03", "--max-batch", "2")
    tally = await world.settle(timeout=60 + 10 * rounds)
    runs_by_prompt = journal_runs(world.journal)
    print(f"{rounds} kills beside a steady worker: {tally}; runs per job: {sorted(Counter(runs_by_prompt.values()).items())}")
    reliability.record("worker kill -9 beside a steady worker, full queue", runs=len(world.created),
                       failures=failures, lost=len(tally.lost), duplicated=len(tally.duplicated),
                       note=f"{rounds} kills")
    assert failures == 0
    assert tally.lost == [] and tally.duplicated == [], str(tally)
    assert sorted(tally.delivered) == sorted(world.created), str(tally)
    assert steady.proc.poll() is None


async def test_a_worker_whose_model_does_not_load_takes_no_jobs(world, tmp_path, reliability):
    """`--model` names a path that is missing, or (long form) a folder that is not a model (the worker then imports
    torch and diffusers first): the worker says so, announces it failed, exits with status 1 and takes no job. A job
    for that model then fails with the worker's reason (after the dispatcher's short grace for another worker to
    come) and is refunded."""
    world.dispatcher.unserved_timeout = 60.0  # the reason comes from the worker, not from this timeout
    world.dispatcher.load_error_grace = 1.5
    not_a_model = tmp_path / "not-a-model"
    not_a_model.mkdir()
    (not_a_model / "README.txt").write_text("nothing to load here")
    runs = soak_runs(1, 4)
    failures = 0
    ids = []
    for run in range(runs):
        bad = tmp_path / "missing-model" if run % 2 == 0 else not_a_model
        w = world.worker("--model", str(bad), "--threads", "1")
        code = await asyncio.to_thread(w.proc.wait, 120)
        ids += await world.submit(1, steps=4)
        log = w.log()
        if code != 1 or "could not load" not in log or "Traceback" in log:
            failures += 1
            print(f"worker {w.name} exited {code}; log:\n{log[-3000:]}")
        tally = await world.settle(ids, timeout=20)
        errors = {i: r["error"] for i, r in world.rows(ids).items()}
        if not (errors[ids[-1]] and "could not load" in errors[ids[-1]] and bad.name in errors[ids[-1]]):
            failures += 1
    print(f"model load failures: {tally}; errors {errors}")
    reliability.record("worker whose model fails to load", runs=runs, failures=failures, lost=len(tally.lost),
                       duplicated=len(tally.duplicated))
    assert failures == 0, errors
    assert sorted(tally.refunded) == sorted(ids), str(tally)


async def test_jobs_for_a_model_no_worker_serves_fail_with_a_message(world, reliability):
    """No worker at all for a while: queued jobs are not stuck forever; they fail with a clear message and are
    refunded. A worker that comes back in time gets them instead."""
    world.dispatcher.unserved_timeout = 2.5
    early = await world.submit(2, steps=4)
    tally = await world.settle(early, timeout=20)
    rows = world.rows(early)
    assert sorted(tally.refunded) == sorted(early), str(tally)
    assert all("no worker" in (r["error"] or "").lower() for r in rows.values()), rows
    # A worker arrives within the timeout: jobs run normally.
    world.worker("--fake-engine", "0.01")
    late = await world.submit(3, steps=4)
    tally2 = await world.settle(late, timeout=30)
    reliability.record("jobs for a model no worker serves", runs=len(early) + len(late),
                       lost=len(tally.lost) + len(tally2.lost), duplicated=len(tally.duplicated) + len(tally2.duplicated))
    assert sorted(tally2.delivered) == sorted(late), str(tally2)
