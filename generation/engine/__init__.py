"""The diffusers engine: model loading (diffusers folders, single checkpoint files, Hugging Face Hub ids), the
model's card (what each text-to-image family can do), running (txt2img, variation, img2img, inpaint, outpaint,
upscale, describe), masks and canvases, super-resolution upscalers, captioners, step callbacks, schedulers, PNG
metadata, the denoising timeline and the `python -m generation` command line.

Importing `generation.engine.<module>` for one helper does not load torch; the names below are loaded on first use.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

# CPU threads that wait for each other spin by default; on a machine whose cores are shared with other work that
# spinning made a 2-thread run 10x slower than a 1-thread one (measured here). Passive waiting must be chosen before
# torch loads its OpenMP runtime, so it is set here, where it runs before any engine module (engine.py, loading.py,
# callbacks.py) imports torch; it only takes effect when the engine is the first to import torch, and an explicit
# OMP_WAIT_POLICY in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

_EXPORTS = {
    "Engine": "generation.engine.engine",
    "ModelLoadError": "generation.engine.loading",
    "load_pipeline": "generation.engine.loading",
    "pick_device": "generation.engine.loading",
    "pick_dtype": "generation.engine.loading",
    "resolve_source": "generation.engine.loading",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'generation.engine' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
