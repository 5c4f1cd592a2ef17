"""The workers the bot has heard from, what they serve, and when a job that no worker serves must stop waiting.

    registry = WorkerRegistry()
    changed = registry.heard(info)                     # a worker announced itself (every few seconds, on each change)
    registry.workers(); registry.models(); registry.serves("tiny")
    for job_id, reason in registry.overdue(await jobs.unfinished()): ...   # fail and refund these

Workers announce themselves every few seconds and on every change of state; one not heard from for `WORKER_TIMEOUT`
seconds is gone. A worker serves the jobs of its model token (and, unless told otherwise, the default requests).

A job whose model no live worker serves is not left waiting forever. When a worker announced that it could not load
that model (state `failed`, with a reason), the job fails with the worker's reason after `load_error_grace` seconds
(10) in which no other worker came; otherwise it waits `unserved_timeout` seconds for one, counted from the latest
of: when the job was first seen unserved, when a worker last served its model, when the bot started. The registry
only decides; the dispatcher fails (and refunds) the jobs and takes them out of the stream.

Time comes from `clock` (`time.monotonic`), so tests can move it by hand.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from generation.protocol.queue import WorkerInfo, model_token

log = logging.getLogger("bot.dispatch")

#: A worker that has not announced itself for this long is considered gone.
WORKER_TIMEOUT = 10.0
#: Seconds a job waits for a worker that serves its model before it fails (refunded) with a message saying so.
UNSERVED_TIMEOUT = 300.0
#: Seconds a job still waits after a worker reported that it could not load the job's model (another worker, or the
#: same one restarted with a fixed model, may announce itself meanwhile).
LOAD_ERROR_GRACE = 10.0
#: Worker states in which a worker takes (or finishes) jobs of its model.
SERVING_STATES = ("loading", "ready", "busy", "stopping")
#: Worker states in which a worker takes new jobs (or is about to).
TAKING_STATES = ("ready", "busy", "loading")


class WorkerRegistry:
    """Live workers and their models, load failures, and the waiting-time rules for jobs no worker serves."""

    def __init__(
        self,
        *,
        unserved_timeout: float = UNSERVED_TIMEOUT,
        load_error_grace: float = LOAD_ERROR_GRACE,
        worker_timeout: float = WORKER_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.unserved_timeout = unserved_timeout
        self.load_error_grace = load_error_grace
        self.worker_timeout = worker_timeout
        self._clock = clock
        self._workers: dict[str, tuple[WorkerInfo, float]] = {}
        #: When a worker last served each model token, and the latest load failure reported for it.
        self._token_seen: dict[str, float] = {}
        self._load_errors: dict[str, tuple[str, float]] = {}
        #: When each active job was first seen with no worker for its model.
        self._unserved_since: dict[int, float] = {}
        self._started = clock()
        self._last_check: float | None = None

    def mark_started(self) -> None:
        """Count the wait of unserved jobs from now at the earliest (the bot starts listening to workers now)."""
        self._started = self._clock()

    # --- announcements ----------------------------------------------------------------------------------------------
    def heard(self, info: WorkerInfo) -> bool:
        """Record a worker's announcement; True when the worker is new or changed state (there may be work for it,
        or jobs to fail)."""
        before = self._workers.get(info.name)
        now = self._clock()
        self._workers[info.name] = (info, now)
        if info.state in SERVING_STATES:
            for t in info.tokens:
                self._token_seen[t] = now
        elif info.state == "failed":
            for t in info.tokens:
                self._load_errors[t] = (info.error or f"worker {info.name} could not load its model", now)
        if before is not None and before[0].state == info.state:
            return False
        log.info("worker %s: %s (model %s, device %s)%s", info.name, info.state, info.model or "?",
                 info.device or "?", f": {info.error}" if info.error else "")
        if info.state == "failed":
            self._last_check = None  # look at the waiting jobs at the next check
        return True

    # --- who serves what --------------------------------------------------------------------------------------------
    def workers(self) -> list[WorkerInfo]:
        """Workers heard from in the last `worker_timeout` seconds and not stopped."""
        now = self._clock()
        return [i for i, seen in self._workers.values()
                if now - seen < self.worker_timeout and i.state not in ("stopped", "failed")]

    def models(self) -> set[str]:
        """Names of the models served by live, loaded workers."""
        return {w.model for w in self.workers() if w.state in ("ready", "busy")}

    def serves(self, model: str) -> bool:
        """Whether a live worker takes jobs for `model` ("" = any worker that serves default requests)."""
        token = model_token(model)
        return any(token in w.tokens for w in self.workers() if w.state in TAKING_STATES)

    def tokens(self) -> set[str]:
        """The model tokens of every live worker (in any state but stopped or failed)."""
        return {t for w in self.workers() for t in w.tokens}

    def capacity(self) -> int:
        """Jobs the live workers can hold: a full batch each, plus the next one ready."""
        return sum(w.max_batch + 1 for w in self.workers() if w.state in TAKING_STATES)

    # --- jobs no worker serves --------------------------------------------------------------------------------------
    def check_due(self, *, force: bool = False) -> bool:
        """Whether it is time to look for unserved jobs again: every quarter of the shorter wait (0.5 to 5 s), at
        once after a worker failed to load its model, always when `force`d."""
        now = self._clock()
        interval = min(5.0, max(0.5, min(self.unserved_timeout, self.load_error_grace) / 4))
        if not force and self._last_check is not None and now - self._last_check < interval:
            return False
        self._last_check = now
        return True

    def overdue(self, jobs: Iterable[Any]) -> list[tuple[int, str]]:
        """Of `jobs` (rows with `id`, `status` and `model`: every unfinished job), the waiting or running ones that
        must fail now because no live worker serves their model, each with the reason to tell its owner.

        Remembers since when each of the others has been unserved; pass every unfinished job each time."""
        now = self._clock()
        live = {t for w in self.workers() if w.state in SERVING_STATES for t in w.tokens}
        for t in live:
            self._token_seen[t] = now
        due: list[tuple[int, str]] = []
        still: dict[int, float] = {}
        for job in jobs:
            if str(job.status) not in ("queued", "running"):
                continue
            token = model_token(job.model)
            if token in live:
                continue
            since = still[job.id] = self._unserved_since.get(job.id, now)
            last_served = self._token_seen.get(token, self._started)
            load_error = self._load_errors.get(token)
            what = f"model `{job.model}`" if job.model else "the default model"
            grace = min(self.load_error_grace, self.unserved_timeout)
            if load_error is not None and load_error[1] >= last_served and now - max(since, load_error[1]) >= grace:
                reason = f"No worker can run {what}: {load_error[0]}"
            elif now - max(since, last_served, self._started) >= self.unserved_timeout:
                reason = (f"No worker is serving {what}: none was seen for {self.unserved_timeout:.0f} s, so the job "
                          "was stopped instead of waiting forever.")
            else:
                continue
            due.append((job.id, reason))
            still.pop(job.id, None)
        self._unserved_since = still
        return due
