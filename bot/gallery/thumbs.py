"""Thumbnails of the gallery: made once per image, kept under `<data_dir>/thumbs`.

A thumbnail is the image scaled down to fit THUMB_SIDE × THUMB_SIDE pixels, as WebP (quality THUMB_QUALITY), at
`thumbs/<job_id // 1000>/<job_id>_<index>_<sha256[:16]>.webp`: the name carries the start of the source image's
sha256, so a thumbnail never outlives the picture it was made from. The source is read with its recorded sha256
(`ImageStore.read`: a changed or damaged file is refused, never scaled). Files are written like the images are:
to a temporary file (mode 0600, in a 0700 folder), flushed and fsynced, then renamed over the final name, so a
reader finds a whole thumbnail or none.

Decoding, scaling and encoding run in worker threads (`asyncio.to_thread`), at most THUMB_WORKERS at once, so a page
of new thumbnails never stalls the bot's event loop nor fills the default thread pool; two requests for the same
missing thumbnail wait for one making.

`sweep` removes the thumbnails of jobs deleted with 🗑️, of images whose files the retention sweeper removed, of
jobs no longer in the database, and temporary files a crash left; the gallery server runs it at start and every
SWEEP_SECONDS.
"""

from __future__ import annotations

import asyncio
import io
import logging
import re
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

from PIL import Image

from bot.services.images import ImageStore, write_atomically

log = logging.getLogger(__name__)

#: Longest side of a thumbnail, in pixels.
THUMB_SIDE = 256
#: WebP quality of the thumbnails (0-100).
THUMB_QUALITY = 80
#: Thumbnails made at the same time (each in its own worker thread).
THUMB_WORKERS = 2
#: Seconds between two sweeps of the thumbnail folder.
SWEEP_SECONDS = 3600.0
#: Characters of the source image's sha256 in a thumbnail's name.
KEY_CHARS = 16

_NAME = re.compile(r"^(\d+)_(\d+)_([0-9a-f]{16})\.webp$")

KeepLookup = Callable[[Iterable[int]], Awaitable[set[tuple[int, int, str]]]]


def make_thumbnail(data: bytes, side: int = THUMB_SIDE, quality: int = THUMB_QUALITY) -> bytes:
    """`data` (an image) scaled to fit side × side, as WebP bytes."""
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        if im.mode not in ("RGB", "RGBA"):
            im = im.convert("RGBA" if "A" in im.getbands() or "transparency" in im.info else "RGB")
        im.thumbnail((side, side), Image.Resampling.LANCZOS)
        out = io.BytesIO()
        im.save(out, format="WEBP", quality=quality, method=4)
    return out.getvalue()


def thumbnail_size(width: int, height: int, side: int = THUMB_SIDE) -> tuple[int, int]:
    """The size of the thumbnail of a width × height image (Pillow's `thumbnail` rounding)."""
    if width <= side and height <= side:
        return width, height
    scale = side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


class ThumbnailCache:
    """Thumbnails under `<data_dir>/thumbs`, made from the images of `store`."""

    def __init__(self, data_dir: Path | str, store: ImageStore, *, side: int = THUMB_SIDE,
                 workers: int = THUMB_WORKERS):
        self.root = Path(data_dir) / "thumbs"
        self.store = store
        self.side = side
        self._slots = asyncio.Semaphore(workers)
        self._making: dict[Path, asyncio.Future[bytes]] = {}
        #: Thumbnails made by this process (for tests and the log).
        self.made = 0

    def path(self, job_id: int, index: int, sha256: str) -> Path:
        return self.root / str(job_id // 1000) / f"{job_id}_{index}_{sha256[:KEY_CHARS]}.webp"

    async def get(self, job_id: int, index: int, path: str, sha256: str) -> bytes:
        """The thumbnail of image `index` of job `job_id` (stored at `path` with `sha256`), made on first use.
        Raises what `ImageStore.read` raises for a source that is gone or does not match its sha256."""
        target = self.path(job_id, index, sha256)
        try:
            return await asyncio.to_thread(target.read_bytes)
        except FileNotFoundError:
            pass
        task = self._making.get(target)
        if task is None:
            # Its own task: a visitor who leaves mid-way does not stop the making others wait for.
            task = asyncio.ensure_future(self._produce(target, path, sha256))
            self._making[target] = task
            task.add_done_callback(lambda t: self._done(target, t))
        return await asyncio.shield(task)

    async def _produce(self, target: Path, path: str, sha256: str) -> bytes:
        async with self._slots:
            return await asyncio.to_thread(self._make, target, path, sha256)

    def _done(self, target: Path, task: asyncio.Future[bytes]) -> None:
        self._making.pop(target, None)
        if not task.cancelled():
            task.exception()  # retrieved here: every waiter gets it from its own await

    def _make(self, target: Path, path: str, sha256: str) -> bytes:
        data = make_thumbnail(self.store.read(path, sha256), self.side)
        write_atomically(target, data)
        self.made += 1
        return data

    def _listing(self) -> tuple[dict[Path, tuple[int, int, str]], list[Path]]:
        """The thumbnails on disk (path → key) and the files that are not thumbnails (temporary leftovers)."""
        thumbs: dict[Path, tuple[int, int, str]] = {}
        other: list[Path] = []
        if not self.root.is_dir():
            return thumbs, other
        for folder in self.root.iterdir():
            if not folder.is_dir():
                continue
            for file in folder.iterdir():
                m = _NAME.match(file.name)
                if m:
                    thumbs[file] = (int(m[1]), int(m[2]), m[3])
                elif file.name.startswith(".") and file.name.endswith(".tmp"):
                    other.append(file)
        return thumbs, other

    async def sweep(self, keys: KeepLookup) -> int:
        """Remove every thumbnail whose image `keys(job_ids)` does not list (see GalleryCatalog.thumbnail_keys) and
        leftover temporary files; returns how many files went. Files made while it runs are left alone."""
        thumbs, other = await asyncio.to_thread(self._listing)
        keep = {(j, i, sha[:KEY_CHARS]) for j, i, sha in await keys({k[0] for k in thumbs.values()})}
        doomed = [p for p, key in thumbs.items() if key not in keep and p not in self._making] + other

        def remove() -> int:
            n = 0
            for p in doomed:
                try:
                    p.unlink()
                    n += 1
                except FileNotFoundError:
                    pass
            return n

        removed = await asyncio.to_thread(remove)
        if removed:
            log.info("gallery: removed %d thumbnail file(s) of deleted or expired images", removed)
        return removed
