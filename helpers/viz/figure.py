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
"""


from __future__ import annotations

import io
from typing import Any

import matplotlib.pyplot as plt  # in a kernel, importing pyplot also enables IPython's Figure -> PNG formatter
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

__all__ = ["RANK_COLORS", "to_2d", "REPLICATED_GREY", "MAX_DEGREE", "TPFigure", "rank_color", "text_on",
           "check_choice", "new_figure", "new_axes", "diagram_axes", "message_figure", "grey_panel", "grid_lines",
           "rank_handles", "rank_blocks", "partial_cards", "stacked_bars", "count_rank_colors", "figure_to_png",
           "render_png", "figure_to_rgba", "TEXT", "MUTED", "BOX", "DPI"]

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
#: Fill for tensors that every rank holds a full copy of.
REPLICATED_GREY = "#b4b4b4"

MAX_DEGREE = len(RANK_COLORS)
DPI = 90
TEXT = "#222222"
MUTED = "#555555"
BOX = "#f2f2f2"

def rank_color(rank: int) -> tuple[float, float, float]:
    """Matplotlib colour (floats 0..1) of ``rank``; ranks >= 8 reuse colours (rank % 8)."""
    return tuple(c / 255.0 for c in RANK_COLORS[int(rank) % len(RANK_COLORS)])


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
    return a.reshape(1, -1) if a.ndim < 2 else a.reshape(-1, a.shape[-1])


def check_choice(name: str, value, choices) -> None:
    """Refuse ``value`` unless it is one of ``choices``, naming them (a learner's typo in a mode)."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")


def new_figure(w: float, h: float, dpi: int = DPI, **kw) -> Figure:
    fig = TPFigure(figsize=(w, h), dpi=dpi, facecolor="white", **kw)
    FigureCanvasAgg(fig)
    return fig


def new_axes(w: float, h: float):
    """A figure with one axes, laid out by matplotlib's constrained layout: ``fig, ax``."""
    fig = new_figure(w, h, layout="constrained")
    return fig, fig.add_subplot()


def diagram_axes(fig: Figure, rect, xlim, ylim, **props):
    """Axes for a diagram at ``rect`` (figure fractions), showing ``xlim`` × ``ylim`` in data units
    (ylim high to low: y grows downwards, like matrix rows), with no axis lines, ticks or labels;
    ``props``: more Axes properties, e.g. ``aspect="equal"``."""
    ax = fig.add_axes(rect, xlim=xlim, ylim=ylim, **props)
    ax.set_axis_off()
    return ax


def message_figure(title: str, text: str, w: float, h: float, fontsize: float) -> Figure:
    """A figure that says, in a box under ``title``, why nothing is drawn (e.g. an uneven split)."""
    fig = new_figure(w, h)
    fig.suptitle(title, fontsize=fontsize - 1, color=TEXT)
    fig.text(0.5, 0.46, text, ha="center", va="center", fontsize=fontsize, color=TEXT, linespacing=1.6,
             bbox=dict(boxstyle="round,pad=0.8", facecolor=BOX, edgecolor="#808080"))
    return fig


# --------------------------------------------------------------------------------------------
# the course's shared drawing patterns
# --------------------------------------------------------------------------------------------


def grey_panel(ax, a, color, title: str, fontsize: float = 8.5, lw: float = 5, **imshow):
    """Real values in a grey colormap (``imshow`` passes vmin/vmax for a shared scale), no ticks, the
    axes' border drawn in ``color`` (a rank's colour frames what that rank holds)."""
    im = ax.imshow(a, cmap="Greys_r", aspect="auto", interpolation="nearest", **imshow)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.spines[:].set(edgecolor=color, linewidth=lw)
    ax.set_title(title, fontsize=fontsize, color=TEXT)
    return im


def grid_lines(ax, x0: float, y0: float, rows: int, cols: int, color: str = "white", lw: float = 0.5) -> None:
    """Lines between the unit cells of a rows × cols table whose corner is at (x0, y0)."""
    ax.vlines(x0 + np.arange(1, cols), y0, y0 + rows, color=color, lw=lw)
    ax.hlines(y0 + np.arange(1, rows), x0, x0 + cols, color=color, lw=lw)


def rank_handles(p: int) -> list[Patch]:
    """Legend entries "rank r" in the rank colours, for ranks 0..p-1."""
    return [Patch(facecolor=rank_color(r), edgecolor="white", label=f"rank {r}") for r in range(p)]


def rank_blocks(ax, x: float, y: float, w: float, h: float, owners, label_min: float | None = None,
                edge: str = "white", lw: float = 1.0) -> None:
    """The rectangle (x, y, w, h) cut into a grid of blocks, block (i, j) filled in the colour of its
    owner ``owners[i][j]`` (row i further along y); with ``label_min``, every block whose smaller
    side is at least that long is labelled with its rank."""
    bw, bh = w / len(owners[0]), h / len(owners)
    for i, row in enumerate(owners):
        for j, r in enumerate(row):
            ax.add_patch(Rectangle((x + j * bw, y + i * bh), bw, bh, facecolor=rank_color(r), edgecolor=edge,
                                   linewidth=lw))
            if label_min is not None and min(bw, bh) >= label_min:
                ax.text(x + (j + 0.5) * bw, y + (i + 0.5) * bh, str(r), ha="center", va="center", fontsize=8,
                        color=text_on(r))


def partial_cards(ax, x: float, y: float, w: float, h: float, p: int, dx: float, dy: float,
                  edge: str = "white", lw: float = 1.0, sigma: float | None = None) -> None:
    """p full-size partial sums as stacked cards, rank r's shifted by (r·dx, r·dy), rank 0 in front;
    ``sigma``: the font size of a Σ written on the front card."""
    for r in reversed(range(p)):
        ax.add_patch(Rectangle((x + r * dx, y + r * dy), w, h, facecolor=rank_color(r), edgecolor=edge,
                               linewidth=lw))
    if sigma:
        ax.text(x + w / 2, y + h / 2, "Σ", ha="center", va="center", fontsize=sigma, color=text_on(0))


def stacked_bars(ax, x, layers, colors, **bar):
    """Bars at ``x`` stacked from ``layers`` (heights per x, bottom layer first), layer k in ``colors[k]``;
    ``bar``: the rest of ``ax.bar``'s arguments (a list of hatches: one per x). Returns the bars' tops
    and the top layer's bars (for ``ax.bar_label``)."""
    tops = np.zeros(len(x))
    for heights, color in zip(layers, colors):
        bars = ax.bar(x, heights, bottom=tops, color=color, **bar)
        tops = tops + np.asarray(heights, dtype=float)
    return tops, bars


# --------------------------------------------------------------------------------------------
# pixels
# --------------------------------------------------------------------------------------------


def figure_to_png(fig: Figure) -> bytes:
    """PNG bytes of ``fig`` at its own dpi (white background, no cropping)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi, facecolor="white")
    return buf.getvalue()


def render_png(fig: Figure) -> bytes:
    """:func:`figure_to_png`, then the figure is closed (what a widget shows is the PNG)."""
    try:
        return figure_to_png(fig)
    finally:
        plt.close(fig)


def figure_to_rgba(fig: Figure) -> np.ndarray:
    """Draw ``fig`` on its canvas and return the (H, W, 4) uint8 RGBA pixels."""
    if not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba()).copy()


def count_rank_colors(png_or_rgb_array: Any, min_pixels: int = 50, tol: int = 0) -> set[int]:
    """Which ranks' colours appear in an image: ``{r : RANK_COLORS[r] covers >= min_pixels}``.

    Accepts PNG bytes, a matplotlib Figure, or an (H, W, 3|4) array (uint8, or floats in 0..1).
    Pixels must match ``RANK_COLORS[r]`` exactly (``tol`` = allowed difference per channel, for
    screenshots that went through colour management); in RGBA input, pixels that are not opaque
    are ignored. ``min_pixels`` makes anti-aliased edges, which blend
    colours, irrelevant: solid blocks contribute hundreds of exact pixels.
    """
    img = png_or_rgb_array
    if isinstance(img, Figure):
        img = figure_to_rgba(img)
    if isinstance(img, (bytes, bytearray, memoryview)):
        img = plt.imread(io.BytesIO(bytes(img)))  # floats in 0..1, RGB or RGBA
    a = np.asarray(img)
    if a.ndim != 3 or a.shape[2] not in (3, 4):
        raise ValueError(f"expected an (H, W, 3) or (H, W, 4) image, got shape {a.shape}")
    if np.issubdtype(a.dtype, np.floating) and a.size and float(np.nanmax(a)) <= 1.0:
        a = np.round(a * 255.0)
    if a.shape[2] == 4:
        a = a[..., :3][a[..., 3] >= 250]
    rgb = np.clip(a, 0, 255).astype(np.int32).reshape(-1, 3)
    return {r for r, c in enumerate(RANK_COLORS) if np.all(np.abs(rgb - c) <= tol, axis=1).sum() >= min_pixels}
