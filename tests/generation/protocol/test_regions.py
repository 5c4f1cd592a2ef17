"""The region grammar of Vary (Region) and the canvas of Zoom Out / Pan / Make square (generation.protocol.regions)."""

from __future__ import annotations

import pytest

from generation.protocol.regions import (
    OUTPAINTS,
    REGION_CHOICES,
    RegionError,
    canonical_region,
    cells_region,
    outpaint_layout,
    region_boxes,
    region_share,
)


@pytest.mark.parametrize("text,canonical", [
    ("left", "left"),
    (" LEFT ", "left"),
    ("center", "centre"),
    ("cells:4,0", "cells:0,4"),
    ("Cells: 4, 0 + left", "left+cells:0,4"),
    ("cells:1+cells:1,2", "cells:1,2"),
    ("bottom+top-left+left", "left+bottom+top-left"),
])
def test_regions_have_one_canonical_spelling(text, canonical):
    """Case, spaces, aliases, order and repeats do not matter: a region is stored one way."""
    assert canonical_region(text) == canonical
    assert canonical_region(canonical) == canonical


@pytest.mark.parametrize("text,message", [
    ("", "at least one part"),
    ("lefty", "'lefty' is not a region"),
    ("cells:9", "cell '9' is not one of 0-8"),
    ("cells:", "cell '' is not one of 0-8"),
    ("cells:a", "cell 'a'"),
    ("left++right", "empty part"),
    ("x" * 101, "at most 100 characters"),
])
def test_bad_regions_say_what_is_wrong(text, message):
    with pytest.raises(RegionError, match=message):
        canonical_region(text)


def test_region_boxes_in_pixels():
    """Halves, the centre and the 3x3 cells land on the pixels they name (grid lines rounded)."""
    assert region_boxes("left", 64, 48) == [(0, 0, 32, 48)]
    assert region_boxes("centre", 64, 64) == [(16, 16, 48, 48)]
    assert region_boxes("cells:0,4,8", 90, 60) == [(0, 0, 30, 20), (30, 20, 60, 40), (60, 40, 90, 60)]
    assert region_boxes("top+cells:4", 64, 64) == [(0, 0, 64, 32), (21, 21, 43, 43)]


def test_region_share_counts_overlaps_once():
    assert region_share("left") == pytest.approx(0.5)
    assert region_share("left+top-left") == pytest.approx(0.5)
    assert region_share("cells:0,1,2") == pytest.approx(1 / 3)
    assert region_share("all") == 1.0


def test_every_menu_choice_is_a_canonical_region():
    assert all(canonical_region(spec) == spec for spec, _ in REGION_CHOICES)
    assert cells_region([8, 0, 4]) == "cells:0,4,8"


def test_zoom_out_centres_the_source_on_a_larger_canvas():
    lay = outpaint_layout("zoom_2", 64, 64, max_side=256)
    assert (lay.size, lay.source, lay.scale) == ((128, 128), (32, 32, 96, 96), 1.0)
    lay = outpaint_layout("zoom_1.5", 64, 64, max_side=256)
    assert (lay.size, lay.source) == ((96, 96), (16, 16, 80, 80))
    # the new area is the canvas around the source, and nothing of the source
    covered = sum((x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in lay.new_area)
    assert covered == 96 * 96 - 64 * 64


@pytest.mark.parametrize("kind,size,source", [
    ("pan_right", (96, 64), (0, 0, 64, 64)),
    ("pan_left", (96, 64), (32, 0, 96, 64)),
    ("pan_up", (64, 96), (0, 32, 64, 96)),
    ("pan_down", (64, 96), (0, 0, 64, 64)),
])
def test_pan_grows_by_half_a_side_away_from_the_source(kind, size, source):
    lay = outpaint_layout(kind, 64, 64, max_side=256)
    assert (lay.size, lay.source) == (size, source)


def test_make_square_and_its_refusal_of_a_square_image():
    lay = outpaint_layout("square", 96, 64, max_side=256)
    assert (lay.size, lay.source) == ((96, 96), (0, 16, 96, 80))
    with pytest.raises(RegionError, match="square already"):
        outpaint_layout("square", 64, 64, max_side=256)


def test_a_canvas_beyond_the_model_shrinks_with_its_source():
    """Zoom Out 2x of a 128 px image for a model of at most 128 px: the whole canvas (the source with it) halves."""
    lay = outpaint_layout("zoom_2", 128, 128, max_side=128)
    assert (lay.size, lay.source, lay.scale) == ((128, 128), (32, 32, 96, 96), 0.5)


def test_the_canvas_is_on_the_models_grid():
    lay = outpaint_layout("pan_right", 100, 60, max_side=512, multiple=8)
    assert lay.width % 8 == 0 and lay.height % 8 == 0 and lay.width >= 150 and lay.height >= 60
    assert lay.source == (0, (lay.height - 60) // 2, 100, (lay.height - 60) // 2 + 60)


def test_unknown_outpaint_names_the_allowed_ones():
    with pytest.raises(RegionError, match="zoom_1.5, zoom_2"):
        outpaint_layout("zoom_3", 64, 64, max_side=128)
    assert len(OUTPAINTS) == 7
