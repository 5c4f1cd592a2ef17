"""Backups: rotation (`--keep N`), job ids that never repeat across a restore, and private files (umask 077, data
folder 0700, database, images and archives 0600)."""

from __future__ import annotations

import asyncio
import io
import json
import os
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from bot.__main__ import UMASK, parse_args, secure_data_dir
from bot.backup import (
    ARCHIVE_PREFIX,
    JOB_ID_MARGIN,
    BackupError,
    backup,
    job_id_mark,
    made_by_backup,
    restore,
    running_lock,
)
from bot.config import Settings
from bot.db.migrate import downgrade_sync, upgrade_sync
from bot.services import open_services

ROOT = Path(__file__).resolve().parents[2]


def fresh_data(tmp_path: Path, template: Path, name: str = "data") -> Path:
    data = tmp_path / name
    data.mkdir(parents=True)
    (data / "bot.db").write_bytes(template.read_bytes())
    return data


def settings_for(data: Path) -> Settings:
    return Settings(_env_file=None, data_dir=data)


async def add_jobs(data: Path, n: int) -> list[int]:
    """`n` finished jobs of one image each, written the way the bot writes them; returns their ids."""
    ids = []
    async with open_services(settings_for(data), run_migrations=False) as s:
        for i in range(n):
            job = await s.jobs.create(1, 2, 3, [], prompt=f"p{i}", steps=4, width=64, height=64, num_images=1)
            await s.jobs.start(job.id)
            stored = s.images.save(job.id, 0, b"\x89PNG job %d" % job.id)
            await s.jobs.succeed(job.id, [(0, job.seed, stored.path, stored.sha256)])
            ids.append(job.id)
    return ids


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- rotation ---------------------------------------------------------------------------------------------------
def test_keep_deletes_only_the_oldest_archives_this_tool_made(tmp_path, migrated_template):
    """With --keep 2 the new archive and the newest older one stay; older archives of this tool go; files it did not
    make stay, also when named like its archives."""
    data = fresh_data(tmp_path, migrated_template)
    url = settings_for(data).database_url
    folder = tmp_path / "backups"
    ours = [backup(data, url, folder / f"{ARCHIVE_PREFIX}2025010{d}-000000.tar.gz").path for d in (1, 2, 3)]
    # Not ours: a look-alike name that is no archive, an archive whose first member is not our manifest, another
    # name, our own archive under another name, notes.
    (folder / f"{ARCHIVE_PREFIX}20240101-000000.tar.gz").write_bytes(b"not an archive")
    foreign = folder / f"{ARCHIVE_PREFIX}20240102-000000.tar.gz"
    with tarfile.open(foreign, "w:gz") as tar:
        blob = json.dumps({"format": 1}).encode()
        info = tarfile.TarInfo("notes.json")
        info.size = len(blob)
        tar.addfile(info, io.BytesIO(blob))
    renamed = folder / "my-copy.tar.gz"
    renamed.write_bytes(ours[0].read_bytes())
    (folder / "notes.txt").write_text("keep me")
    others = sorted(p.name for p in folder.iterdir() if p not in ours)

    done = backup(data, url, folder, keep=2)

    assert sorted(p.name for p in done.rotated) == sorted(p.name for p in ours[:2])
    assert done.path.exists() and ours[2].exists() and not ours[0].exists() and not ours[1].exists()
    left = sorted(p.name for p in folder.iterdir())
    assert left == sorted([*others, done.path.name, ours[2].name])
    assert made_by_backup(done.path) and not made_by_backup(foreign) and not made_by_backup(renamed)

    again = backup(data, url, folder, keep=1)
    # (Two backups within one second get the same name: the second replaces the first.)
    gone = {ours[2].name} | ({done.path.name} if done.path != again.path else set())
    assert {p.name for p in again.rotated} == gone
    assert sorted(p.name for p in folder.iterdir()) == sorted([*others, again.path.name])


def test_keep_must_be_one_or_more(tmp_path, migrated_template, capsys):
    data = fresh_data(tmp_path, migrated_template)
    for bad in (0, -1, True):
        with pytest.raises(BackupError, match=f"--keep must be .*not {bad!r}"):
            backup(data, settings_for(data).database_url, tmp_path / "bk", keep=bad)
    assert not (tmp_path / "bk").exists()
    with pytest.raises(SystemExit):
        parse_args(["backup", "--keep", "0"])
    assert "--keep takes a whole number of archives, 1 or more, not '0'" in capsys.readouterr().err
    assert parse_args(["backup", "--keep", "3"]).keep == 3


# --- job ids across a restore ------------------------------------------------------------------------------------
def test_a_restored_backup_never_reuses_a_job_id(tmp_path, migrated_template):
    """Jobs 1-3, a backup, jobs 4-6, the backup restored: the next job's id is above 6 (AUTOINCREMENT alone would
    give 4 again, its mark coming back with the backup)."""
    data = fresh_data(tmp_path, migrated_template)
    url = settings_for(data).database_url
    first = asyncio.run(add_jobs(data, 3))
    archive = backup(data, url, tmp_path / "bk").path
    later = asyncio.run(add_jobs(data, 3))
    assert job_id_mark(data / "bot.db") == later[-1]

    done = restore(archive, data, url)

    assert done.jobs == 3 and done.next_job_id == later[-1] + JOB_ID_MARGIN + 1
    new = asyncio.run(add_jobs(data, 1))
    assert new[0] == done.next_job_id and new[0] > max(first + later)


def test_a_backup_from_before_0006_is_migrated_and_keeps_the_mark(tmp_path, migrated_template):
    """A backup of a database at revision 0005 (no AUTOINCREMENT, no sqlite_sequence): restore migrates it and sets
    its mark, so its next job id is still above every id the current database gave."""
    data = fresh_data(tmp_path, migrated_template)
    url = settings_for(data).database_url
    asyncio.run(add_jobs(data, 2))
    downgrade_sync(url, "0005")
    archive = backup(data, url, tmp_path / "bk").path
    upgrade_sync(url)
    later = asyncio.run(add_jobs(data, 2))

    done = restore(archive, data, url)

    assert done.revision == "0005" and done.next_job_id == later[-1] + JOB_ID_MARGIN + 1
    assert asyncio.run(add_jobs(data, 1))[0] == done.next_job_id


def test_restoring_into_an_empty_folder_or_over_an_unreadable_database_still_works(tmp_path, migrated_template):
    """No current database (a new machine), or one that is damaged (why one restores): nothing to carry over, the
    backup's own ids continue."""
    data = fresh_data(tmp_path, migrated_template)
    url = settings_for(data).database_url
    ids = asyncio.run(add_jobs(data, 2))
    archive = backup(data, url, tmp_path / "bk").path
    empty = tmp_path / "empty"
    assert restore(archive, empty, settings_for(empty).database_url).next_job_id is None
    assert asyncio.run(add_jobs(empty, 1)) == [ids[-1] + 1]
    (data / "bot.db").write_bytes(b"this is not a database" * 100)
    done = restore(archive, data, url)
    assert done.next_job_id is None and asyncio.run(add_jobs(data, 1)) == [ids[-1] + 1]


# --- file modes --------------------------------------------------------------------------------------------------
@pytest.fixture
def umask_077():
    """The umask `python -m bot` sets at start, for this test only."""
    old = os.umask(UMASK)
    try:
        yield
    finally:
        os.umask(old)


def test_the_bot_keeps_its_files_private(tmp_path, migrated_template, umask_077):
    """At start an older, readable data folder becomes 0700 and its database 0600; under the bot's umask the
    database, its WAL, the image files and folders, the lock, the backup archive and its folder, and everything a
    restore puts in place are the bot's user's alone."""
    old = tmp_path / "old"
    old.mkdir(mode=0o755)
    os.chmod(old, 0o755)
    (old / "bot.db").write_bytes(migrated_template.read_bytes())
    os.chmod(old / "bot.db", 0o644)
    secure_data_dir(settings_for(old))
    assert (mode(old), mode(old / "bot.db")) == (0o700, 0o600)

    data = tmp_path / "fresh" / "data"
    settings = settings_for(data)
    secure_data_dir(settings)
    assert mode(data) == 0o700

    async def start_and_write():
        async with open_services(settings) as s:  # migrates: creates bot.db
            job = await s.jobs.create(1, 2, 3, [], prompt="p", steps=4, width=64, height=64, num_images=1)
            await s.jobs.start(job.id)
            stored = s.images.save(job.id, 0, b"\x89PNG private")
            await s.jobs.succeed(job.id, [(0, job.seed, stored.path, stored.sha256)])
            return s.images.absolute(stored.path), job.id

    image, _ = asyncio.run(start_and_write())
    assert mode(data / "bot.db") == 0o600
    for extra in ("bot.db-wal", "bot.db-shm"):
        if (data / extra).exists():
            assert mode(data / extra) == 0o600
    assert mode(image) == 0o600 and mode(image.parent) == 0o700 and mode(data / "images") == 0o700
    with running_lock(data):
        assert mode(data / "bot.lock") == 0o600

    made = backup(data, settings.database_url)  # the default folder, backups/ next to the data folder
    assert mode(made.path) == 0o600 and mode(made.path.parent) == 0o700

    restore(made.path, data, settings.database_url)
    restored_image = data / image.relative_to(data)
    assert (mode(data), mode(data / "bot.db"), mode(restored_image), mode(restored_image.parent)) == (
        0o700, 0o600, 0o600, 0o700)
    aside = next(data.glob("before-restore-*"))
    assert mode(aside) == 0o700


def test_backup_command_sets_the_umask_and_rotates(tmp_path, migrated_template):
    """`python -m bot backup --keep 1` run from a permissive shell (umask 022): the archive is 0600, the folder 0700,
    and a second run leaves one archive."""
    data = fresh_data(tmp_path, migrated_template)
    asyncio.run(add_jobs(data, 1))
    env = {**os.environ, "DATA_DIR": str(data), "DATABASE_URL": "", "DISCORD_TOKEN": "", "LOG_LEVEL": "INFO"}
    old = os.umask(0o022)
    try:
        for _ in range(2):
            made = subprocess.run([sys.executable, "-m", "bot", "backup", "--keep", "1"], cwd=ROOT, env=env,
                                  capture_output=True, text=True, timeout=120)
            assert made.returncode == 0, made.stderr
    finally:
        os.umask(old)
    folder = tmp_path / "backups"
    archives = list(folder.iterdir())
    assert len(archives) == 1 and mode(archives[0]) == 0o600 and mode(folder) == 0o700
