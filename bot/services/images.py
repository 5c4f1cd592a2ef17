"""Files of generated images under the data folder, written atomically and identified by sha256.

Layout: `<data_dir>/images/<job_id // 1000>/<job_id>_<index>.png`. Paths stored in the database are relative to the
data folder ("images/0/123_0.png"), so the folder can move. A file is written to a temporary name in the same
folder, flushed and fsynced, then renamed over the final name (`os.replace`, atomic on POSIX), and the folder is
fsynced: a crash leaves either the old file or the new one, never half of one. What a crash can leave is a
temporary file (`.<name>.<random>.tmp`); `sweep_temp()` removes those at start.

A write that fails (disk full, read-only folder, I/O error) removes its temporary file and raises `ImageWriteError`,
which says in words what went wrong; the dispatcher then fails the job and refunds it.

Every reader passes the sha256 the database recorded (`read(path, sha256)`): a file changed or damaged on disk raises
`ImageDamaged` instead of being shown. The composed grid of a job is cached next to its images
(`<job_id>_grid_<key>.grid`, the key made from the job id and the images' sha256, the grid's own sha256 at the end of
the file), so `/show` and a second post do not compose it again (`bot.ui.images.job_grid`).

A job whose files the retention sweeper removed (`bot.services.retention`, IMAGE_RETENTION_DAYS) keeps its image rows
(seeds, sha256) with the path `REMOVED` (""): `read` raises `ImageRemoved` (a FileNotFoundError) for it, `delete`
does nothing, and `removed(job)` tells a reader to say so instead of showing the picture.

Files and folders are private to the bot's user: `save` writes through `mkstemp` (mode 0600) and makes folders 0700.

`read_header` reads the format and size an image's header states without decoding a pixel: the dispatcher checks an
image a worker sent against its job with it before anything decodes the image.
"""

from __future__ import annotations

import errno
import hashlib
import io
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from PIL import Image

log = logging.getLogger(__name__)

#: The name pattern of the temporary files `save` writes before renaming them.
TEMP_GLOB = ".*.tmp"
#: The suffix of a cached grid (a PNG followed by its own sha256, 32 bytes).
GRID_SUFFIX = ".grid"
_DIGEST_BYTES = 32
#: The path of an image row whose file the retention sweeper removed (the row stays for its seed and the job's
#: parameters; see bot.services.retention).
REMOVED = ""


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


class ImageDamaged(ValueError):
    """A stored image file does not match the sha256 the database recorded for it (changed or damaged on disk)."""

    def __init__(self, path: str):
        self.path = path
        super().__init__(f"image file {path!r} does not match its recorded sha256 (changed or damaged on disk)")


class ImageRemoved(FileNotFoundError):
    """The image's file was removed after the retention period (its row's path is `REMOVED`)."""

    def __init__(self, path: str = REMOVED):
        self.path = path
        super().__init__(f"image file {path!r} was removed after the retention period")


def removed(job: object) -> bool:
    """Whether the retention sweeper removed the image files of `job` (a JobView with its images)."""
    return any(getattr(img, "path", None) == REMOVED for img in getattr(job, "images", ()))


class ImageHeader(NamedTuple):
    #: Pillow's name of the format ("PNG").
    format: str
    width: int
    height: int


def read_header(data: bytes, formats: Sequence[str] | None = ("PNG",)) -> ImageHeader:
    """The format and size an image's header states, read without decoding a pixel: Pillow's `Image.open` reads the
    header only, the pixels would come with `load()`, which is never called here. `formats` are the formats tried
    (PNG only by default: the workers send PNGs; None tries every format Pillow knows).

    Raises ValueError, with a reason that quotes nothing of the data, for bytes that are not such an image, and for
    an image whose header states more pixels than `PIL.Image.MAX_IMAGE_PIXELS` allows (see `bot.ui.images`)."""
    try:
        with Image.open(io.BytesIO(data), formats=None if formats is None else list(formats)) as im:
            return ImageHeader(im.format or "", int(im.width), int(im.height))
    except Image.DecompressionBombError as exc:
        raise ValueError("its header states more pixels than the bot decodes") from exc
    except Exception as exc:  # noqa: BLE001 - Pillow raises many kinds of errors for crafted headers
        raise ValueError(f"it is not a {'/'.join(formats or ('known',))} image ({type(exc).__name__})") from exc


#: A member's source image (`/imagine image:`, the "Imagine from this image" menu): the formats taken, the most bytes
#: the bot downloads (Discord states an attachment's size before it is read), and the most pixels and the longest
#: side its header may state (checked before a pixel is decoded).
SOURCE_FORMATS = ("PNG", "JPEG", "WEBP")
MAX_SOURCE_BYTES = 10 * 1024 * 1024
MAX_SOURCE_PIXELS = 4096 * 4096
MAX_SOURCE_SIDE = 8192


class SourceRefused(ValueError):
    """A member's image the bot does not take; the message says why, names the limit, and quotes none of the data."""


def check_source_size(size: int) -> None:
    """Refuse a source of more than `MAX_SOURCE_BYTES` (an attachment's stated size, before it is downloaded)."""
    if size > MAX_SOURCE_BYTES:
        raise SourceRefused(f"The image is {size / 1048576:.1f} MiB; at most {MAX_SOURCE_BYTES // 1048576} MiB are "
                            "taken.")
    if size <= 0:
        raise SourceRefused("The attachment is empty; attach a PNG, JPEG or WebP image.")


def prepare_source(data: bytes, size: tuple[int, int]) -> bytes:
    """A member's image as the job's source: a PNG of `size` (the job's width x height), RGB, upright (its EXIF
    orientation applied), the first frame of an animation, transparency on white, no metadata kept.

    Its bytes and its header (format, pixel count, sides) are checked before a pixel is decoded; `SourceRefused`
    says which rule it breaks: not a PNG/JPEG/WebP, over `MAX_SOURCE_BYTES`, over `MAX_SOURCE_PIXELS` or
    `MAX_SOURCE_SIDE`."""
    from PIL import ImageOps

    source_header(data)
    try:
        with Image.open(io.BytesIO(data), formats=list(SOURCE_FORMATS)) as im:
            im.seek(0)  # the first frame of an animated PNG/WebP
            frame = ImageOps.exif_transpose(im) or im.copy()
    except Exception as exc:  # noqa: BLE001 - a header that reads but pixels that do not
        raise SourceRefused(f"The image could not be read ({type(exc).__name__}); attach a PNG, JPEG or WebP "
                            "image.") from None
    if frame.mode in ("RGBA", "LA", "PA") or (frame.mode == "P" and "transparency" in frame.info):
        rgba = frame.convert("RGBA")
        frame = Image.new("RGB", rgba.size, (255, 255, 255))
        frame.paste(rgba, mask=rgba.getchannel("A"))
    else:
        frame = frame.convert("RGB")
    if frame.size != tuple(size):
        frame = ImageOps.fit(frame, tuple(size), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    frame.save(out, format="PNG")
    return out.getvalue()


def source_header(data: bytes) -> ImageHeader:
    """The header of a member's image (format and size), read without decoding; `SourceRefused` like
    `prepare_source` for bytes, formats and sizes it does not take."""
    check_source_size(len(data))
    try:
        header = read_header(data, SOURCE_FORMATS)
    except ValueError as exc:
        if "more pixels" in str(exc):
            raise SourceRefused(f"The image states more than {MAX_SOURCE_PIXELS:,} pixels; at most that many are "
                                "taken.") from None
        raise SourceRefused("The attachment is not a PNG, JPEG or WebP image.") from None
    if header.width * header.height > MAX_SOURCE_PIXELS or max(header.width, header.height) > MAX_SOURCE_SIDE:
        raise SourceRefused(f"The image is {header.width}x{header.height} pixels; at most {MAX_SOURCE_PIXELS:,} "
                            f"pixels and {MAX_SOURCE_SIDE} a side are taken.")
    try:  # the EXIF orientation (metadata only, no pixel is decoded): a quarter turn swaps the sides
        with Image.open(io.BytesIO(data), formats=list(SOURCE_FORMATS)) as im:
            turned = im.getexif().get(0x0112) in (5, 6, 7, 8)
    except Exception:  # noqa: BLE001 - unreadable EXIF: taken as upright
        turned = False
    return ImageHeader(header.format, header.height, header.width) if turned else header


class StoredImage(NamedTuple):
    #: Relative to the data folder (what the database keeps).
    path: str
    sha256: str



def write_atomically(target: Path, data: bytes) -> None:
    """Write `data` to `target` so a crash leaves the old file or the new one, never a part: a temporary file (0600)
    in the same folder (made 0700 when missing), fsync, rename, fsync of the folder."""
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
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
        digest = hashlib.sha256(png_bytes).hexdigest()
        self._write(rel, png_bytes)
        return StoredImage(rel, digest)

    def _write(self, rel: str, data: bytes) -> None:
        """Write `data` to the relative path `rel` atomically (`write_atomically`)."""
        try:
            write_atomically(self.absolute(rel), data)
        except OSError as exc:
            raise ImageWriteError(rel, exc) from exc

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
        """The bytes of a stored image; with `sha256` (every reader of a job's image passes the recorded one), raises
        `ImageDamaged` (a ValueError) if the file does not match it; `ImageRemoved` (a FileNotFoundError) for an
        image whose file the retention sweeper removed."""
        if path == REMOVED:
            raise ImageRemoved(path)
        data = self.absolute(path).read_bytes()
        if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
            raise ImageDamaged(path)
        return data

    # --- the cached grid of a job -----------------------------------------------------------------------------------
    def grid_path(self, job_id: int, hashes: Sequence[str]) -> str:
        """Where the grid of job `job_id` made of the images with these sha256 (in order) is cached."""
        key = hashlib.sha256(f"{job_id}:{','.join(hashes)}".encode()).hexdigest()[:16]
        return f"images/{job_id // 1000}/{job_id}_grid_{key}{GRID_SUFFIX}"

    def read_grid(self, job_id: int, hashes: Sequence[str]) -> bytes | None:
        """The cached grid of these images, checked against the sha256 stored with it; None when there is none. A
        damaged cache file is removed (and None returned: the caller composes the grid again)."""
        path = self.grid_path(job_id, hashes)
        try:
            raw = self.absolute(path).read_bytes()
        except FileNotFoundError:
            return None
        body, digest = raw[:-_DIGEST_BYTES], raw[-_DIGEST_BYTES:]
        if not body or hashlib.sha256(body).digest() != digest:
            log.warning("job %d: the cached grid %s is damaged; it is composed again", job_id, path)
            self.delete(path)
            return None
        return body

    def save_grid(self, job_id: int, hashes: Sequence[str], png_bytes: bytes) -> bool:
        """Cache the grid of these images (atomically, with its sha256 at the end); False when it could not be
        written (logged: the grid is then simply composed again next time)."""
        path = self.grid_path(job_id, hashes)
        try:
            self._write(path, bytes(png_bytes) + hashlib.sha256(png_bytes).digest())
        except ImageWriteError as exc:
            log.warning("job %d: the grid could not be cached: %s", job_id, exc)
            return False
        return True

    def delete(self, path: str) -> bool:
        """Remove a stored file; False when it was not there (or was removed after the retention period)."""
        if path == REMOVED:
            return False
        try:
            self.absolute(path).unlink()
            return True
        except FileNotFoundError:
            return False


    def job_files(self, job_id: int) -> list[Path]:
        """Every file of job `job_id` in its folder: images, cached grids, timeline (`<job_id>_*`)."""
        folder = self.absolute(self.relative_path(job_id, 0)).parent
        if not folder.is_dir():
            return []
        return sorted(p for p in folder.glob(f"{job_id}_*") if p.is_file())


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
