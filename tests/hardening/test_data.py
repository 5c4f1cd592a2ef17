"""Data: the database and the image files survive a crash mid-write, a full disk refunds the job and tells its
owner, and the backup/restore commands give back a consistent data folder, also when the backup is taken while
the bot writes.

- Every connection runs SQLite in WAL mode with synchronous=NORMAL, a busy timeout and foreign keys.
- A process writing jobs, images and quota rows is killed with SIGKILL at random moments: afterwards the database
  passes `integrity_check` and `foreign_key_check`, every job the process saw committed is there, every image row's
  file exists with its sha256, no final image file is partial, the quota counters match the jobs, and the next
  start removes the temporary files the crash left.
- An image write that fails (ENOSPC at any point) leaves no file; a full disk while the bot stores a job's images
  fails the job, refunds it, keeps none of its files and shows the owner why.
- `python -m bot backup` / `restore`: a round trip while a writer runs, a refusal while the bot runs, a refusal of
  a damaged archive (the current data stays as it was).
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import io
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from bot.backup import BackupError, backup, integrity, restore, running_lock
from bot.config import Settings
from bot.services import open_services
from bot.services.images import ImageStore, ImageWriteError
from tests.support.crashwriter import payload
from tests.support.hostile import HostileWorld, open_test_services
from tests.support.natsutil import nats_server_fixture  # noqa: F401 - the nats_server fixture
from tests.support.reliability import soak_runs

ROOT = Path(__file__).resolve().parents[2]


def fresh_data(tmp_path: Path, template: Path, name: str = "data") -> Path:
    data = tmp_path / name
    data.mkdir(parents=True)
    (data / "bot.db").write_bytes(template.read_bytes())
    return data


def settings_for(data: Path, **kw) -> Settings:
    return Settings(_env_file=None, data_dir=data, **kw)


# --- SQLite settings ------------------------------------------------------------------------------------------
async def test_every_connection_uses_wal_normal_sync_and_a_busy_timeout(tmp_path, migrated_template):
    """The connections the bot opens (several at once, as under load) all carry the pragmas; the file is in WAL."""
    data = fresh_data(tmp_path, migrated_template)
    async with open_services(settings_for(data), run_migrations=False) as services:
        engine = services.engine
        conns = [await engine.connect() for _ in range(3)]
        try:
            for conn in conns:
                pragmas = {p: (await conn.exec_driver_sql(f"PRAGMA {p}")).scalar()
                           for p in ("journal_mode", "synchronous", "busy_timeout", "foreign_keys")}
                assert pragmas["journal_mode"] == "wal"
                assert pragmas["synchronous"] in (1, 2)  # NORMAL or FULL
                assert pragmas["busy_timeout"] >= 5000 and pragmas["foreign_keys"] == 1
        finally:
            for conn in conns:
                await conn.close()
        await services.jobs.create(1, 2, 3, [], prompt="x", steps=4, width=64, height=64, num_images=1)
    con = sqlite3.connect(data / "bot.db")
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"  # stored in the file itself
    con.close()


# --- image writes that fail ---------------------------------------------------------------------------------------
FAIL_POINTS = ["mkdir", "mkstemp", "write", "fsync", "replace"]


@pytest.mark.parametrize("point", FAIL_POINTS)
def test_an_image_write_that_fails_leaves_no_file(tmp_path, monkeypatch, point):
    """ENOSPC at any step of a write raises ImageWriteError (disk full, in words) and leaves nothing behind."""
    store = ImageStore(tmp_path)
    if point != "mkdir":
        (tmp_path / "images" / "0").mkdir(parents=True)
    enospc = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def fail(*a, **k):
        raise enospc

    if point == "mkdir":
        monkeypatch.setattr(Path, "mkdir", fail)
    elif point == "mkstemp":
        monkeypatch.setattr("tempfile.mkstemp", fail)
    elif point == "write":
        real_fdopen = os.fdopen

        class HalfWriter:
            def __init__(self, fh):
                self.fh = fh

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.fh.close()

            def write(self, data):
                self.fh.write(data[: len(data) // 2])
                self.fh.flush()
                raise enospc

            def __getattr__(self, name):
                return getattr(self.fh, name)

        monkeypatch.setattr(os, "fdopen", lambda fd, mode: HalfWriter(real_fdopen(fd, mode)))
    elif point == "fsync":
        monkeypatch.setattr(os, "fsync", fail)
    elif point == "replace":
        monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(ImageWriteError) as raised:
        store.save(7, 0, b"x" * 100_000)
    monkeypatch.undo()
    assert raised.value.disk_full and "disk is full" in str(raised.value)
    leftovers = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert leftovers == []


def test_start_removes_temporary_files_a_crash_left(tmp_path):
    store = ImageStore(tmp_path)
    store.save(1, 0, b"kept")
    folder = tmp_path / "images" / "0"
    (folder / ".1_1.png.abc123.tmp").write_bytes(b"half")
    assert store.sweep_temp() == 1
    assert sorted(p.name for p in folder.iterdir()) == ["1_0.png"]


# --- kill -9 mid-write --------------------------------------------------------------------------------------------
def check_data_folder(data: Path, committed: set[int]) -> list[str]:
    """Everything that must hold in a data folder after a crash; returns the problems found."""
    problems = []
    con = sqlite3.connect(data / "bot.db")  # opening recovers the WAL
    try:
        check = con.execute("PRAGMA integrity_check").fetchone()[0]
        if check != "ok":
            problems.append(f"integrity_check: {check}")
        if con.execute("PRAGMA foreign_key_check").fetchall():
            problems.append("foreign_key_check found orphans")
        status = dict(con.execute("SELECT id, status FROM job").fetchall())
        for job_id in committed:
            if status.get(job_id) not in ("succeeded", "failed"):
                problems.append(f"job {job_id} was committed but is {status.get(job_id)}")
        for path, sha in con.execute("SELECT path, sha256 FROM image"):
            file = data / path
            if not file.is_file():
                problems.append(f"image row {path} has no file")
            elif hashlib.sha256(file.read_bytes()).hexdigest() != sha:
                problems.append(f"image {path} does not match its sha256")
        active = dict(((g, u), n) for g, u, n in con.execute(
            "SELECT guild_id, user_id, count(*) FROM job WHERE status IN ('queued', 'running') GROUP BY 1, 2"))
        charged = dict(((g, u), n) for g, u, n in con.execute(
            "SELECT guild_id, user_id, sum(cost) FROM job WHERE charge_state IN ('reserved', 'committed') GROUP BY 1, 2"))
        for g, u, used, act in con.execute("SELECT guild_id, user_id, used, active FROM user_quota"):
            if act != active.get((g, u), 0) or used != charged.get((g, u), 0):
                problems.append(f"quota of user {u}: used {used} active {act}, jobs say {charged.get((g, u), 0)} "
                                f"and {active.get((g, u), 0)}")
    finally:
        con.close()
    for file in (data / "images").rglob("*.png"):
        job_id, index = (int(x) for x in file.stem.split("_"))
        if file.read_bytes() != payload(job_id, index):
            problems.append(f"{file.name} is partial or wrong")
    return problems


def test_kill_9_mid_write_leaves_a_sound_database_and_whole_files(tmp_path, migrated_template, reliability):
    """A writer killed with SIGKILL at random moments, again and again on the same data folder."""
    runs = soak_runs(6, 60)
    rng = random.Random(9)
    data = fresh_data(tmp_path, migrated_template)
    failures = 0
    committed: set[int] = set()
    temp_seen = 0
    try:
        for _ in range(runs):
            proc = subprocess.Popen([sys.executable, "-m", "tests.support.crashwriter", str(data)], cwd=ROOT,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            assert proc.stdout.readline().strip() == "READY", proc.stderr.read()
            time.sleep(rng.uniform(0.05, 1.2))
            proc.send_signal(signal.SIGKILL)
            out, _ = proc.communicate(timeout=30)
            committed |= {int(line.split()[1]) for line in out.splitlines() if line.startswith("COMMITTED")}
            temp_seen += len(list((data / "images").rglob(".*.tmp")))
            problems = check_data_folder(data, committed)
            failures += bool(problems)
            assert not problems, problems
        # The next start (migrations, temporary files swept) works on what the crashes left.
        async def start() -> int:
            async with open_services(settings_for(data)) as services:
                job = await services.jobs.create(1000, 2000, 9, [], prompt="after", steps=4, width=64, height=64,
                                                 num_images=1)
                return job.id

        assert asyncio.run(start()) > max(committed, default=0)
        assert list((data / "images").rglob(".*.tmp")) == []
    finally:
        reliability.record("data: kill -9 mid-write (database + image files)", runs=runs, failures=failures,
                           note=f"{len(committed)} jobs committed; {temp_seen} temporary file(s) seen after kills, "
                                "swept at start")


# --- disk full while storing a job's images ------------------------------------------------------------------------
async def test_disk_full_when_storing_images_fails_the_job_refunds_it_and_keeps_nothing(
    tmp_path, migrated_template, nats_server, reliability, monkeypatch
):
    """The dispatcher gets a finished job but its second image hits ENOSPC: the job fails with a reason that says
    the disk is full, the reservation is refunded, no file of the job stays, the owner's message is updated (the
    listener is called) and the outcome is not retried for ever."""
    from bot.dispatch import Dispatcher
    from generation.worker.fake_engine import FakeEngine
    from tests.bot.dispatch.conftest import RecordingListener, wait_until
    from tests.bot.dispatch.test_dispatcher import InProcessWorker
    from tests.support.natsutil import FAST

    runs = soak_runs(3, 20)
    failures = 0
    async with open_test_services(tmp_path, migrated_template, default_images_per_day=1000,
                                  default_max_concurrent=100) as (settings, services):
        real_save = services.images.save
        calls = {"n": 0}

        def full_on_second(job_id, index, data, **kw):
            calls["n"] += 1
            if index == 1:
                raise ImageWriteError(services.images.relative_path(job_id, index),
                                      OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
            return real_save(job_id, index, data, **kw)

        monkeypatch.setattr(services.images, "save", full_on_second)
        listener = RecordingListener()
        d = Dispatcher(nats_server.url, services.jobs, services.images, config=FAST, listener=listener)
        async with InProcessWorker(nats_server, FakeEngine(0.001)):
            await d.start()
            try:
                for i in range(runs):
                    job = await services.jobs.create(1000, 2000, 7, [], prompt=f"full disk {i}", steps=2, width=64,
                                                     height=64, num_images=2)
                    await d.publish(job)
                    await wait_until(lambda j=job: _status(services, j.id, "failed"), timeout=20)
                    await d.drain_listeners()
                    done = await services.jobs.get(job.id)
                    ok = ("disk is full" in (done.error or "") and str(done.charge_state) == "refunded"
                          and not done.images and listener.finished(job.id) == 1
                          and not list((settings.data_dir / "images").rglob(f"{job.id}_*")))
                    failures += not ok
                    assert ok, (done, listener.calls)
                saves = calls["n"]
                await asyncio.sleep(3 * FAST.ack_wait)  # a retried outcome would save again
                assert calls["n"] == saves
                status = await services.quota.status(1000, 7, [])
                assert status.used == 0 and status.active == 0
            finally:
                await d.close()
    reliability.record("data: disk full (ENOSPC) while storing a job's images", runs=runs, failures=failures,
                       note="job failed + refunded, no file kept, owner told")


async def _status(services, job_id: int, status: str) -> bool:
    return str((await services.jobs.get(job_id)).status) == status


def test_the_owner_sees_why_a_disk_full_job_failed(tmp_path, migrated_template):
    """The failure reason the dispatcher stores is shown on the owner's job message, which says nothing was
    charged and pings nobody."""
    with HostileWorld(tmp_path, migrated_template) as hw:
        w = hw.w
        outcome = hw.run(hw.slash(w.alice, "imagine", {"prompt": "a red circle", "count": 2}))
        job = outcome.new_jobs[0]
        reason = str(ImageWriteError("images/0/1_1.png", OSError(errno.ENOSPC, "No space left on device")))
        hw.run(w.services.jobs.fail(job.id, f"{reason}; please try again later"))

        async def present():
            await w.bot.presenter.job_finished(job.id)
            await w.env.settle()

        hw.run(present())
        shown = outcome.replies[0].message
        message = next(m for m in w.art.history() if m.id == shown.id)
        text = message.embeds[0].description
        assert "disk is full" in text and "not charged" in text
        assert hw.run(w.services.quota.status(w.guild.id, w.alice.id, [])).used == 0


# --- backup and restore ------------------------------------------------------------------------------------------
async def fill(data: Path, n: int) -> None:
    """`n` finished jobs of one image each, written the way the bot writes them."""
    async with open_services(settings_for(data), run_migrations=False) as s:
        for i in range(n):
            job = await s.jobs.create(1, 2, 3, [], prompt=f"p{i}", steps=4, width=64, height=64, num_images=1)
            await s.jobs.start(job.id)
            stored = s.images.save(job.id, 0, payload(job.id, 0))
            await s.jobs.succeed(job.id, [(0, job.seed, stored.path, stored.sha256)])


def run_cli(*args: str, data: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "DATA_DIR": str(data), "DATABASE_URL": "", "DISCORD_TOKEN": "", "LOG_LEVEL": "INFO"}
    return subprocess.run([sys.executable, "-m", "bot", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)


def test_backup_while_writing_then_restore_gives_a_consistent_data_folder(tmp_path, migrated_template, reliability):
    """Backups taken while a writer keeps adding jobs and images restore into folders that pass every check; the
    restored database names only files the backup holds, whole."""
    runs = soak_runs(3, 20)
    data = fresh_data(tmp_path, migrated_template)
    writer = subprocess.Popen([sys.executable, "-m", "tests.support.crashwriter", str(data)], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    failures = 0
    jobs_seen = []
    try:
        assert writer.stdout.readline().strip() == "READY"
        for i in range(runs):
            time.sleep(0.3)
            made = backup(data, settings_for(data).database_url, tmp_path / "backups")
            target = tmp_path / f"restored{i}"
            target.mkdir()
            done = restore(made.path, target, settings_for(target).database_url)
            problems = check_data_folder(target, set())
            jobs_seen.append(done.jobs)
            failures += bool(problems) or made.missing != () or done.jobs == 0
            assert not problems and made.missing == () and done.jobs > 0, (problems, made)
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.communicate(timeout=30)
        reliability.record("data: backup while writing, then restore", runs=runs, failures=failures,
                           note=f"jobs in the backups: {jobs_seen}")
    assert jobs_seen == sorted(jobs_seen)


def test_backup_and_restore_commands_round_trip(tmp_path, migrated_template):
    """`python -m bot backup --to DIR` then `restore PATH` on a changed folder: the data is back, the changed one is
    kept aside, and the restored folder works with the bot's services."""
    data = fresh_data(tmp_path, migrated_template)
    asyncio.run(fill(data, 3))
    made = run_cli("backup", "--to", str(tmp_path / "bk"), data=data)
    assert made.returncode == 0 and "3 job(s)" in made.stdout, made.stderr
    archive = next((tmp_path / "bk").glob("imaginebot-backup-*.tar.gz"))
    asyncio.run(fill(data, 2))  # changes after the backup
    restored = run_cli("restore", str(archive), data=data)
    assert restored.returncode == 0 and "restored 3 job(s)" in restored.stdout, restored.stderr
    assert check_data_folder(data, set()) == []
    aside = next(data.glob("before-restore-*"))
    assert (aside / "bot.db").exists() and len(list((aside / "images").rglob("*.png"))) == 5
    con = sqlite3.connect(data / "bot.db")
    assert con.execute("SELECT count(*) FROM job").fetchone()[0] == 3
    con.close()
    asyncio.run(fill(data, 1))  # the bot's services work on the restored folder


def test_restore_refuses_while_the_bot_runs_and_a_damaged_backup(tmp_path, migrated_template):
    """Restore refuses while the data folder's lock is held (unless --force), and refuses damaged archives;
    either way the current data stays as it was."""
    data = fresh_data(tmp_path, migrated_template)
    url = settings_for(data).database_url
    asyncio.run(fill(data, 1))
    good = backup(data, url, tmp_path / "bk").path
    before = (data / "bot.db").read_bytes()

    # A running bot (another process holding the lock).
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from bot.backup import running_lock\n"
         "with running_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)", str(data)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        refused = run_cli("restore", str(good), data=data)
        assert refused.returncode == 1 and "seems to be running" in refused.stderr and "--force" in refused.stderr
        assert (data / "bot.db").read_bytes() == before
        forced = run_cli("restore", str(good), "--force", data=data)
        assert forced.returncode == 0, forced.stderr
    finally:
        holder.kill()
        holder.wait()
    with running_lock(data), pytest.raises(BackupError, match="seems to be running"):
        restore(good, data, url)

    # Damaged archives: truncated; an image that does not match its sha256.
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    tampered = tmp_path / "tampered.tar.gz"
    with tarfile.open(good) as src, tarfile.open(tampered, "w:gz") as dst:
        for member in src.getmembers():
            blob = src.extractfile(member).read() if member.isfile() else None
            if member.name.endswith(".png"):
                blob = b"tampered"
                member.size = len(blob)
            dst.addfile(member, None if blob is None else io.BytesIO(blob))
    current = (data / "bot.db").read_bytes()
    for bad, why in ((truncated, "not a readable backup"), (tampered, "missing or damaged")):
        with pytest.raises(BackupError, match=why):
            restore(bad, data, url)
        assert (data / "bot.db").read_bytes() == current and integrity(data / "bot.db") == "ok"


def test_backup_names_what_it_cannot_do(tmp_path):
    """Only a SQLite file can be backed up; a missing database or backup is named."""
    with pytest.raises(BackupError, match="only a SQLite database file"):
        backup(tmp_path, "postgresql://u:secret@db/bot")
    with pytest.raises(BackupError, match="there is no database"):
        backup(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'nothing.db'}", tmp_path / "bk")
    with pytest.raises(BackupError, match="there is no backup"):
        restore(tmp_path / "nope.tar.gz", tmp_path / "data", f"sqlite+aiosqlite:///{tmp_path / 'data' / 'bot.db'}")
