"""End-to-end: the real `python -m bot` process (with its embedded nats-server and real local worker) against the
project's fake Discord on 127.0.0.1.

The model is `generation/models/default` when it exists, else a tiny random-weight pipeline built once per session
with `tests.support.tinymodels.build_tiny_pipeline` (in a subprocess, so torch stays out of the test process). One bot
process serves every test of the module; each test uses its own member so their quotas do not mix.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from tests.support.fakediscord import FakeDiscord
from tests.support.natsutil import child_pids, reap

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODEL = ROOT / "generation" / "models" / "default"
TINY_INFO = {"description": "A tiny random-weight test model.", "default_width": 64, "default_height": 64, "default_steps": 4}
#: How long a test waits for a grid (worker start-up plus a CPU run).
GRID_TIMEOUT = 180.0
#: How long a stopped bot's children get to end on their own before they are killed (a worker exits by drain + 12 s).
CHILDREN_TIMEOUT = 20.0


def model_in_use(tmp_root: Path) -> tuple[Path, str]:
    """The model folder for the worker, and which one it is ("default" or "tiny")."""
    if (DEFAULT_MODEL / "model_index.json").is_file() or (DEFAULT_MODEL / "unet").is_dir():
        return DEFAULT_MODEL, "default"
    folder = tmp_root / "tiny-model"
    code = (
        "import json, sys; from tests.support.tinymodels import build_tiny_pipeline;"
        "build_tiny_pipeline(sys.argv[1], info=json.loads(sys.argv[2]))"
    )
    subprocess.run([sys.executable, "-c", code, str(folder), json.dumps(TINY_INFO)], cwd=ROOT, check=True, timeout=300,
                   env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return folder, "tiny"


class BotProcess:
    """`python -m bot` pointed at the fake Discord, with its own data folder."""

    def __init__(self, fd: FakeDiscord, data_dir: Path, model: Path, log_path: Path):
        self.fd = fd
        self.data_dir = data_dir
        self.log_path = log_path
        self.env = {
            **os.environ,
            "DISCORD_TOKEN": fd.token,
            "DISCORD_API_BASE": fd.api_base,
            "DISCORD_GATEWAY_URL": fd.gateway_url,
            "DATA_DIR": str(data_dir),
            "MODEL_PATH": str(model),
            "NATS_URL": "",  # empty (not unset) also overrides a developer's .env: embedded server + local worker
            "LOG_LEVEL": "INFO",
            "HF_HUB_OFFLINE": "1",
            "DEV_GUILD_ID": "",
            "WORKER_ARGS": "",
            "IMAGINE_COOLDOWN_SECONDS": "0",  # the tests start jobs back to back; the cooldown has its own tests
        }
        self.process: subprocess.Popen | None = None

    def sync(self) -> str:
        out = subprocess.run([sys.executable, "-m", "bot", "sync", "--guild", self.fd.guild_id], cwd=ROOT, env=self.env,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-3000:]
        return out.stdout

    def start(self) -> None:
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen([sys.executable, "-m", "bot"], cwd=ROOT, env=self.env, stdout=self._log,
                                        stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self, timeout: float = 40.0) -> int | None:
        p = self.process
        if p is None:
            return None
        if p.poll() is None:
            # Its children (nats-server, the local worker) run in sessions of their own, out of reach of killpg.
            children = child_pids(p.pid)
            p.send_signal(signal.SIGINT)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
            reap(children, CHILDREN_TIMEOUT)
        self._log.close()
        return p.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def wait_for_log(self, text: str, timeout: float) -> None:
        """Poll the log until it holds `text`."""
        deadline = time.monotonic() + timeout
        while text not in self.log():
            if time.monotonic() > deadline:
                raise AssertionError(f"the bot did not log {text!r} within {timeout:g} s; log tail:\n{self.log()[-3000:]}")
            await asyncio.sleep(0.2)

    def db(self) -> sqlite3.Connection:
        return sqlite3.connect(self.data_dir / "bot.db")


class E2E:
    def __init__(self, fd: FakeDiscord, bot: BotProcess, model_kind: str):
        self.fd = fd
        self.bot = bot
        self.model_kind = model_kind
        self.art = fd.add_channel("art")
        self.mod = fd.add_user("mod", moderator=True)

    def grids(self, after: set[str] | None = None) -> list[dict]:
        """Result messages (posted with the bot token, with job buttons) in the art channel."""
        return [
            m for m in self.fd.channel_messages(self.art["id"])
            if "interaction_metadata" not in m and m["attachments"] and m["components"] and (after is None or m["id"] not in after)
        ]

    async def wait_grid(self, before: set[str], timeout: float = GRID_TIMEOUT) -> dict:
        found = await self.fd.wait_for(lambda: self.grids(before), timeout, "a result grid")
        return found[0]

    async def answer(self, record, timeout: float = 30.0) -> dict:
        """The message that answered an interaction (its original response, edited in place)."""
        return await self.fd.wait_for(lambda: record.original_id and self.fd.messages.get(record.original_id)
                                      and not self.fd.messages[record.original_id]["flags"] & (1 << 7)
                                      and self.fd.messages[record.original_id], timeout, "the interaction's answer")

    def job_row(self, job_id: int) -> dict:
        """The job's row, with the parameters of its request (stored as JSON in `request`) as keys of their own."""
        with self.bot.db() as con:
            con.row_factory = sqlite3.Row
            row = con.execute("select * from job where id = ?", (job_id,)).fetchone()
        return {**json.loads(row["request"]), **dict(row)}

    async def wait_status(self, job_id: int, status: str, timeout: float = 30.0) -> dict:
        """Poll the job row until it reaches `status` (the bot writes it just after the Discord call)."""
        deadline = time.monotonic() + timeout
        while True:
            row = self.job_row(job_id)
            if row["status"] == status or time.monotonic() > deadline:
                return row
            await asyncio.sleep(0.1)

    def used(self, user: dict) -> int:
        with self.bot.db() as con:
            row = con.execute("select used from user_quota where user_id = ?", (int(user["id"]),)).fetchone()
        return 0 if row is None else row[0]


@pytest.fixture(scope="session")
def e2e_model(tmp_path_factory) -> tuple[Path, str]:
    return model_in_use(tmp_path_factory.mktemp("e2e-model"))


@contextlib.asynccontextmanager
async def running_e2e(root: Path, model: Path, kind: str, worker_args: str | None = None) -> AsyncIterator[E2E]:
    """The real bot (`python -m bot`) on a FakeDiscord with its local worker, ready once the worker announced its
    model; stopped afterwards, its log printed. `worker_args` replaces WORKER_ARGS (e.g. "--fake-engine 0.01")."""
    async with FakeDiscord() as fd:
        bot = BotProcess(fd, root / "data", model, root / "bot.log")
        if worker_args is not None:
            bot.env["WORKER_ARGS"] = worker_args
        world = E2E(fd, bot, kind)
        await asyncio.to_thread(bot.sync)
        bot.start()
        started = time.monotonic()
        try:
            await fd.wait_until_ready(60)
            # The bot offers the models whose cards the workers announced: wait for the local worker's (it loads
            # the model first, which takes a while on a CPU).
            await bot.wait_for_log("worker local serves model(s)", GRID_TIMEOUT)
            yield world
        except BaseException:
            print(bot.log()[-5000:])
            raise
        finally:
            code = await asyncio.to_thread(bot.stop)
            world.exit_code = code
            print(f"bot ran {time.monotonic() - started:.0f}s with the {kind} model; exit {code}")
            print(bot.log()[-3000:])


#: The local worker's drain on the bot's stop in the e2e module: a job the stop cuts off is handed back after a
#: second, not the bot's 5 (test_job_running_when_the_bot_stops_is_posted_once_after_it_restarts cuts one off).
E2E_WORKER_ARGS = "--drain-timeout 1"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def e2e(tmp_path_factory, e2e_model):
    model, kind = e2e_model
    async with running_e2e(tmp_path_factory.mktemp("e2e"), model, kind, worker_args=E2E_WORKER_ARGS) as world:
        yield world
