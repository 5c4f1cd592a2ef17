"""Helpers for tests that need a real nats-server and real worker processes (127.0.0.1, free port, temp store)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from generation.protocol.natsserver import NatsServer
from generation.protocol.queue import JobQueue, Outcome, QueueConfig

REPO = Path(__file__).resolve().parents[2]

#: Short timings so redelivery after a dead worker happens within a couple of seconds.
FAST = QueueConfig(ack_wait=2.0, max_deliver=3, duplicate_window=60.0)


@pytest.fixture(name="nats_server")
def nats_server_fixture(tmp_path: Path) -> Iterator[NatsServer]:
    """A fresh nats-server -js on 127.0.0.1 with its store under tmp_path, stopped after the test."""
    server = NatsServer(tmp_path / "nats")
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def connect(server: NatsServer, config: QueueConfig = FAST, name: str = "test") -> JobQueue:
    return await JobQueue.connect(server.url, config, name=name)


async def outcome_of(q: JobQueue, job_id: int, timeout: float = 60.0) -> Outcome:
    """The stored outcome of job `job_id`, polled until it is there (AssertionError after `timeout` seconds)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = await q.get_outcome(job_id)
        if out is not None:
            return out
        await asyncio.sleep(0.02)
    raise AssertionError(f"no outcome for job {job_id}")


def pid_alive(pid: int) -> bool:
    """Whether process `pid` still runs (a zombie does not count)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def child_pids(pid: int) -> list[int]:
    """The pids of the running processes whose parent is `pid` (read from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(entry.name))
    return found


def reap(pids: list[int], timeout: float) -> list[int]:
    """Wait up to `timeout` seconds for the processes `pids` to exit (children a killed bot left: the kernel sends
    them SIGTERM); SIGKILL those still running then, so that no test leaves processes behind. Returns their pids."""
    deadline = time.monotonic() + timeout
    left = [pid for pid in pids if pid_alive(pid)]
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = [pid for pid in left if pid_alive(pid)]
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return left


class WorkerProcess:
    """`python -m generation.worker --fake-engine ...` as a real child process, with its log in a file."""

    def __init__(self, url: str, log_dir: Path, name: str, *args: str, config: QueueConfig = FAST,
                 env: dict[str, str] | None = None, module: str = "generation.worker"):
        self.name = name
        self.log_path = log_dir / f"worker-{name}.log"
        cmd = [
            sys.executable, "-m", module, "--nats-url", url, "--name", name,
            "--ack-wait", str(config.ack_wait), "--max-deliver", str(config.max_deliver),
            "--prefix", config.prefix, *args,
        ]
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT, env=full_env)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, text: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"worker {self.name} did not log {text!r}; log:\n{self.log()}")

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode
