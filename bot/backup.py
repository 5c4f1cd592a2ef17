"""Backup and restore of the bot's data: the SQLite database and the image files.

    python -m bot backup [--to PATH] [--keep N]   # safe while the bot runs
    python -m bot restore PATH [--force]    # with the bot stopped

Backup
------
1. The database is copied with SQLite's online backup API into a temporary file: one consistent snapshot, taken
   while the bot keeps reading and writing (WAL mode: the bot's writers are not blocked). The copy is switched to
   a plain rollback journal, so it is one self-contained file, and passes `PRAGMA integrity_check`.
2. The image files are added after the snapshot. They are written atomically before the row that names them and
   never changed afterwards, so every image the snapshot refers to is already complete on disk; files that appear
   after the snapshot are included too (harmless: the restored database does not name them). Temporary files of
   writes in progress are left out.
3. Everything goes into `imaginebot-backup-<UTC time>.tar.gz` with a `manifest.json` (time, schema revision,
   counts, the database's sha256), written under a temporary name and renamed when complete.

`--to` names the archive (`…/x.tar.gz`) or a folder for it; the default folder is `backups/` next to the data
folder. Archives are private (0600, the default folder 0700): they hold every prompt and image.

`--keep N` rotates: after the new archive is written, only the newest N archives this tool made in its folder stay
(named `imaginebot-backup-<UTC time>.tar.gz` and opening with this tool's manifest); older ones are deleted. Files it
did not make are never touched.

Restore
-------
Refuses while a bot uses the data folder: `python -m bot` holds a shared lock on `<data_dir>/bot.lock` while it
runs, and restore needs it exclusively (`--force` restores anyway). The archive (or an unpacked backup folder) is
checked first: a manifest, a database that passes `integrity_check` at a schema revision this code knows, and every
image the database names present with its recorded sha256. Then the current database (with its -wal/-shm files),
the images folder and the embedded queue's store (`<data_dir>/nats`, rebuilt from the database at the next start)
are moved into `<data_dir>/before-restore-<time>/`, and the backup's database and images are moved in. Start the
bot afterwards: it migrates an older database and re-queues the jobs that were unfinished when the backup was made.

Job ids never repeat, also across a restore: the job table has AUTOINCREMENT (migration 0006), whose high-water
mark (`sqlite_sequence`) would come back with the older backup. So before anything is moved, restore reads the
largest job id the current database ever gave, and after restoring sets the restored database's mark to at least
that plus `JOB_ID_MARGIN` (a database from before 0006 is migrated first, so that the mark exists). Old messages and
buttons that name a job the backup does not have then never act on a new job.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import re
import shutil
import sqlite3
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

log = logging.getLogger("bot.backup")

FORMAT = 1
MANIFEST = "manifest.json"
DB_NAME = "bot.db"
IMAGES = "images"
LOCK_NAME = "bot.lock"
ARCHIVE_PREFIX = "imaginebot-backup-"
#: The names `backup` gives its archives (what `--keep` may delete).
ARCHIVE_NAME = re.compile(re.escape(ARCHIVE_PREFIX) + r"(?P<stamp>\d{8}-\d{6})\.tar\.gz")
BUSY_TIMEOUT_MS = 15_000
#: How far above the current database's largest job id a restored database's next id starts.
JOB_ID_MARGIN = 1000


class BackupError(Exception):
    """A backup or restore that cannot go on; the message says why and what to do."""


@dataclass(frozen=True)
class BackupResult:
    path: Path
    jobs: int
    images: int
    files: int
    missing: tuple[str, ...]
    seconds: float
    #: Older archives `--keep` deleted.
    rotated: tuple[Path, ...] = ()


@dataclass(frozen=True)
class RestoreResult:
    jobs: int
    images: int
    previous: Path | None
    revision: str | None
    #: The smallest id a new job gets in the restored database (None when there was nothing to carry over).
    next_job_id: int | None = None


# --- where things are ----------------------------------------------------------------------------------------
def database_path(database_url: str) -> Path:
    """The file of a SQLite database URL; BackupError for anything else."""
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        raise BackupError(f"only a SQLite database file can be backed up, not {url.render_as_string(hide_password=True)}")
    return Path(url.database)


def _stamp(at: datetime | None = None) -> str:
    return (at or datetime.now(UTC)).strftime("%Y%m%d-%H%M%S")


def default_backup_dir(data_dir: Path) -> Path:
    return Path(data_dir).resolve().parent / "backups"


def _archive_path(to: Path | None, data_dir: Path) -> Path:
    if to is not None and (str(to).endswith(".tar.gz") or str(to).endswith(".tgz")):
        return Path(to)
    folder = Path(to) if to is not None else default_backup_dir(data_dir)
    return folder / f"{ARCHIVE_PREFIX}{_stamp()}.tar.gz"


# --- the lock a running bot holds --------------------------------------------------------------------------------
@contextlib.contextmanager
def running_lock(data_dir: Path) -> Iterator[None]:
    """Held (shared) by `python -m bot` while it runs, so a restore can tell that the data folder is in use. Several
    bots may share it; the lock goes away with the process, however it ends."""
    import fcntl

    Path(data_dir).mkdir(parents=True, exist_ok=True)
    fd = os.open(Path(data_dir) / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)  # waits while a restore holds it exclusively
        with contextlib.suppress(OSError):
            os.pwrite(fd, f"{os.getpid()}\n".encode().ljust(16), 0)
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def exclusive_lock(data_dir: Path, *, force: bool = False) -> Iterator[None]:
    """The data folder for this process alone: BackupError if a bot holds `running_lock` (unless `force`)."""
    import fcntl

    Path(data_dir).mkdir(parents=True, exist_ok=True)
    path = Path(data_dir) / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not force:
                pid = os.pread(fd, 16, 0).decode(errors="replace").strip() or "?"
                raise BackupError(
                    f"the bot seems to be running on {data_dir} (process {pid} holds {path}); stop it first, "
                    "or pass --force to restore anyway"
                ) from None
            log.warning("restoring although %s is held (--force)", path)
        yield
    finally:
        os.close(fd)


# --- database helpers ------------------------------------------------------------------------------------------
def integrity(db: Path) -> str:
    """`PRAGMA integrity_check` of a database file ("ok" when sound)."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = con.execute("PRAGMA integrity_check").fetchall()
    except sqlite3.DatabaseError as exc:
        return str(exc)
    finally:
        con.close()
    return "; ".join(r[0] for r in rows)


def _snapshot(src_path: Path, dst_path: Path) -> None:
    """A consistent copy of a live database (online backup API), as one file with a rollback journal."""
    if not src_path.exists():
        raise BackupError(f"there is no database at {src_path}")
    src = sqlite3.connect(f"file:{src_path}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_MS / 1000)
    dst = sqlite3.connect(dst_path)
    try:
        src.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        src.backup(dst)  # all pages in one step: one read transaction, one moment
        dst.execute("PRAGMA journal_mode=DELETE")
        dst.commit()
    finally:
        dst.close()
        src.close()


def _facts(db: Path) -> dict[str, Any]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        def one(sql: str) -> Any:
            try:
                row = con.execute(sql).fetchone()
            except sqlite3.DatabaseError:
                return None
            return None if row is None else row[0]

        # An image whose file the retention sweeper removed keeps its row with an empty path: no file to carry.
        images = con.execute("SELECT path, sha256 FROM image WHERE path != ''").fetchall() if one(
            "SELECT name FROM sqlite_master WHERE type='table' AND name='image'") else []
        return {
            "revision": one("SELECT version_num FROM alembic_version"),
            "jobs": one("SELECT count(*) FROM job") or 0,
            "images": images,
        }
    finally:
        con.close()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _is_temp(name: str) -> bool:
    return name.startswith(".") and name.endswith(".tmp")


# --- backup ------------------------------------------------------------------------------------------------------
def backup(data_dir: Path, database_url: str, to: Path | None = None, *, keep: int | None = None) -> BackupResult:
    """Write a backup archive of the database and the images (see the module docstring); returns what it holds.
    With `keep`, only the newest `keep` archives this tool made in the archive's folder stay (`rotate`)."""
    if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 1):
        raise BackupError(f"--keep must be a whole number of archives, 1 or more, not {keep!r}")
    t0 = time.monotonic()
    data_dir = Path(data_dir)
    db = database_path(database_url)
    target = _archive_path(to, data_dir)
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if to is None:  # the default folder is the bot's own: private
        os.chmod(target.parent, 0o700)
    with tempfile.TemporaryDirectory(prefix=".backup-", dir=target.parent) as tmp:
        copy = Path(tmp) / DB_NAME
        _snapshot(db, copy)
        check = integrity(copy)
        if check != "ok":
            raise BackupError(f"the database copy fails its integrity check ({check}); the database needs repair")
        facts = _facts(copy)
        images_dir = data_dir / IMAGES
        named = {path for path, _ in facts["images"]}
        files: list[tuple[Path, str]] = []
        if images_dir.is_dir():
            for path in sorted(images_dir.rglob("*")):
                if path.is_file() and not _is_temp(path.name):
                    files.append((path, path.relative_to(data_dir).as_posix()))
        present = {arc for _, arc in files}
        missing = tuple(sorted(named - present))
        manifest = {
            "format": FORMAT,
            "created_at": datetime.now(UTC).isoformat(),
            "revision": facts["revision"],
            "jobs": facts["jobs"],
            "images": len(named),
            "files": len(files),
            "missing": list(missing),
            "database_sha256": _sha256(copy),
        }
        partial = target.with_name(target.name + ".partial")
        # Private from the first byte: the archive holds every prompt and image.
        os.close(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
        os.chmod(partial, 0o600)
        with tarfile.open(partial, "w:gz", compresslevel=1) as tar:
            data = json.dumps(manifest, indent=2).encode()
            info = tarfile.TarInfo(MANIFEST)
            info.size, info.mtime = len(data), int(time.time())
            tar.addfile(info, io.BytesIO(data))
            tar.add(copy, DB_NAME)
            for path, arc in files:
                with contextlib.suppress(FileNotFoundError):  # deleted meanwhile: not named by the snapshot
                    tar.add(path, arc)
        with open(partial, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(partial, target)
    if missing:
        log.warning("backup %s: %d image file(s) named by the database were missing: %s", target, len(missing),
                    ", ".join(missing[:5]))
    rotated = tuple(rotate(target.parent, keep, made=target)) if keep is not None else ()
    return BackupResult(target, facts["jobs"], len(named), len(files), missing, round(time.monotonic() - t0, 2),
                        rotated)


def made_by_backup(path: Path) -> bool:
    """Whether `path` is an archive this tool wrote: its name (`imaginebot-backup-<UTC time>.tar.gz`) and a first
    member `manifest.json` with this tool's format."""
    if not path.is_file() or path.is_symlink() or ARCHIVE_NAME.fullmatch(path.name) is None:
        return False
    try:
        with tarfile.open(path, "r:gz") as tar:
            first = tar.next()
            if first is None or first.name != MANIFEST or not first.isfile() or first.size > 1 << 20:
                return False
            fh = tar.extractfile(first)
            manifest = json.loads(fh.read()) if fh is not None else None
    except (tarfile.TarError, OSError, EOFError, ValueError):
        return False
    return isinstance(manifest, dict) and manifest.get("format") == FORMAT and "database_sha256" in manifest


def rotate(folder: Path, keep: int, *, made: Path | None = None) -> list[Path]:
    """Delete all but the newest `keep` archives this tool made in `folder` (newest by the time in their names);
    `made`, the archive just written, always stays. Returns the deleted archives."""
    if keep < 1:
        raise BackupError(f"--keep must be 1 or more archives, not {keep}")
    ours = sorted((p for p in Path(folder).iterdir() if made_by_backup(p)),
                  key=lambda p: (ARCHIVE_NAME.fullmatch(p.name)["stamp"], p.name), reverse=True)  # type: ignore[index]
    kept = ours[:keep]
    if made is not None and made in ours and made not in kept:
        kept = [made, *kept[: keep - 1]]
    deleted = []
    for old in ours:
        if old in kept:
            continue
        try:
            old.unlink()
            deleted.append(old)
        except OSError as exc:
            log.warning("backup rotation: could not delete %s (%s)", old, exc)
    if deleted:
        log.info("backup rotation: kept %d archive(s), deleted %d: %s", len(kept), len(deleted),
                 ", ".join(p.name for p in deleted))
    return deleted


# --- restore -----------------------------------------------------------------------------------------------------
def _unpack(source: Path, into: Path) -> Path:
    if source.is_dir():
        return source
    if not source.is_file():
        raise BackupError(f"there is no backup at {source}")
    try:
        with tarfile.open(source, "r:*") as tar:
            tar.extractall(into, filter="data")  # refuses absolute paths, '..', links out of the folder
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BackupError(f"{source} is not a readable backup archive ({exc})") from exc
    return into


def verify(folder: Path) -> dict[str, Any]:
    """Check an unpacked backup; returns its manifest plus `revision` and counts. BackupError when unsound."""
    manifest_path = folder / MANIFEST
    db = folder / DB_NAME
    if not manifest_path.is_file() or not db.is_file():
        raise BackupError(f"{folder} is not a backup made by `python -m bot backup` (no {MANIFEST} or {DB_NAME})")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("format") != FORMAT:
        raise BackupError(f"backup format {manifest.get('format')!r} is not known to this version (expected {FORMAT})")
    check = integrity(db)
    if check != "ok":
        raise BackupError(f"the backup's database fails its integrity check: {check}")
    if manifest.get("database_sha256") and _sha256(db) != manifest["database_sha256"]:
        raise BackupError("the backup's database does not match the checksum in its manifest (damaged archive)")
    facts = _facts(db)
    if facts["revision"] is not None:
        from alembic.script import ScriptDirectory

        from bot.db.migrate import alembic_config

        try:
            ScriptDirectory.from_config(alembic_config("sqlite://")).get_revision(facts["revision"])
        except Exception:
            raise BackupError(
                f"the backup's database is at schema revision {facts['revision']}, which this version of the bot "
                "does not know (a backup of a newer version?)"
            ) from None
    bad = []
    for path, sha in facts["images"]:
        file = folder / path
        if not file.is_file():
            bad.append(f"{path} (missing)")
        elif _sha256(file) != sha:
            bad.append(f"{path} (damaged)")
    if bad:
        raise BackupError(f"{len(bad)} image file(s) of the backup are missing or damaged: {', '.join(bad[:5])}")
    return manifest | {"revision": facts["revision"], "jobs": facts["jobs"], "images": len(facts["images"])}


def _move(src: Path, dst: Path) -> None:
    dst.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    shutil.move(str(src), str(dst))


def job_id_mark(db: Path) -> int:
    """The largest job id the database at `db` ever gave (its AUTOINCREMENT mark or its largest id); 0 when there is
    no such database or it cannot be read (a damaged database is often why one restores: logged, not fatal)."""
    if not db.is_file():
        return 0
    try:
        con = sqlite3.connect(db, timeout=BUSY_TIMEOUT_MS / 1000)
        try:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            mark = 0
            if "job" in tables:
                mark = con.execute("SELECT coalesce(max(id), 0) FROM job").fetchone()[0]
            if "sqlite_sequence" in tables:
                row = con.execute("SELECT seq FROM sqlite_sequence WHERE name = 'job'").fetchone()
                mark = max(mark, row[0] if row and row[0] is not None else 0)
            return int(mark)
        finally:
            con.close()
    except sqlite3.DatabaseError as exc:
        log.warning("restore: could not read the largest job id of %s (%s); ids continue from the backup's", db, exc)
        return 0


def _has_autoincrement(db: Path) -> bool:
    con = sqlite3.connect(db)
    try:
        row = con.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'job'").fetchone()
    finally:
        con.close()
    return row is not None and "AUTOINCREMENT" in (row[0] or "").upper()


def _migrate_in_thread(database_url: str) -> None:
    """`alembic upgrade head` of the restored database (env.py runs its own event loop, so never on the caller's)."""
    import concurrent.futures

    from bot.db.migrate import upgrade_sync

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(upgrade_sync, database_url).result()


def keep_job_ids_apart(db: Path, database_url: str, mark: int) -> int | None:
    """Make the restored database at `db` give new jobs ids above `mark` (+ JOB_ID_MARGIN) and above every id it
    holds; returns the next id, or None when there is no mark to keep. Migrates it first when its job table has no
    AUTOINCREMENT yet (before 0006), so that SQLite keeps the mark from then on."""
    if mark <= 0:
        return None
    if not _has_autoincrement(db):
        _migrate_in_thread(database_url)
    floor = mark + JOB_ID_MARGIN
    con = sqlite3.connect(db)
    try:
        with con:
            own = con.execute("SELECT coalesce(max(id), 0) FROM job").fetchone()[0]
            floor = max(floor, own)
            row = con.execute("SELECT seq FROM sqlite_sequence WHERE name = 'job'").fetchone()
            if row is None:
                con.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('job', ?)", (floor,))
            elif (row[0] or 0) < floor:
                con.execute("UPDATE sqlite_sequence SET seq = ? WHERE name = 'job'", (floor,))
            else:
                floor = row[0]
    finally:
        con.close()
    return floor + 1


def make_private(data_dir: Path, db: Path) -> None:
    """Folders 0700 and files 0600 for what restore put in place (the database and the images)."""
    for path in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        if path.exists():
            os.chmod(path, 0o600)
    os.chmod(data_dir, 0o700)
    images = data_dir / IMAGES
    if images.is_dir():
        os.chmod(images, 0o700)
        for root, dirs, files in os.walk(images):
            for name in dirs:
                os.chmod(os.path.join(root, name), 0o700)
            for name in files:
                os.chmod(os.path.join(root, name), 0o600)


def restore(source: Path, data_dir: Path, database_url: str, *, force: bool = False) -> RestoreResult:
    """Put a backup's database and images in place of the current ones (see the module docstring)."""
    data_dir = Path(data_dir)
    db = database_path(database_url)
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    with exclusive_lock(data_dir, force=force), tempfile.TemporaryDirectory(prefix=".restore-", dir=data_dir) as tmp:
        folder = _unpack(Path(source), Path(tmp))
        facts = verify(folder)
        # The largest job id given so far, read before the current database goes aside (see the docstring).
        mark = job_id_mark(db)
        aside = data_dir / f"before-restore-{_stamp()}"
        moved = False
        for item in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm"), data_dir / IMAGES,
                     data_dir / "nats"):
            if item.exists():
                _move(item, aside / ("db" if item.parent != data_dir else "") / item.name)
                moved = True
        db.parent.mkdir(parents=True, exist_ok=True)
        if folder == Path(tmp):
            _move(folder / DB_NAME, db)
            if (folder / IMAGES).exists():
                _move(folder / IMAGES, data_dir / IMAGES)
        else:  # an unpacked folder given by the user: copy, leave it as it was
            shutil.copy2(folder / DB_NAME, db)
            if (folder / IMAGES).exists():
                shutil.copytree(folder / IMAGES, data_dir / IMAGES, ignore=shutil.ignore_patterns(".*.tmp"))
        (data_dir / IMAGES).mkdir(exist_ok=True)
        check = integrity(db)
        if check != "ok":  # pragma: no cover - verified above; a failing disk could still do it
            raise BackupError(f"the restored database fails its integrity check ({check}); the previous data is in {aside}")
        next_id = keep_job_ids_apart(db, database_url, mark)
        make_private(data_dir, db)
        if next_id is not None:
            log.info("restore: new jobs get ids from %d on (the database before it had given ids up to %d)", next_id,
                     mark)
    return RestoreResult(facts["jobs"], facts["images"], aside if moved else None, facts["revision"], next_id)
