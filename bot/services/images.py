"""Files of generated images under the data folder, written atomically and identified by sha256.

Layout: `<data_dir>/images/<job_id // 1000>/<job_id>_<index>.png`. Paths stored in the database are relative to the
data folder ("images/0/123_0.png"), so the folder can move. A file is written to a temporary name in the same
folder, flushed and fsynced, then renamed over the final name (`os.replace`, atomic on POSIX), and the folder is
fsynced: a crash leaves either the old file or the new one, never half of one. What a crash can leave is a
temporary file (`.<name>.<random>.tmp`); `sweep_temp()` removes those at start.

A write that fails (disk full, read-only folder, I/O error) removes its temporary file and raises `ImageWriteError`,
which says in words what went wrong; the dispatcher then fails the job and refunds it.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import tempfile
from pathlib import Path
from typing import NamedTuple

log = logging.getLogger(__name__)

#: The name pattern of the temporary files `save` writes before renaming them.
TEMP_GLOB = ".*.tmp"


class ImageWriteError(Exception):
    """An image could not be written; nothing of it is left on disk. `disk_full` for ENOSPC / EDQUOT."""

    def __init__(self, path: str, error: OSError):
        self.path = path
        self.errno = error.errno
        self.disk_full = error.errno in (errno.ENOSPC, errno.EDQUOT)
        if self.disk_full:
            reason = "the bot's disk is full, so the images could not be saved"
        else:
            reason = f"the images could not be saved ({error.strerror or error.__class__.__name__})"
        super().__init__(reason)


class StoredImage(NamedTuple):
    #: Relative to the data folder (what the database keeps).
    path: str
    sha256: str


class ImageStore:
    """Reads and writes image files below `data_dir` (the bot's `settings.data_dir`)."""

    def __init__(self, data_dir: Path | str):
        self.data_dir = Path(data_dir)

    def relative_path(self, job_id: int, index: int, suffix: str = ".png") -> str:
        return f"images/{job_id // 1000}/{job_id}_{index}{suffix}"

    def absolute(self, path: str) -> Path:
        """The file of a stored (relative) path. Refuses paths that leave the data folder."""
        full = (self.data_dir / path).resolve()
        root = self.data_dir.resolve()
        if root not in full.parents:
            raise ValueError(f"image path {path!r} is outside the data folder {str(root)!r}")
        return full

    def save(self, job_id: int, index: int, png_bytes: bytes, *, suffix: str = ".png") -> StoredImage:
        """Write image `index` of job `job_id` atomically; returns (relative path, sha256 hex)."""
        if not isinstance(png_bytes, bytes | bytearray | memoryview) or len(png_bytes) == 0:
            raise ValueError(f"image {index} of job {job_id} has no bytes to save")
        rel = self.relative_path(job_id, index, suffix)
        target = self.absolute(rel)
        digest = hashlib.sha256(png_bytes).hexdigest()
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        except OSError as exc:
            raise ImageWriteError(rel, exc) from exc
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(png_bytes)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except BaseException as exc:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            if isinstance(exc, OSError):
                raise ImageWriteError(rel, exc) from exc
            raise
        _fsync_dir(target.parent)
        return StoredImage(rel, digest)

    def sweep_temp(self) -> int:
        """Remove the temporary files a crash left behind (call at start, before anything writes); returns how many."""
        removed = 0
        folder = self.data_dir / "images"
        if not folder.is_dir():
            return 0
        for tmp in folder.glob(f"*/{TEMP_GLOB}"):
            try:
                tmp.unlink()
                removed += 1
            except FileNotFoundError:
                pass
        if removed:
            log.info("removed %d unfinished image file(s) left by an earlier crash", removed)
        return removed

    def read(self, path: str, sha256: str | None = None) -> bytes:
        """The bytes of a stored image; with `sha256`, raises ValueError if the file does not match it."""
        data = self.absolute(path).read_bytes()
        if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
            raise ValueError(f"image file {path!r} does not match its recorded sha256 (changed or damaged on disk)")
        return data

    def delete(self, path: str) -> bool:
        try:
            self.absolute(path).unlink()
            return True
        except FileNotFoundError:
            return False


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)
