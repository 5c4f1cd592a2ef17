"""A stand-in for the diffusion engine: fixed time per step, real PNG bytes, no torch.

The worker runs it with `--fake-engine SECONDS_PER_STEP`; the queue tests and the queue benchmark use it so they
measure dispatch, not diffusion. It honours `on_progress` and `should_cancel` at every step like the real engine,
and `generate_many` runs a batch in the time of one request (as a GPU batch roughly does).

`noise=True` makes each image random noise, which PNG cannot compress: a 720x720 image is about 1.5 MB, enough to
exercise the object store with realistic sizes.

When the environment variable `IMAGINE_FAKE_JOURNAL` names a file, every finished run appends one line
`<prompt>\\t<pid>` to it, so tests can count how often a job really ran.
"""

from __future__ import annotations

import os
import struct
import time
import zlib
from collections.abc import Callable, Sequence

from generation.protocol.contract import (
    GeneratedImage,
    GenerationCancelled,
    GenerationRequest,
    GenerationResult,
    Progress,
)

ProgressFn = Callable[[Progress], None]
CancelFn = Callable[[], bool]


def png_rgb(width: int, height: int, pixels: bytes) -> bytes:
    """Encode raw 8-bit RGB rows (width*height*3 bytes) as a PNG."""
    if len(pixels) != width * height * 3:
        raise ValueError(f"`pixels` has {len(pixels)} bytes but a {width}x{height} RGB image needs {width * height * 3}")
    stride = width * 3
    raw = b"".join(b"\x00" + pixels[y * stride : (y + 1) * stride] for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 1)) + chunk(b"IEND", b"")


def _image(req: GenerationRequest, seed: int, noise: bool) -> bytes:
    w, h = req.width, req.height
    if noise:
        return png_rgb(w, h, os.urandom(w * h * 3))
    color = bytes(((seed * 67) % 256, (seed * 131) % 256, (seed * 29) % 256))
    return png_rgb(w, h, color * (w * h))


class FakeEngine:
    """Sleeps `seconds_per_step` per denoising step and returns PNGs of the requested size."""

    def __init__(self, seconds_per_step: float = 0.01, name: str = "fake", noise: bool = False, device: str = "fake"):
        self.seconds_per_step = float(seconds_per_step)
        self.name = name
        self.noise = noise
        self.device = device
        self.max_batch_images = 16
        self.runs = 0

    @classmethod
    def load(cls, spec: str, **kwargs) -> FakeEngine:
        return cls(float(spec), **kwargs)

    def check(self, req: GenerationRequest) -> None:
        req.validate()

    def generate(
        self, req: GenerationRequest, on_progress: ProgressFn | None = None, should_cancel: CancelFn | None = None
    ) -> GenerationResult:
        return self.generate_many([req], on_progress, should_cancel)[0]

    def generate_many(
        self,
        reqs: Sequence[GenerationRequest],
        on_progress: ProgressFn | None = None,
        should_cancel: CancelFn | None = None,
    ) -> list[GenerationResult]:
        if not reqs:
            return []
        for r in reqs:
            self.check(r)
        total = max(r.steps for r in reqs)
        t0 = time.perf_counter()
        for step in range(1, total + 1):
            if should_cancel is not None and should_cancel():
                raise GenerationCancelled(step - 1, total)
            time.sleep(self.seconds_per_step)
            if on_progress is not None:
                on_progress(Progress(step, total, preview=b"\x89PNG-preview" if step % 5 == 0 else None))
        denoise = time.perf_counter() - t0
        results = []
        for r in reqs:
            t1 = time.perf_counter()
            images = tuple(GeneratedImage(i, seed, _image(r, seed, self.noise)) for i, seed in enumerate(r.seeds))
            results.append(
                GenerationResult(
                    request=r,
                    images=images,
                    timings={"denoise": denoise, "png": time.perf_counter() - t1, "total": time.perf_counter() - t0},
                    model=self.name,
                    device=self.device,
                )
            )
        self.runs += len(reqs)
        journal = os.environ.get("IMAGINE_FAKE_JOURNAL")
        if journal:
            with open(journal, "a", encoding="utf-8") as f:
                for r in reqs:
                    f.write(f"{r.prompt}\t{os.getpid()}\n")
        return results
