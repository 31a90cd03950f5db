"""The figure contract every drawing of the course follows: rank colours, PNG, no pyplot state.

Colour convention (the whole course uses it, and a browser test counts it):

* rank r is drawn in ``RANK_COLORS[r]`` -- solid, opaque rectangles of exactly that RGB value;
* anything every rank holds a full copy of ("replicated") is drawn in grey ``REPLICATED_GREY``;
* text, borders and backgrounds are black / greys / white, never a rank colour.

So the set of rank colours visible in a layout figure is the set of ranks that own a block:
:func:`count_rank_colors` recovers it from a rendered figure or a screenshot.

Every figure function returns a ``matplotlib.figure.Figure`` with an Agg canvas; none calls
``plt.show()`` and none registers the figure with pyplot, so nothing leaks and a notebook cell
ending in ``layout_figure(...)`` shows the figure exactly once. ``fig.canvas.draw()`` and
``np.asarray(fig.canvas.buffer_rgba())`` work on every returned figure.

Matplotlib only; nothing here runs a collective or imports ipyparallel / torch.distributed.
"""


from __future__ import annotations

import io
from typing import Any

import matplotlib.pyplot as plt  # noqa: F401  (in a kernel this enables IPython's Figure -> PNG formatter)
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["RANK_COLORS", "RANK_COLORS_HEX", "to_2d", "REPLICATED_GREY", "MAX_DEGREE", "TPFigure",
           "rank_color", "text_on", "new_figure", "message_figure", "count_rank_colors", "figure_to_png",
           "figure_to_rgba", "TEXT", "MUTED", "BOX", "DPI"]

#: One colour per rank, as (R, G, B) in 0..255: tab10's first seven plus its cyan (tab10's own
#: grey is skipped because grey means "replicated" here).
RANK_COLORS: list[tuple[int, int, int]] = [
    (31, 119, 180),   # 0 blue    #1f77b4
    (255, 127, 14),   # 1 orange  #ff7f0e
    (44, 160, 44),    # 2 green   #2ca02c
    (214, 39, 40),    # 3 red     #d62728
    (148, 103, 189),  # 4 purple  #9467bd
    (140, 86, 75),    # 5 brown   #8c564b
    (227, 119, 194),  # 6 pink    #e377c2
    (23, 190, 207),   # 7 cyan    #17becf
]
RANK_COLORS_HEX: list[str] = ["#%02x%02x%02x" % c for c in RANK_COLORS]
#: Fill for tensors that every rank holds a full copy of.
REPLICATED_GREY = "#b4b4b4"

MAX_DEGREE = len(RANK_COLORS)
DPI = 90
TEXT = "#222222"
MUTED = "#555555"
BOX = "#f2f2f2"

def rank_color(rank: int) -> tuple[float, float, float]:
    """Matplotlib colour (floats 0..1) of ``rank``; ranks >= 8 reuse colours (rank % 8)."""
    r, g, b = RANK_COLORS[int(rank) % len(RANK_COLORS)]
    return (r / 255.0, g / 255.0, b / 255.0)


def text_on(rank: int) -> str:
    r, g, b = RANK_COLORS[int(rank) % len(RANK_COLORS)]
    return "black" if (0.299 * r + 0.587 * g + 0.114 * b) > 150 else "white"


class TPFigure(Figure):
    """A plain matplotlib Figure (Agg canvas, not registered with pyplot) that also knows how
    to show itself as PNG in a notebook, whatever backend the kernel has (or has not yet) set up.
    """

    def _repr_png_(self) -> bytes:
        return figure_to_png(self)


def to_2d(a):
    """A tensor or array as 2-D for drawing: scalars 1×1, vectors 1×N, >2-D flattened to
    (prod(leading dims), last dim)."""
    if a.ndim == 0:
        return a.reshape(1, 1)
    if a.ndim == 1:
        return a.reshape(1, -1)
    return a if a.ndim == 2 else a.reshape(-1, a.shape[-1])


def new_figure(w: float, h: float, dpi: int = DPI, **kw) -> Figure:
    fig = TPFigure(figsize=(w, h), dpi=dpi, facecolor="white", **kw)
    FigureCanvasAgg(fig)
    return fig


def message_figure(title: str, text: str, w: float, h: float, fontsize: float) -> Figure:
    """A figure that says, in a box under ``title``, why nothing is drawn (e.g. an uneven split)."""
    fig = new_figure(w, h)
    fig.suptitle(title, fontsize=fontsize - 1, color=TEXT)
    fig.text(0.5, 0.46, text, ha="center", va="center", fontsize=fontsize, color=TEXT, linespacing=1.6,
             bbox=dict(boxstyle="round,pad=0.8", facecolor=BOX, edgecolor="#808080"))
    return fig


# --------------------------------------------------------------------------------------------
# pixels
# --------------------------------------------------------------------------------------------


def figure_to_png(fig: Figure, dpi: float | None = None) -> bytes:
    """PNG bytes of ``fig`` at its own dpi (white background, no cropping)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi or fig.dpi, facecolor="white")
    return buf.getvalue()


def figure_to_rgba(fig: Figure) -> np.ndarray:
    """Draw ``fig`` on its canvas and return the (H, W, 4) uint8 RGBA pixels."""
    if not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba()).copy()


def _to_rgb_array(img: Any) -> np.ndarray:
    if isinstance(img, Figure):
        img = figure_to_rgba(img)
    if isinstance(img, (bytes, bytearray, memoryview)):
        from PIL import Image

        with Image.open(io.BytesIO(bytes(img))) as im:
            img = np.asarray(im.convert("RGBA"))
    elif isinstance(img, (str,)) or hasattr(img, "__fspath__"):
        from PIL import Image

        with Image.open(img) as im:
            img = np.asarray(im.convert("RGBA"))
    elif hasattr(img, "convert") and hasattr(img, "size"):  # a PIL image
        img = np.asarray(img.convert("RGBA"))
    a = np.asarray(img)
    if a.ndim != 3 or a.shape[2] not in (3, 4):
        raise ValueError(f"expected an (H, W, 3) or (H, W, 4) image, got shape {a.shape}")
    if a.dtype != np.uint8:
        if np.issubdtype(a.dtype, np.floating) and a.size and float(np.nanmax(a)) <= 1.0:
            a = np.round(a * 255.0)
        a = np.clip(a, 0, 255).astype(np.uint8)
    if a.shape[2] == 4:
        opaque = a[..., 3] >= 250
        rgb = a[..., :3][opaque]
    else:
        rgb = a.reshape(-1, 3)
    return rgb.reshape(-1, 3)


def count_rank_colors(png_or_rgb_array: Any, min_pixels: int = 50, tol: int = 0) -> set[int]:
    """Which ranks' colours appear in an image: ``{r : RANK_COLORS[r] covers >= min_pixels}``.

    Accepts PNG bytes, a file path, a PIL image, a matplotlib Figure, or an (H, W, 3|4) array
    (uint8, or floats in 0..1). Pixels must match ``RANK_COLORS[r]`` exactly (``tol`` = allowed
    difference per channel, for screenshots that went through colour management); in RGBA input,
    pixels that are not opaque are ignored. ``min_pixels`` makes anti-aliased edges, which blend
    colours, irrelevant: solid blocks contribute hundreds of exact pixels.
    """
    rgb = _to_rgb_array(png_or_rgb_array).astype(np.int32)
    found: set[int] = set()
    if tol <= 0:
        keys = (rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2]
        uniq, counts = np.unique(keys, return_counts=True)
        table = dict(zip(uniq.tolist(), counts.tolist()))
        for r, (cr, cg, cb) in enumerate(RANK_COLORS):
            if table.get((cr << 16) | (cg << 8) | cb, 0) >= min_pixels:
                found.add(r)
    else:
        for r, c in enumerate(RANK_COLORS):
            n = int(np.all(np.abs(rgb - np.asarray(c)) <= tol, axis=1).sum())
            if n >= min_pixels:
                found.add(r)
    return found


# --------------------------------------------------------------------------------------------
# layout figure
# --------------------------------------------------------------------------------------------


