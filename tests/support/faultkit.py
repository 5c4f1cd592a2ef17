"""What the fault tests share: a ledger that says, for each accepted job, whether it was delivered once, refunded with
a message, lost or duplicated; an in-process dispatch world (real SQLite services, real nats-server, real worker
processes); and the real `python -m bot` process against the fake Discord.

A job counts as
- delivered: posted exactly once, its charge committed;
- refunded: failed or cancelled, its charge refunded, and its owner told (an error text the bot shows, or for the
  Discord-level tests a message the owner can see);
- duplicated: posted (or run to a posted grid) more than once;
- lost: anything else once the test has waited long enough (still queued or running, succeeded but never posted,
  failed without a refund…).
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import signal
import sqlite3
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bot.config import Settings
from bot.db import create_engine
from bot.dispatch import Dispatcher
from bot.exts.imagine.presenter import with_retries
from bot.services import build_services
from generation.protocol.queue import QueueConfig
from tests.bot.dispatch.conftest import wait_until
from tests.conftest import sqlite_url
from tests.e2e.conftest import BotProcess as E2EBotProcess
from tests.support.natsutil import WorkerProcess, child_pids, pid_alive, reap  # noqa: F401 - pid_alive for the tests

GUILD = 1000
CHANNEL = 2000
#: Short timings: a dead worker's job goes to another one within ~2 s.
FAST = QueueConfig(ack_wait=2.0, max_deliver=3, duplicate_window=60.0)


# --- accounting ----------------------------------------------------------------------------------------------------
@dataclass
class Tally:
    """What became of a set of jobs."""

    delivered: list[int] = field(default_factory=list)
    refunded: list[int] = field(default_factory=list)
    lost: list[int] = field(default_factory=list)
    duplicated: list[int] = field(default_factory=list)
    detail: dict[int, str] = field(default_factory=dict)

    @property
    def counts(self) -> dict[str, int]:
        return {"lost": len(self.lost), "duplicated": len(self.duplicated)}

    def __str__(self) -> str:
        odd = sorted(set(self.lost) | set(self.duplicated))
        return (f"delivered {len(self.delivered)}, refunded {len(self.refunded)}, lost {self.lost}, "
                f"duplicated {self.duplicated}" + "".join(f"; {k}: {self.detail[k]}" for k in odd))


def tally(rows: dict[int, dict[str, Any]], posts: Counter[int], *, told: set[int] | None = None) -> Tally:
    """Classify jobs from their database rows (`id → row` with status, charge_state, error) and how often each was
    posted. `told`: jobs whose owner saw a message about the refund (default: every failed job with an error text)."""
    t = Tally()
    for job_id, row in sorted(rows.items()):
        status, charge, error = row["status"], row["charge_state"], row.get("error") or ""
        n = posts.get(job_id, 0)
        t.detail[job_id] = f"{status}/{charge}/posted {n}"
        if n > 1:
            t.duplicated.append(job_id)
        elif status == "posted" and charge == "committed" and n == 1:
            t.delivered.append(job_id)
        elif status in ("failed", "cancelled") and charge == "refunded" and n == 0 and (
            (job_id in told) if told is not None else (status == "cancelled" or bool(error.strip()))
        ):
            t.refunded.append(job_id)
        else:
            t.lost.append(job_id)
    return t


# --- in-process dispatch world -------------------------------------------------------------------------------------
class PostingListener:
    """Posts a succeeded job the way the presenter does (`mark_posted`, exactly once, tried again through the
    presenter's own `with_retries` while the database is busy) and counts every post."""

    def __init__(self, jobs, retry_delays: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0)):
        self.jobs = jobs
        self.retry_delays = retry_delays
        self.posts: Counter[int] = Counter()
        self.failed: list[int] = []

    async def job_queued(self, job_id: int) -> None:
        pass

    async def job_progress(self, job_id: int, step: int, total: int, preview: bytes | None = None) -> None:
        pass

    async def job_loading(self, job_id: int) -> None:
        pass

    async def job_finished(self, job_id: int, *, timeline: bytes | None = None) -> None:
        await with_retries(lambda: self._post(job_id), f"job {job_id}: posting", self.retry_delays)

    async def _post(self, job_id: int) -> None:
        job = await self.jobs.find(job_id)
        if job is None:
            return
        if str(job.status) == "succeeded" and await self.jobs.mark_posted(job_id, CHANNEL, 10_000 + job_id):
            self.posts[job_id] += 1
        elif str(job.status) == "failed":
            self.failed.append(job_id)


class DispatchWorld:
    """Real services over a migrated SQLite copy, a dispatcher on a real nats-server, worker processes on demand."""

    def __init__(self, tmp: Path, template: Path, url: str, *, config: QueueConfig = FAST, **dispatcher_kw: Any):
        self.tmp = tmp
        self.url = url
        self.config = config
        data = tmp / "data"
        data.mkdir(parents=True, exist_ok=True)
        self.db_path = data / "bot.db"
        shutil.copyfile(template, self.db_path)
        self.settings = Settings(_env_file=None, data_dir=data, database_url=sqlite_url(self.db_path),
                                 default_images_per_day=100_000, default_max_concurrent=10_000, default_max_steps=150)
        self.engine = create_engine(self.settings.database_url)
        self.services = build_services(self.settings, self.engine)
        self.listener = PostingListener(self.services.jobs)
        self.dispatcher = Dispatcher(url, self.services.jobs, self.services.images, config=config,
                                     feed_interval=0.5, **dispatcher_kw)
        self.workers: list[WorkerProcess] = []
        self.created: list[int] = []
        #: Every job event the dispatcher saw, in order.
        self.events: list = []
        self.dispatcher.subscribe(self.events.append)
        #: The fake engine appends each finished run here (see `journal_runs`).
        self.journal = tmp / "journal.txt"
        self._n = 0

    async def start(self) -> None:
        await self.dispatcher.start(listener=self.listener)

    def worker(self, *args: str, env: dict[str, str] | None = None) -> WorkerProcess:
        self._n += 1
        w = WorkerProcess(self.url, self.tmp, f"w{self._n}", *(args or ("--fake-engine", "0.05")), config=self.config,
                          env={"IMAGINE_FAKE_JOURNAL": str(self.journal), **(env or {})})
        self.workers.append(w)
        return w

    async def mid_job(self, worker: WorkerProcess, job_id: int | None = None, step: int = 3,
                      timeout: float = 30.0) -> None:
        """Wait until `worker` reported step `step` of a job (of `job_id`, when given)."""
        def working():
            return any(e.kind == "progress" and e.worker == worker.name and e.step >= step
                       and (job_id is None or e.job_id == job_id) for e in self.events)

        await wait_until(working, timeout, 0.02, f"{worker.name} to be in the middle of a job")

    async def submit(self, n: int = 1, *, user: int = 1, steps: int = 20, **kw: Any) -> list[int]:
        ids = []
        for _ in range(n):
            job = await self.services.jobs.create(GUILD, CHANNEL, user, [], prompt=f"job {len(self.created)}",
                                                  steps=steps, width=64, height=64, num_images=kw.pop("num_images", 1),
                                                  **kw)
            await self.dispatcher.publish(job)
            self.created.append(job.id)
            ids.append(job.id)
        return ids

    def rows(self, ids: list[int] | None = None) -> dict[int, dict[str, Any]]:
        with sqlite3.connect(self.db_path, timeout=30) as con:
            con.row_factory = sqlite3.Row
            rows = {r["id"]: dict(r) for r in con.execute("select * from job")}
        return rows if ids is None else {i: rows[i] for i in ids}

    async def all_final(self, ids: list[int] | None = None, timeout: float = 60.0) -> dict[int, dict[str, Any]]:
        ids = self.created if ids is None else ids

        def done():
            rows = self.rows(ids)
            return rows if all(r["status"] in ("posted", "failed", "cancelled") for r in rows.values()) else None

        try:
            return await wait_until(done, timeout, 0.2, "every job to finish")
        except AssertionError:
            return self.rows(ids)

    async def settle(self, ids: list[int] | None = None, timeout: float = 60.0) -> Tally:
        rows = await self.all_final(ids, timeout)
        await asyncio.sleep(0.3)  # a late duplicate outcome would show up now
        await self.dispatcher.drain_listeners(5.0)
        return tally(rows, self.listener.posts)

    async def close(self) -> None:
        for w in self.workers:
            w.stop(timeout=10)
        await self.dispatcher.close()
        await self.engine.dispose()

    def logs(self) -> str:
        return "\n".join(f"--- {w.name}\n{w.log()[-2500:]}" for w in self.workers)


def journal_runs(path: Path) -> Counter[str]:
    """How often the fake engine finished each prompt (IMAGINE_FAKE_JOURNAL)."""
    if not path.exists():
        return Counter()
    return Counter(line.split("\t")[0] for line in path.read_text().splitlines() if line.strip())


# --- the real bot process against the fake Discord -----------------------------------------------------------------
#: The `imaginebot.json` of the fake model: the fake worker builds its card from it and announces it; the bot learns
#: the model's limits and defaults from that card (it reads no model files).
MODEL_CARD = {
    "name": "fake", "description": "The fake engine (solid colours).", "default_width": 64, "default_height": 64,
    "default_steps": 4, "max_side": 256,
}


def fake_model_dir(root: Path) -> Path:
    folder = root / "fake-model"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "imaginebot.json").write_text(json.dumps(MODEL_CARD))
    return folder


#: Seconds the children of a killed bot (embedded server, local worker) may take to exit before they are killed: the
#: local worker's drain timeout and exit deadline (`generation.worker.worker.STOP_EXIT_AFTER`), plus a margin.
REAP_TIMEOUT = 25.0


class BotProcess(E2EBotProcess):
    """`python -m bot` (embedded nats-server, local fake-engine worker) pointed at a FakeDiscord, own data folder;
    it can be killed and started again on the same data."""

    def __init__(self, fd, data_dir: Path, log_path: Path, *, worker_args: str = "--fake-engine 0.02",
                 env: dict[str, str] | None = None):
        model = fake_model_dir(data_dir.parent)
        super().__init__(fd, data_dir, model, log_path)
        self.env.update({
            "PYTHONUNBUFFERED": "1",
            "WORKER_ARGS": worker_args,
            "DEFAULT_IMAGES_PER_DAY": "100000",
            "DEFAULT_MAX_CONCURRENT": "1000",
            "IMAGINE_COOLDOWN_SECONDS": "0",
            **(env or {}),
        })
        self.starts = 0
        self._offset = 0
        self._orphans: list[int] = []  # the children of runs killed by `kill9()`, reaped by `stop()`

    def start(self) -> None:
        self.starts += 1
        self._offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        super().start()

    def current_log(self) -> str:
        """The log of the current run only."""
        with open(self.log_path, "rb") as f:
            f.seek(self._offset)
            return f.read().decode(errors="replace")

    async def wait_log(self, pattern: str, timeout: float = 60.0) -> re.Match:
        try:
            return await wait_until(lambda: re.search(pattern, self.current_log()), timeout, 0.1,
                                    f"the bot to log {pattern!r}")
        except AssertionError:
            raise AssertionError(f"bot did not log {pattern!r}; log tail:\n{self.log()[-4000:]}") from None

    async def ready(self, timeout: float = 90.0) -> None:
        """Connected to the fake Discord and its local worker is taking jobs (its model card is known)."""
        await self.fd.wait_for(lambda: self.fd.identified >= self.starts and self.fd._sockets, timeout,
                               "the bot to identify")
        await self.wait_log(r"worker local: ready", timeout)
        await self.wait_log(r"worker local serves model\(s\)", timeout)

    def children(self) -> tuple[int, int]:
        """pids of the embedded nats-server and the local worker of the current run."""
        log = self.current_log()
        server = int(re.search(r"embedded nats-server ready on \S+ \(store .*?, pid (\d+)", log)[1])
        worker = int(re.search(r"local worker local started \(pid (\d+)\)", log)[1])
        return server, worker

    def kill9(self) -> None:
        """SIGKILL the bot process alone (its children get SIGTERM from the kernel, as in production)."""
        assert self.process is not None
        self._orphans += child_pids(self.process.pid)
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        self._log.close()

    def stop(self, timeout: float = 40.0) -> int | None:
        """Stop the bot (SIGINT, SIGKILL after `timeout`), then make sure no child of any of its runs outlives the
        test: those still running `REAP_TIMEOUT` seconds on are killed."""
        if self.process is not None and self.process.poll() is None:
            self._orphans += child_pids(self.process.pid)  # a stop that ends in SIGKILL leaves them too
        code = super().stop(timeout)
        orphans, self._orphans = self._orphans, []
        reap(orphans, REAP_TIMEOUT)
        return code

    def rows(self) -> dict[int, dict[str, Any]]:
        with sqlite3.connect(self.data_dir / "bot.db", timeout=30) as con:
            con.row_factory = sqlite3.Row
            return {r["id"]: dict(r) for r in con.execute("select * from job")}


_JOB_ID = re.compile(r"^job:(\d+):")


def grid_job_id(message: dict[str, Any]) -> int | None:
    """The job a posted result grid belongs to (from its buttons), None for any other message."""
    if "interaction_metadata" in message or not message.get("components"):
        return None
    for row in message["components"]:
        for c in row.get("components", []):
            m = _JOB_ID.match(c.get("custom_id") or "")
            if m and not (c.get("custom_id") or "").endswith(":x"):
                return int(m[1])
    return None


def grid_posts(fd, channel_id: str) -> Counter[int]:
    """How many result grids were posted for each job in a channel (deleted ones count too: they were seen)."""
    out: Counter[int] = Counter()
    for m in list(fd.messages.values()) + list(fd.deleted.values()):
        if m["channel_id"] == channel_id:
            job_id = grid_job_id(m)
            if job_id is not None:
                out[job_id] += 1
    return out


def refund_notices(fd) -> set[int]:
    """Jobs whose owner can read that the job ended without a charge: a message (the job's own progress message, or
    a note) whose embed is about that job and says so."""
    told = set()
    for m in fd.messages.values():
        for e in m.get("embeds") or []:
            footer = (e.get("footer") or {}).get("text", "")
            if footer.startswith("Job #") and "not charged" in (e.get("description") or "").lower().replace("nothing was charged", "not charged"):
                told.add(int(footer[5:]))
    return told


class WriteLock:
    """Another connection holding SQLite's write lock (`BEGIN IMMEDIATE`) for `seconds` (or until `release()`),
    from a thread."""

    def __init__(self, db_path: Path, seconds: float):
        self.db_path = db_path
        self.seconds = seconds
        self.held = threading.Event()
        self.released = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        con = sqlite3.connect(self.db_path, timeout=30, isolation_level=None)
        try:
            con.execute("BEGIN IMMEDIATE")
            self.held.set()
            self._stop.wait(self.seconds)
            con.execute("ROLLBACK")
        finally:
            con.close()
            self.released.set()

    async def __aenter__(self) -> WriteLock:
        self._thread.start()
        await asyncio.to_thread(self.held.wait, 30)
        return self

    def release(self) -> None:
        """Let the lock go now rather than after `seconds`."""
        self._stop.set()

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.released.wait, self.seconds + 30)


class DiskFull:
    """The disk under the database fills up: every write statement of `engine` fails the way SQLite reports it
    ("database or disk is full", an OperationalError) until the block ends; reads go on. Injected at SQLAlchemy's
    cursor level (a real full disk would also fail the other processes of the test machine)."""

    def __init__(self, engine: Any):
        self.sync_engine = engine.sync_engine
        self.refused = 0

    def _refuse_writes(self, conn, cursor, statement: str, parameters, context, executemany) -> None:
        if statement.lstrip().split(None, 1)[0].upper() in ("INSERT", "UPDATE", "DELETE", "REPLACE"):
            from sqlalchemy.exc import OperationalError

            self.refused += 1
            raise OperationalError(statement, parameters, sqlite3.OperationalError("database or disk is full"))

    async def __aenter__(self) -> DiskFull:
        from sqlalchemy import event

        event.listen(self.sync_engine, "before_cursor_execute", self._refuse_writes)
        return self

    async def __aexit__(self, *exc: object) -> None:
        from sqlalchemy import event

        event.remove(self.sync_engine, "before_cursor_execute", self._refuse_writes)
