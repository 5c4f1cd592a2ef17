"""The workers the bot has heard from, what they serve, and when a job that no worker serves must stop waiting.

    registry = WorkerRegistry()
    changed = registry.heard(info)                     # a worker announced itself (every few seconds, on each change)
    registry.workers(); registry.models(); registry.serves("tiny")
    registry.served(); registry.card("tiny")           # the models offered to members, with their cards
    registry.note_waiting({"tiny": 3})                 # jobs waiting per model token (the dispatcher counts them)
    for job_id, reason in registry.overdue(await jobs.unfinished()): ...   # fail and refund these

Workers announce themselves every few seconds and on every change of state; one not heard from for `WORKER_TIMEOUT`
seconds is gone. A worker serves the jobs of its model token (and, unless told otherwise, the default requests).

The served models come from the cards in the announcements (`WorkerInfo.models`, see `generation.protocol.cards`):
`served()` lists every model that a live worker taking jobs announced a card for, with the workers serving it,
whether all of them are busy and how many jobs wait for it. The bot reads no model files: a card lives as long as a
worker announcing it, so a worker that goes quiet takes its cards with it. Two workers announcing different cards
for one model (a restarted worker with a changed `imaginebot.json`) are read by their newest announcement.

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
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from generation.protocol.cards import ModelCard
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


@dataclass(frozen=True)
class ServedModel:
    """One model that live workers serve now, as the bot offers it: its card, who serves it, how loaded it is."""

    card: ModelCard
    #: Names of the live workers that take its jobs.
    workers: tuple[str, ...]
    #: Every one of those workers is running a job (a new job waits).
    busy: bool = False
    #: Jobs queued for it that no worker has started yet.
    waiting: int = 0

    @property
    def name(self) -> str:
        return self.card.name

    @property
    def token(self) -> str:
        return model_token(self.card.name)


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
        #: Jobs waiting per model token, as last counted (`note_waiting`).
        self._waiting: dict[str, int] = {}

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
        cards_changed = info.models and (before is None or before[0].models != info.models)
        if cards_changed:
            log.info("worker %s serves model(s): %s", info.name, ", ".join(c.name for c in info.models))
        if before is not None and before[0].state == info.state:
            return bool(cards_changed)
        log.info("worker %s: %s (model %s, device %s)%s", info.name, info.state, info.model or "?",
                 info.device or "?", f": {info.error}" if info.error else "")
        if info.state == "failed":
            self._last_check = None  # look at the waiting jobs at the next check
        return True

    # --- who serves what --------------------------------------------------------------------------------------------
    def workers(self) -> list[WorkerInfo]:
        """Workers heard from in the last `worker_timeout` seconds and not stopped."""
        return [info for info, _ in self._live()]

    def _live(self) -> list[tuple[WorkerInfo, float]]:
        """The live workers (see `workers`), each with when it was last heard from."""
        now = self._clock()
        return [(i, seen) for i, seen in self._workers.values()
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

    # --- the models offered to members ------------------------------------------------------------------------------
    def served(self) -> list[ServedModel]:
        """Every model a live worker taking jobs announced a card for, sorted by name (case-insensitive), with its
        workers, whether they are all busy, and the jobs waiting for it (`note_waiting`)."""
        cards: dict[str, tuple[ModelCard, float]] = {}
        workers: dict[str, list[WorkerInfo]] = {}
        for info, seen in self._live():
            if info.state not in TAKING_STATES:
                continue
            for card in info.models:
                token = model_token(card.name)
                if token not in cards or seen >= cards[token][1]:
                    cards[token] = (card, seen)
                workers.setdefault(token, []).append(info)
        served = [
            ServedModel(
                card=card,
                workers=tuple(sorted(w.name for w in workers[token])),
                busy=all(w.state == "busy" for w in workers[token]),
                waiting=self._waiting.get(token, 0),
            )
            for token, (card, _) in cards.items()
        ]
        return sorted(served, key=lambda m: (m.name.casefold(), m.name))

    def starting(self) -> bool:
        """Whether a live worker is still loading its first model (it announced itself, but no card yet)."""
        return any(w.state == "loading" and not w.models for w in self.workers())

    def card(self, name: str) -> ModelCard | None:
        """The card of the served model called `name` (compared as queue tokens), or None when no live worker
        serves it."""
        token = model_token(name)
        return next((m.card for m in self.served() if m.token == token), None)

    def note_waiting(self, counts: Mapping[str, int]) -> None:
        """Remember how many jobs wait for each model token (what `served()` reports as `waiting`)."""
        self._waiting = {token: n for token, n in counts.items() if n > 0}

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
