"""Masks and canvases of the editing modes (generation.engine.canvas): numpy and Pillow only, no torch."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from generation.engine.canvas import (
    distance_to_boxes,
    hard_mask,
    outpaint_canvas,
    paste_back,
    region_only_differs,
    soft_mask,
)
from generation.protocol.regions import outpaint_layout, region_boxes
from tests.support.natsutil import REPO


def test_distance_is_zero_inside_and_euclidean_outside():
    d = distance_to_boxes([(10, 10, 20, 20)], (32, 32))
    assert d[15, 15] == 0 and d[10, 10] == 0
    assert d[15, 25] == pytest.approx(5.5)  # pixel centre 25.5, box edge 20
    assert d[25, 25] == pytest.approx(np.hypot(5.5, 5.5))
    assert np.isinf(distance_to_boxes([], (4, 4))).all()


def test_soft_mask_is_one_inside_and_falls_to_zero_over_the_feather():
    m = soft_mask(region_boxes("left", 64, 64), (64, 64), 8)
    assert (m[:, :32] == 1).all() and (m[:, 41:] == 0).all()
    row = m[0, 32:41]
    assert (np.diff(row) < 0).all() and 0 < row[0] < 1  # strictly falling across the edge
    hard = soft_mask(region_boxes("left", 64, 64), (64, 64), 0)
    assert set(np.unique(hard)) == {0.0, 1.0} and hard[:, :32].all() and not hard[:, 32:].any()


def test_hard_mask_covers_the_soft_edge_and_a_latent_token_more():
    boxes = region_boxes("cells:4", 96, 96)
    soft = soft_mask(boxes, (96, 96), 6)
    hard = np.asarray(hard_mask(boxes, (96, 96), 6, grow=8)) > 0
    assert hard[soft > 0].all()
    d = distance_to_boxes(boxes, (96, 96))
    assert hard[(d > 6) & (d <= 14)].all() and not hard[d > 14].any()


def test_paste_back_keeps_every_pixel_outside_the_mask_exactly():
    rng = np.random.default_rng(0)
    original = Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8))
    generated = Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8))
    boxes = [(0, 0, 20, 40)]
    mask = soft_mask(boxes, (60, 40), 5)
    out = paste_back(generated, original, mask)
    assert np.array_equal(np.asarray(out)[:, 26:], np.asarray(original)[:, 26:])
    assert np.array_equal(np.asarray(out)[:, :20], np.asarray(generated)[:, :20])
    assert region_only_differs(out, original, boxes, 5) and not region_only_differs(generated, original, boxes, 5)
    with pytest.raises(ValueError, match="sizes differ"):
        paste_back(generated.resize((10, 10)), original, mask)


def test_outpaint_canvas_puts_the_source_in_its_box_and_fills_the_rest_from_its_edges():
    src = Image.new("RGB", (64, 64), (200, 10, 10))
    src.paste((10, 10, 200), (32, 0, 64, 64))  # right half blue
    lay = outpaint_layout("pan_right", 64, 64, max_side=256)
    canvas = np.asarray(outpaint_canvas(src, lay))
    assert canvas.shape == (64, 96, 3)
    assert np.array_equal(canvas[:, :64], np.asarray(src))
    assert (canvas[:, 90:, 2] > 150).all()  # the new area continues the blue right edge


def test_outpaint_canvas_scales_the_source_when_the_layout_does():
    src = Image.new("RGB", (128, 128), (0, 200, 0))
    lay = outpaint_layout("zoom_2", 128, 128, max_side=128)
    canvas = outpaint_canvas(src, lay)
    assert canvas.size == (128, 128) and canvas.getpixel((64, 64)) == (0, 200, 0)


def test_the_canvas_module_loads_no_torch():
    code = "import sys, generation.engine.canvas; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-1000:]
    assert out.stdout.strip() == "False"
