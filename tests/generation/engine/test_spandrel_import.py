"""spandrel imports on a CPU torch without torchvision, and leaves nothing of its stand-in behind."""

from __future__ import annotations

import subprocess
import sys

from tests.support.natsutil import REPO


def test_spandrel_imports_and_loads_an_esrgan_without_torchvision_and_nothing_stays_behind():
    code = """
import importlib.util, sys
import torch
from generation.engine.spandrel_import import import_spandrel
spandrel = import_spandrel()
from spandrel.architectures.ESRGAN import ESRGAN
net = ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=2)
desc = spandrel.ModelLoader().load_from_state_dict(net.state_dict())
out = desc(torch.rand(1, 3, 8, 8))
assert desc.architecture.name == "ESRGAN" and desc.scale == 2 and tuple(out.shape) == (1, 3, 16, 16), out.shape
has_tv = importlib.util.find_spec("torchvision") is not None
assert has_tv or not any(m == "torchvision" or m.startswith("torchvision.") for m in sys.modules), "stand-in left"
from transformers import CLIPTextModel  # still importable after spandrel
print("ok", has_tv)
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("ok")
