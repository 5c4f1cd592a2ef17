"""Files of generated images under the data folder, written atomically and identified by sha256.

Layout: `<data_dir>/images/<job_id // 1000>/<job_id>_<index>.png`. Paths stored in the database are relative to the
data folder ("images/0/123_0.png"), so the folder can move. A file is written to a temporary name in the same
folder, flushed and fsynced, then renamed over the final name (`os.replace`, atomic on POSIX), and the folder is
fsynced: a crash leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import NamedTuple


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
        target.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256(png_bytes).hexdigest()
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(png_bytes)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        _fsync_dir(target.parent)
        return StoredImage(rel, digest)

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
