"""The diffusers engine: model loading, running (txt2img, variation, upscale), step callbacks, schedulers, PNG
metadata, the denoising timeline and the `python -m generation` command line.

Importing `generation.engine.<module>` for one helper does not load torch; the names below are loaded on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Engine": "generation.engine.engine",
    "ModelLoadError": "generation.engine.engine",
    "load_pipeline": "generation.engine.engine",
    "pick_device": "generation.engine.engine",
    "pick_dtype": "generation.engine.engine",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'generation.engine' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
