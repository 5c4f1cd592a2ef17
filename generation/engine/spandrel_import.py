"""Import `spandrel` (super-resolution model loading) on machines without a working torchvision.

spandrel imports every architecture it knows when it is imported, and two of them (LaMa and RestoreFormer, neither
a super-resolution model this product loads) import `torchvision.transforms.functional` at the top. torchvision
from PyPI is built against PyPI's CUDA build of torch: beside the CPU build of torch this project installs it fails
to import ("operator torchvision::nms does not exist"), and a torchvision that fails to import also breaks
transformers' model classes. So the Makefile installs spandrel without its dependencies (`--no-deps`, einops comes
from pyproject), and where torchvision is absent this module puts a stand-in for the three names spandrel's imports
ask for in `sys.modules` just while spandrel is imported, then removes it again: nothing else ever sees it, and the
two architectures that would call it are never loaded (`load_upscaler` refuses them by name).

With a working torchvision (a GPU machine with matching torch and torchvision) the real one is used.
"""

from __future__ import annotations

import enum
import importlib.machinery
import sys
import types
from typing import Any

_STUBS = ("torchvision", "torchvision.transforms", "torchvision.transforms.functional")


def _unavailable(*_args: Any, **_kwargs: Any) -> Any:
    raise RuntimeError("torchvision is not installed: this architecture cannot run here")


class _InterpolationMode(enum.Enum):
    NEAREST = "nearest"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"


def _stub_modules() -> dict[str, types.ModuleType]:
    mods = {}
    for name in _STUBS:
        mod = types.ModuleType(name)
        mod.__spec__ = importlib.machinery.ModuleSpec(name, None)
        mods[name] = mod
    fn = mods["torchvision.transforms.functional"]
    fn.InterpolationMode = _InterpolationMode
    fn.rotate = _unavailable
    fn.normalize = _unavailable
    mods["torchvision"].transforms = mods["torchvision.transforms"]
    mods["torchvision.transforms"].functional = fn
    return mods


def import_spandrel() -> types.ModuleType:
    """The `spandrel` module, imported with a stand-in torchvision where the real one is missing."""
    if "spandrel" in sys.modules:
        return sys.modules["spandrel"]
    try:
        import torchvision  # noqa: F401
    except ModuleNotFoundError:
        pass
    else:
        import spandrel

        return spandrel
    stubs = _stub_modules()
    sys.modules.update(stubs)
    try:
        import spandrel
    finally:
        for name, mod in stubs.items():
            if sys.modules.get(name) is mod:
                del sys.modules[name]
    return spandrel


#: Architectures that need torchvision at run time: refused where it is only stood in for.
NEEDS_TORCHVISION = frozenset({"LaMa", "RestoreFormer"})
