"""Where an edit applies: the region a Vary (Region) job redraws and the canvas a Zoom Out / Pan job grows to.

Members never draw a mask. The bot offers regions from a select menu and writes the choice as a short text, the
request's `region`; the worker turns it into a mask. Both sides read it with this module, which imports only the
standard library (the bot loads no image library for it; the engine rasterises the boxes, `generation.engine.canvas`).

Region grammar (case and spaces do not matter; `canonical_region` gives the one spelling a request stores):

    region := term ("+" term)*                      at most `MAX_REGION_CHARS` characters
    term   := name | "cells:" cell ("," cell)*
    name   := left | right | top | bottom           a half
            | top-left | top-right | bottom-left | bottom-right     a quarter
            | centre (or center)                    the middle half of each side
            | all                                   the whole image
    cell   := 0 ... 8                               the 3×3 grid, row by row from the top left:  0 1 2
                                                                                                 3 4 5
                                                                                                 6 7 8

Examples: `left`, `centre`, `cells:0,1,2` (the top row), `cells:4+top` (the middle cell and the top half). The
canonical form lists the names in the order above, then one `cells:` term with its cells sorted, joined by `+`.

Outpainting (`outpaint_layout`): `zoom_1.5` and `zoom_2` put the source in the middle of a canvas 1.5 or 2 times its
size; `pan_left`, `pan_right`, `pan_up` and `pan_down` grow the canvas by half a side in that direction (the source
stays on the opposite side); `square` grows the shorter side to the longer one, the source centred. The canvas is
rounded up to the model's side multiple; a canvas larger than the model's largest side is scaled down as a whole
(the source with it), so the result always fits the model's card. The new area (the canvas outside the source) is
what the model draws.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction

#: The longest region text a request may carry.
MAX_REGION_CHARS = 100
#: Named regions as fractions of the image (left, top, right, bottom), in canonical order.
_H = Fraction(1, 2)
_Q = Fraction(1, 4)
REGION_NAMES: dict[str, tuple[Fraction, Fraction, Fraction, Fraction]] = {
    "left": (Fraction(0), Fraction(0), _H, Fraction(1)),
    "right": (_H, Fraction(0), Fraction(1), Fraction(1)),
    "top": (Fraction(0), Fraction(0), Fraction(1), _H),
    "bottom": (Fraction(0), _H, Fraction(1), Fraction(1)),
    "top-left": (Fraction(0), Fraction(0), _H, _H),
    "top-right": (_H, Fraction(0), Fraction(1), _H),
    "bottom-left": (Fraction(0), _H, _H, Fraction(1)),
    "bottom-right": (_H, _H, Fraction(1), Fraction(1)),
    "centre": (_Q, _Q, 1 - _Q, 1 - _Q),
    "all": (Fraction(0), Fraction(0), Fraction(1), Fraction(1)),
}
_ALIASES = {"center": "centre"}
#: The cells of the 3×3 grid, 0-8 row by row from the top left.
GRID = 3
CELLS = tuple(range(GRID * GRID))
#: What a select menu can offer, as (region text, label): every named region and every cell.
CELL_LABELS = ("top left", "top middle", "top right", "middle left", "middle", "middle right", "bottom left",
               "bottom middle", "bottom right")
REGION_CHOICES: tuple[tuple[str, str], ...] = (
    ("left", "Left half"), ("right", "Right half"), ("top", "Top half"), ("bottom", "Bottom half"),
    ("top-left", "Top-left quarter"), ("top-right", "Top-right quarter"), ("bottom-left", "Bottom-left quarter"),
    ("bottom-right", "Bottom-right quarter"), ("centre", "Centre"), ("all", "Everything"),
    *((f"cells:{i}", f"Cell {i}: {CELL_LABELS[i]}") for i in CELLS),
)

#: Outpainting kinds (`GenerationRequest.outpaint`) and what the bot can call them.
OUTPAINTS: tuple[str, ...] = ("zoom_1.5", "zoom_2", "pan_left", "pan_right", "pan_up", "pan_down", "square")
OUTPAINT_LABELS = {"zoom_1.5": "Zoom Out 1.5x", "zoom_2": "Zoom Out 2x", "pan_left": "Pan left", "pan_right": "Pan right",
                   "pan_up": "Pan up", "pan_down": "Pan down", "square": "Make square"}


class RegionError(ValueError):
    """A region or outpaint text that does not follow the grammar; the message names the part and what is allowed."""


Box = tuple[int, int, int, int]
"""A box in pixels: left, top, right, bottom (right and bottom exclusive)."""


def _terms(text: str) -> tuple[list[str], list[int]]:
    if not isinstance(text, str):
        raise RegionError(f"a region has to be text, not {type(text).__name__}")
    if len(text) > MAX_REGION_CHARS:
        raise RegionError(f"a region has at most {MAX_REGION_CHARS} characters (this one has {len(text)})")
    compact = "".join(text.split()).lower()
    if not compact:
        raise RegionError("a region names at least one part, like `left`, `centre` or `cells:0,1,4`")
    names: list[str] = []
    cells: list[int] = []
    for term in compact.split("+"):
        if not term:
            raise RegionError("it has an empty part (two '+' in a row, or one at an end)")
        if term.startswith("cells:"):
            items = term[len("cells:"):].split(",")
            for item in items:
                if not item.isdigit() or int(item) not in CELLS:
                    raise RegionError(f"cell {item!r} is not one of 0-8 (the 3x3 grid, row by row from the top "
                                      "left)")
                cells.append(int(item))
            continue
        name = _ALIASES.get(term, term)
        if name not in REGION_NAMES:
            raise RegionError(f"{term!r} is not a region; use {', '.join(REGION_NAMES)} or cells:N,N (0-8), "
                              "joined by '+'")
        names.append(name)
    return names, cells


def canonical_region(text: str) -> str:
    """The one spelling of a region (`Cells: 4,0 + LEFT` -> `left+cells:0,4`); RegionError when it is none."""
    names, cells = _terms(text)
    parts = [n for n in REGION_NAMES if n in names]
    if cells:
        parts.append("cells:" + ",".join(str(c) for c in sorted(set(cells))))
    return "+".join(parts)


def cells_region(cells: Iterable[int]) -> str:
    """The region text of some cells of the 3×3 grid (what a multi-select menu of cells gives)."""
    return canonical_region("cells:" + ",".join(str(int(c)) for c in cells))


def region_fractions(text: str) -> list[tuple[Fraction, Fraction, Fraction, Fraction]]:
    """The boxes of a region as fractions of the image's width and height (left, top, right, bottom)."""
    names, cells = _terms(text)
    boxes = [REGION_NAMES[n] for n in dict.fromkeys(names)]
    for c in sorted(set(cells)):
        r, k = divmod(c, GRID)
        boxes.append((Fraction(k, GRID), Fraction(r, GRID), Fraction(k + 1, GRID), Fraction(r + 1, GRID)))
    return boxes


def region_boxes(text: str, width: int, height: int) -> list[Box]:
    """The boxes of a region in pixels of a `width` x `height` image (grid lines rounded to whole pixels)."""
    return [(round(x0 * width), round(y0 * height), round(x1 * width), round(y1 * height))
            for x0, y0, x1, y1 in region_fractions(text)]


def region_share(text: str) -> float:
    """The part of the image a region covers, 0-1 (overlapping parts counted once), e.g. to show "redraws 25%"."""
    boxes = region_boxes(text, 12 * GRID, 12 * GRID)  # a side every fraction above falls on whole pixels of
    covered = {(x, y) for x0, y0, x1, y1 in boxes for x in range(x0, x1) for y in range(y0, y1)}
    return len(covered) / float((12 * GRID) ** 2)


# --- outpainting ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OutpaintLayout:
    """Where the source goes on the grown canvas. `source` is its box on the canvas (its size there is the source's
    times `scale`, which is 1 unless the canvas had to shrink to fit the model); `new_area` the boxes the model
    draws (the canvas outside `source`)."""

    kind: str
    width: int
    height: int
    source: Box
    scale: float

    @property
    def size(self) -> tuple[int, int]:
        return self.width, self.height

    @property
    def new_area(self) -> list[Box]:
        x0, y0, x1, y1 = self.source
        w, h = self.width, self.height
        boxes = [(0, 0, w, y0), (0, y1, w, h), (0, y0, x0, y1), (x1, y0, w, y1)]
        return [b for b in boxes if b[2] > b[0] and b[3] > b[1]]


def check_outpaint(kind: str) -> str:
    """`kind` when it is an outpainting kind; RegionError naming the allowed ones otherwise."""
    if kind not in OUTPAINTS:
        raise RegionError(f"outpaint {kind!r} is not one of {', '.join(OUTPAINTS)}")
    return kind


def _up(value: float, multiple: int) -> int:
    return -(-int(round(value)) // multiple) * multiple


def outpaint_layout(kind: str, width: int, height: int, *, max_side: int, multiple: int = 8) -> OutpaintLayout:
    """The canvas of an outpainting of a `width` x `height` source for a model taking sides up to `max_side` that are
    multiples of `multiple` (the card's). RegionError for an unknown kind, or `square` of a square source."""
    check_outpaint(kind)
    if width < 1 or height < 1:
        raise RegionError(f"the source has to be at least 1x1 px (it is {width}x{height})")
    w, h = Fraction(width), Fraction(height)
    if kind.startswith("zoom_"):
        k = Fraction(kind[len("zoom_"):])
        cw, ch = w * k, h * k
    elif kind in ("pan_left", "pan_right"):
        cw, ch = w + w / 2, h
    elif kind in ("pan_up", "pan_down"):
        cw, ch = w, h + h / 2
    else:  # square
        if width == height:
            raise RegionError(f"the image is square already ({width}x{height}); `square` grows a non-square one")
        cw = ch = max(w, h)
    scale = min(Fraction(1), Fraction(max_side) / max(cw, ch))
    # The source at its scaled size; the canvas around it on the model's grid, never beyond `max_side`.
    sw, sh = max(1, round(w * scale)), max(1, round(h * scale))
    cw_px = min(_up(cw * scale, multiple), max_side // multiple * multiple)
    ch_px = min(_up(ch * scale, multiple), max_side // multiple * multiple)
    sw, sh = min(sw, cw_px), min(sh, ch_px)
    if kind == "pan_left":
        x0, y0 = cw_px - sw, (ch_px - sh) // 2
    elif kind == "pan_right":
        x0, y0 = 0, (ch_px - sh) // 2
    elif kind == "pan_up":
        x0, y0 = (cw_px - sw) // 2, ch_px - sh
    elif kind == "pan_down":
        x0, y0 = (cw_px - sw) // 2, 0
    else:
        x0, y0 = (cw_px - sw) // 2, (ch_px - sh) // 2
    return OutpaintLayout(kind, cw_px, ch_px, (x0, y0, x0 + sw, y0 + sh), float(scale))
