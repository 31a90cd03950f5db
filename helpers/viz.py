"""Drawings for the notebook kernel: schematic TP layouts, real shards, FLOP/s, the cluster map.

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
import math
import textwrap
from typing import Any, Sequence

import numpy as np
import matplotlib.pyplot as plt  # in a kernel this also enables IPython's Figure -> PNG formatter
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import FancyBboxPatch, Patch, Rectangle

__all__ = [
    "RANK_COLORS",
    "RANK_COLORS_HEX",
    "TPFigure",
    "REPLICATED_GREY",
    "MODES",
    "rank_color",
    "count_rank_colors",
    "figure_to_png",
    "figure_to_rgba",
    "layout_figure",
    "layout_explorer",
    "LayoutExplorer",
    "shard_figure",
    "plot_flops",
    "cluster_map",
]

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

MODES = ("column", "row", "column+row")
MAX_DEGREE = len(RANK_COLORS)
_DPI = 90
_TEXT = "#222222"
_MUTED = "#555555"
_BOX = "#f2f2f2"


def rank_color(rank: int) -> tuple[float, float, float]:
    """Matplotlib colour (floats 0..1) of ``rank``; ranks >= 8 reuse colours (rank % 8)."""
    r, g, b = RANK_COLORS[int(rank) % len(RANK_COLORS)]
    return (r / 255.0, g / 255.0, b / 255.0)


def _text_on(rank: int) -> str:
    r, g, b = RANK_COLORS[int(rank) % len(RANK_COLORS)]
    return "black" if (0.299 * r + 0.587 * g + 0.114 * b) > 150 else "white"


class TPFigure(Figure):
    """A plain matplotlib Figure (Agg canvas, not registered with pyplot) that also knows how
    to show itself as PNG in a notebook, whatever backend the kernel has (or has not yet) set up.
    """

    def _repr_png_(self) -> bytes:
        return figure_to_png(self)


def _new_figure(w: float, h: float, dpi: int = _DPI, **kw) -> Figure:
    fig = TPFigure(figsize=(w, h), dpi=dpi, facecolor="white", **kw)
    FigureCanvasAgg(fig)
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


def _fmt_bytes(n: float) -> str:
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" or n == int(n) else f"{n:.1f} {unit}"
        n /= 1024.0
    return f"{n:.1f} GiB"  # pragma: no cover


def _divisors_upto(n: int, hi: int) -> list[int]:
    return [d for d in range(1, hi + 1) if n % d == 0]


def _check_int(name: str, v, lo: int, hi: int | None = None) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {v!r}")
    v = int(v)
    if v < lo or (hi is not None and v > hi):
        rng = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        raise ValueError(f"{name}={v} is out of range ({rng})")
    return v


class _Mat:
    """A matrix in the schematic: rows × cols, with an ownership pattern."""

    def __init__(self, name, rows, cols, own, p, under=""):
        self.name, self.rows, self.cols, self.own, self.p, self.under = name, rows, cols, own, p, under


def _layout_items(p, d_in, d_out, batch, mode):
    """Panels left to right: _Mat or ('op', text) or ('comm', text)."""
    rep = "rep" if p > 1 else "cols"
    one = p == 1
    if mode == "column":
        items = [
            _Mat("X", batch, d_in, rep, p, "every rank: full copy" if not one else ""),
            ("op", "·"),
            _Mat("W", d_in, d_out, "cols", p, f"rank r: W[:, r-th block] ({d_in}, {d_out // p})"),
            ("op", "="),
            _Mat("Y_r", batch, d_out, "cols", p, f"rank r: Y_r ({batch}, {d_out // p})"),
        ]
        if not one:
            items += [("comm", "all-gather"), _Mat("Y", batch, d_out, "rep", p, "every rank: full copy")]
        return items
    if mode == "row":
        items = [
            _Mat("X", batch, d_in, "cols", p, f"rank r: X_r ({batch}, {d_in // p})"),
            ("op", "·"),
            _Mat("W", d_in, d_out, "rows", p, f"rank r: W[r-th block, :] ({d_in // p}, {d_out})"),
            ("op", "="),
            _Mat("Y_r" if not one else "Y", batch, d_out, "partial" if not one else "cols", p,
                 f"rank r: partial sum ({batch}, {d_out})" if not one else ""),
        ]
        if not one:
            items += [("comm", "all-reduce\n(sum)"), _Mat("Y", batch, d_out, "rep", p, "every rank: full copy")]
        return items
    # column+row: the MLP. in_features = model dim D, out_features = hidden dim H.
    items = [
        _Mat("X", batch, d_in, rep, p, "every rank: full copy" if not one else ""),
        ("op", "·"),
        _Mat("W1", d_in, d_out, "cols", p, f"column: ({d_in}, {d_out // p})"),
        ("op", "→ GeLU →"),
        _Mat("H_r", batch, d_out, "cols", p, f"rank r: H_r ({batch}, {d_out // p})"),
        ("op", "·"),
        _Mat("W2", d_out, d_in, "rows", p, f"row: ({d_out // p}, {d_in})"),
        ("op", "="),
        _Mat("Y_r" if not one else "Y", batch, d_in, "partial" if not one else "cols", p,
             f"rank r: partial sum ({batch}, {d_in})" if not one else ""),
    ]
    if not one:
        items += [("comm", "all-reduce\n(sum)"), _Mat("Y", batch, d_in, "rep", p, "every rank: full copy")]
    return items


def _comm_text(p, d_in, d_out, batch, b, mode) -> str:
    if mode == "column":
        head = (f"column-parallel: W ({d_in}×{d_out}) split by columns, X replicated → rank r computes "
                f"Y_r = X·W_r ({batch}×{d_out // p}).")
    elif mode == "row":
        head = (f"row-parallel: W ({d_in}×{d_out}) split by rows, X split by columns → rank r computes a "
                f"full-size partial sum Y_r = X_r·W_r ({batch}×{d_out}); Y = Σ_r Y_r.")
    else:
        head = (f"MLP = column then row (in_features = model dim D = {d_in}, out_features = hidden H = "
                f"{d_out}): W1 (D×H) split by columns, W2 (H×D) split by rows. H_r = GeLU(X·W1_r) "
                f"stays on rank r and feeds W2_r: no communication in between.")
    if p == 1:
        return head + "\nTP degree 1: a single rank holds everything — no communication."
    if mode == "column":
        shard = batch * (d_out // p) * b
        return head + (
            f"\nforward: all-gather of Y. Each rank contributes Y_r = B·out/p·bytes = "
            f"{batch}·{d_out}/{p}·{b} = {_fmt_bytes(shard)};"
            f"\nring all-gather: each rank sends (p−1)·B·out/p·bytes = {p - 1}·{_fmt_bytes(shard)} = "
            f"{_fmt_bytes((p - 1) * shard)} (and receives as much)."
            f"\nbackward: all-reduce of dL/dX, B·in·bytes = {_fmt_bytes(batch * d_in * b)} per rank."
        )
    d_y = d_out if mode == "row" else d_in
    buf = batch * d_y * b
    sym = "out" if mode == "row" else "D"
    ring = 2 * (p - 1) / p * buf
    text = head + (
        f"\nforward: {'one ' if mode != 'row' else ''}all-reduce of Y. Buffer per rank = B·{sym}·bytes = "
        f"{batch}·{d_y}·{b} = {_fmt_bytes(buf)};"
        f"\nring all-reduce: each rank sends 2(p−1)/p·B·{sym}·bytes = {_fmt_bytes(ring)} (and receives as much)."
    )
    if mode == "row":
        text += "\nbackward: none (every rank already holds the full dL/dY)."
    else:
        text += f"\nbackward: one all-reduce of dL/dX, B·D·bytes = {_fmt_bytes(buf)} per rank."
    return text


def _uneven_message(p, d_in, d_out, mode) -> str | None:
    name, n = ("in_features", d_in) if mode == "row" else ("out_features", d_out)
    if n % p == 0:
        return None
    ok = ", ".join(str(d) for d in _divisors_upto(n, MAX_DEGREE))
    pad = math.ceil(n / p) * p
    what = "the hidden dim H" if mode == "column+row" else name
    return (f"{name}={n} is not divisible by {p}\n"
            f"({mode} mode splits {what} across the {p} ranks)\n"
            f"pick a TP degree in {{{ok}}} or pad {name} to {pad}")


def layout_figure(degree: int, in_features: int, out_features: int, mode: str, batch: int = 4,
                  dtype_bytes: int = 4) -> Figure:
    """Schematic of Y = X·W (W is in_features × out_features) split over ``degree`` ranks.

    mode "column": W split by columns, X replicated, Y_r gathered (all-gather);
    "row": W split by rows, X split by columns, partial sums all-reduced;
    "column+row": the Megatron MLP, W1 (in × out) column-parallel then W2 (out × in)
    row-parallel, one all-reduce, no communication in between.

    Blocks are filled with their owner's ``RANK_COLORS`` entry; grey = every rank holds a full
    copy; stacked cards = every rank holds a full-size partial sum. Box lengths follow the
    feature sizes but are clamped so that every rank's block stays visible (the figure says so
    when it is not to scale). A text box states the communication and the byte formulas.
    When the split dimension is not divisible by ``degree`` no shards are drawn; the figure shows
    e.g. "out_features=10 is not divisible by 4" instead.
    """
    p = _check_int("degree", degree, 1, MAX_DEGREE)
    d_in = _check_int("in_features", in_features, 1)
    d_out = _check_int("out_features", out_features, 1)
    batch = _check_int("batch", batch, 1)
    b = _check_int("dtype_bytes", dtype_bytes, 1)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(repr(m) for m in MODES)}; got {mode!r}")

    title = f"Y = X·W, {mode}-parallel, TP degree {p}" if mode != "column+row" else \
        f"MLP  Y = GeLU(X·W1)·W2, column+row parallel, TP degree {p}"
    msg = _uneven_message(p, d_in, d_out, mode)
    if msg is not None:
        fig = _new_figure(10, 3.2)
        fig.suptitle(title, fontsize=12, color=_TEXT)
        fig.text(0.5, 0.48, msg, ha="center", va="center", fontsize=13, color=_TEXT,
                 linespacing=1.6,
                 bbox=dict(boxstyle="round,pad=0.8", facecolor=_BOX, edgecolor="#808080"))
        return fig

    items = _layout_items(p, d_in, d_out, batch, mode)
    if p == 1:
        for it in items:
            if isinstance(it, _Mat):
                it.name, it.under = it.name.replace("_r", ""), "rank 0 holds all of it"
    mats = [it for it in items if isinstance(it, _Mat)]
    max_dim = max(max(m.rows, m.cols) for m in mats)
    scale = 4.0 / max_dim
    clamped = False

    def length(n: int, split: int) -> float:
        nonlocal clamped
        lo = max(0.9, 0.36 * split)
        v = n * scale
        if v < lo:
            clamped = True
            return lo
        return v

    # geometry: (x, width, height) per item
    geo = []
    x = 0.0
    gap = 0.35
    for it in items:
        if isinstance(it, _Mat):
            w = length(it.cols, it.p if it.own == "cols" else 1)
            h = length(it.rows, it.p if it.own == "rows" else 1)
            if it.own == "partial":
                off = 0.13
                geo.append((x, w, h, off))
                x += w + off * (it.p - 1) + gap
            else:
                geo.append((x, w, h, 0.0))
                x += w + gap
        else:
            kind, text = it
            w = 1.9 if kind == "comm" else (1.7 if "GeLU" in text else 0.55)
            geo.append((x, w, 0.0, 0.0))
            x += w + gap
    data_w = x - gap
    data_h = max(g[2] + g[3] * 8 for g in geo)

    fig_w = 10.0
    unit_in = min(0.62, (fig_w - 0.4) / (data_w + 0.4))
    top_pad, label_pad = 0.55, 0.55  # inches: title; shape labels above / captions below
    draw_h = data_h * unit_in + 2 * label_pad
    comm = _comm_text(p, d_in, d_out, batch, b, mode)
    if clamped:
        comm += "\n(not to scale: small dims are drawn larger so every block stays visible; true shapes in the labels)"
    comm = "\n".join(textwrap.fill(line, 118, subsequent_indent="   ") for line in comm.split("\n"))
    n_lines = comm.count("\n") + 1
    text_h = 0.22 * n_lines + 0.35
    legend_h = 0.45
    fig_h = top_pad + draw_h + legend_h + text_h + 0.15
    fig = _new_figure(fig_w, fig_h)
    fig.suptitle(title, fontsize=12, color=_TEXT, y=1 - 0.12 / fig_h, va="top")

    ax_w = (data_w + 0.4) * unit_in
    ax = fig.add_axes([(fig_w - ax_w) / 2 / fig_w, (legend_h + text_h + 0.15) / fig_h,
                       ax_w / fig_w, draw_h / fig_h])
    ax.set_axis_off()
    ax.set_xlim(-0.2, data_w + 0.2)
    half = data_h / 2 + label_pad / unit_in
    ax.set_ylim(half, -half)  # y grows downwards, like matrix rows

    for it, (x0, w, h, off) in zip(items, geo):
        if not isinstance(it, _Mat):
            kind, text = it
            if kind == "comm":
                ax.annotate("", xy=(x0 + w, 0), xytext=(x0, 0),
                            arrowprops=dict(arrowstyle="-|>", color=_TEXT, lw=1.6))
                ax.text(x0 + w / 2, -0.15, text, ha="center", va="bottom", fontsize=10,
                        color=_TEXT, fontweight="bold")
            else:
                ax.text(x0 + w / 2, 0, text, ha="center", va="center",
                        fontsize=18 if len(text) == 1 else 10, color=_TEXT)
            continue
        _draw_mat(ax, it, x0, w, h, off, unit_in)

    # legend: ranks, replicated, partial
    handles = [Patch(facecolor=rank_color(r), edgecolor="white", label=f"rank {r}") for r in range(p)]
    if p > 1:
        handles.append(Patch(facecolor=REPLICATED_GREY, edgecolor="#666666",
                             label="grey: every rank has a full copy"))
        if mode != "column":
            handles.append(Patch(facecolor="white", edgecolor="#666666",
                                 label="stacked: each rank holds a full-size partial sum"))
    fig.legend(handles=handles, loc="center", ncol=min(len(handles), 6), frameon=False,
               fontsize=9, bbox_to_anchor=(0.5, (text_h + 0.15 + legend_h / 2) / fig_h),
               handlelength=1.2, columnspacing=1.0, labelcolor=_TEXT)
    fig.text(0.5, (text_h + 0.05) / fig_h, comm, ha="center", va="top", fontsize=8.5, color=_TEXT,
             linespacing=1.45, wrap=False,
             bbox=dict(boxstyle="round,pad=0.5", facecolor=_BOX, edgecolor="#999999"))
    return fig


def _draw_mat(ax, m: _Mat, x0: float, w: float, h: float, off: float, unit_in: float) -> None:
    top = -h / 2
    p = m.p
    label_y = top - 0.12
    if m.own == "partial":
        # p full-size cards, rank p-1 at the back; rank 0 on top (front, bottom-left).
        for r in reversed(range(p)):
            dx, dy = off * r, -off * r
            ax.add_patch(Rectangle((x0 + dx, top + dy), w, h, facecolor=rank_color(r),
                                   edgecolor="white", linewidth=1.2))
        label_y = top - off * (p - 1) - 0.12
        ax.text(x0 + w / 2, top + h / 2, "Σ", ha="center", va="center", fontsize=12,
                color=_text_on(0))
    elif m.own == "rep":
        ax.add_patch(Rectangle((x0, top), w, h, facecolor=REPLICATED_GREY, edgecolor="none"))
    elif m.own == "cols":
        bw = w / p
        for r in range(p):
            ax.add_patch(Rectangle((x0 + r * bw, top), bw, h, facecolor=rank_color(r),
                                   edgecolor="white", linewidth=1.0))
            if bw * unit_in >= 0.16 and p > 1:
                ax.text(x0 + (r + 0.5) * bw, top + h / 2, str(r), ha="center", va="center",
                        fontsize=8, color=_text_on(r))
    elif m.own == "rows":
        bh = h / p
        for r in range(p):
            ax.add_patch(Rectangle((x0, top + r * bh), w, bh, facecolor=rank_color(r),
                                   edgecolor="white", linewidth=1.0))
            if bh * unit_in >= 0.14 and p > 1:
                ax.text(x0 + w / 2, top + (r + 0.5) * bh, str(r), ha="center", va="center",
                        fontsize=8, color=_text_on(r))
    if m.own != "partial":
        ax.add_patch(Rectangle((x0, top), w, h, fill=False, edgecolor="#333333", linewidth=1.0))
    ax.text(x0 + w / 2 + (off * (p - 1) / 2 if m.own == "partial" else 0), label_y,
            f"{m.name}\n({m.rows}, {m.cols})", ha="center", va="bottom", fontsize=9, color=_TEXT)
    if m.under:
        ax.text(x0 + w / 2, top + h + 0.12, m.under.replace(": ", ":\n", 1), ha="center", va="top",
                fontsize=7.5, color=_MUTED)


# --------------------------------------------------------------------------------------------
# explorer widget
# --------------------------------------------------------------------------------------------


def layout_explorer(degree: int = 4, in_features: int = 16, out_features: int = 32,
                    mode: str = "column", batch: int = 4, dtype_bytes: int = 4) -> "LayoutExplorer":
    """Interactive :func:`layout_figure`: sliders for TP degree and feature sizes, a mode menu.

    Returns a :class:`LayoutExplorer` (an ``ipywidgets.VBox`` with the CSS class
    ``tp-layout-explorer``). The figure is rendered to PNG bytes into an ``ipywidgets.Image``
    (CSS class ``tp-layout-image``; in the DOM it is the ``<img>`` element itself, with a
    ``blob:`` src that changes on every redraw). Each change of a control's value redraws exactly
    once; the figure is closed after rendering. Drawing errors go to an ``Output`` below the image.

    Browser tests: ``.tp-layout-explorer img.tp-layout-image`` is the picture;
    ``.tp-layout-explorer .tp-degree`` is the TP-degree slider (label text "TP degree"), whose
    ``.widget-readout`` is contenteditable: click it, select all, type "2", press Enter.
    Other controls: ``.tp-in-features``, ``.tp-out-features`` (sliders), ``.tp-mode`` (a
    ``<select>`` inside). Then screenshot the ``<img>`` and call :func:`count_rank_colors`.
    """
    return LayoutExplorer(degree=degree, in_features=in_features, out_features=out_features,
                          mode=mode, batch=batch, dtype_bytes=dtype_bytes)


def _explorer_base():
    import ipywidgets as widgets

    return widgets.VBox


class LayoutExplorer(_explorer_base()):  # type: ignore[misc]
    """The widget returned by :func:`layout_explorer` (see there).

    Attributes: ``degree``, ``in_features``, ``out_features`` (IntSlider), ``mode`` (Dropdown),
    ``image`` (Image, PNG), ``messages`` (Output), ``redraw_count`` (int), ``png`` (bytes).
    """

    def __init__(self, degree=4, in_features=16, out_features=32, mode="column", batch=4,
                 dtype_bytes=4):
        import ipywidgets as widgets

        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(repr(m) for m in MODES)}; got {mode!r}")
        self.batch = _check_int("batch", batch, 1)
        self.dtype_bytes = _check_int("dtype_bytes", dtype_bytes, 1)
        style = {"description_width": "90px"}
        lay = widgets.Layout(width="330px")
        self.degree = widgets.IntSlider(value=_check_int("degree", degree, 1, MAX_DEGREE), min=1,
                                        max=MAX_DEGREE, step=1, description="TP degree",
                                        continuous_update=False, style=style, layout=lay)
        self.in_features = widgets.IntSlider(value=_check_int("in_features", in_features, 8, 64),
                                             min=8, max=64, step=8, description="in_features",
                                             continuous_update=False, style=style, layout=lay)
        self.out_features = widgets.IntSlider(value=_check_int("out_features", out_features, 8, 64),
                                              min=8, max=64, step=8, description="out_features",
                                              continuous_update=False, style=style, layout=lay)
        self.mode = widgets.Dropdown(options=list(MODES), value=mode, description="layout",
                                     style=style, layout=lay)
        self.degree.add_class("tp-degree")
        self.in_features.add_class("tp-in-features")
        self.out_features.add_class("tp-out-features")
        self.mode.add_class("tp-mode")
        self.image = widgets.Image(format="png")
        self.image.add_class("tp-layout-image")
        self.messages = widgets.Output()
        self.redraw_count = 0
        self.png = b""
        controls = widgets.HBox([
            widgets.VBox([self.degree, self.mode]),
            widgets.VBox([self.in_features, self.out_features]),
        ])
        super().__init__([controls, self.image, self.messages])
        self.add_class("tp-layout-explorer")
        self.redraw()
        for w in (self.degree, self.in_features, self.out_features, self.mode):
            w.observe(self._on_change, names="value")

    def _on_change(self, change) -> None:
        self.redraw()

    def redraw(self) -> None:
        """Render the figure for the current control values into ``self.image``."""
        fig = None
        try:
            fig = layout_figure(self.degree.value, self.in_features.value, self.out_features.value,
                                self.mode.value, batch=self.batch, dtype_bytes=self.dtype_bytes)
            png = figure_to_png(fig)
        except Exception as e:  # keep the widget alive; say what went wrong under the picture
            self.messages.clear_output()
            self.messages.append_stdout(f"could not draw this layout: {type(e).__name__}: {e}\n")
            return
        finally:
            if fig is not None:
                plt.close(fig)
        self.messages.clear_output()
        self.png = png
        self.image.value = png
        self.redraw_count += 1


# --------------------------------------------------------------------------------------------
# real shards
# --------------------------------------------------------------------------------------------


def _np64(x, what: str) -> np.ndarray:
    from .reference import _to_f64

    return _to_f64(x, what).numpy()


def _to_2d(a: np.ndarray) -> np.ndarray:
    if a.ndim == 0:
        return a.reshape(1, 1)
    if a.ndim == 1:
        return a.reshape(1, -1)
    if a.ndim == 2:
        return a
    return a.reshape(-1, a.shape[-1])


def _grid(ax, rows: int, cols: int, x0=-0.5, y0=-0.5) -> None:
    if rows <= 32 and cols <= 32:
        for i in range(rows + 1):
            ax.plot([x0, x0 + cols], [y0 + i, y0 + i], color="#ffffff", lw=0.4, alpha=1.0)
        for j in range(cols + 1):
            ax.plot([x0 + j, x0 + j], [y0, y0 + rows], color="#ffffff", lw=0.4, alpha=1.0)


def shard_figure(shards: Sequence, layout: str, name: str = "W", dense_shape=None) -> Figure:
    """Draw the actual per-rank values pulled from the engines.

    ``shard(d)``: each rank's block sits at its place in the full tensor; values in a grey
    colormap (shared scale), a thick ``RANK_COLORS[r]`` border around rank r's block and the
    label ``rank r: (4, 16)``. ``replicate`` / ``partial``: one panel per rank (every rank has a
    full-size tensor), framed in the rank's colour; ``partial`` adds the Σ panel.
    1-D tensors are drawn as 1×N; >2-D tensors are flattened to (prod(leading dims), last dim)
    (sharding must then be along the first or last dim). ``dense_shape``, if given, is checked
    against the reassembled shape and stated in the title.
    """
    from .reference import parse_layout, _as_shard_list

    kind, dim = parse_layout(layout)
    pieces = [_np64(s, f"{name}: shard of rank {r}") for r, s in enumerate(_as_shard_list(shards))]
    p = len(pieces)
    if p == 0:
        raise ValueError("shards is empty: expected one tensor per rank")
    if p > MAX_DEGREE:
        raise ValueError(f"shard_figure draws up to {MAX_DEGREE} ranks, got {p}")
    finite = [a[np.isfinite(a)] for a in pieces]
    allv = np.concatenate([f.ravel() for f in finite]) if any(f.size for f in finite) else np.zeros(1)
    vmin, vmax = float(allv.min()), float(allv.max())
    if vmin == vmax:
        vmin, vmax = vmin - 1.0, vmax + 1.0
    cmap = "Greys_r"

    if kind == "shard":
        return _shard_blocks(pieces, dim, name, dense_shape, vmin, vmax, cmap)
    return _shard_panels(pieces, kind, name, dense_shape, vmin, vmax, cmap)


def _shard_blocks(pieces, dim, name, dense_shape, vmin, vmax, cmap) -> Figure:
    p = len(pieces)
    nd = pieces[0].ndim
    if nd == 0 or any(a.ndim != nd for a in pieces):
        raise ValueError(f"layout shard({dim}): shards must all have the same number (>= 1) of dims; "
                         f"got shapes {[a.shape for a in pieces]}")
    if not -nd <= dim < nd:
        raise ValueError(f"layout shard({dim}): dim out of range for {nd}-d shards")
    d = dim % nd
    if nd > 2 and d not in (0, nd - 1):
        raise ValueError(f"shard_figure draws >2-d tensors flattened to 2-d, so the shard dim must be "
                         f"the first or last; got shard({dim}) of {nd}-d shards")
    horizontal = (nd == 1) or (d == nd - 1)
    blocks = [_to_2d(a) for a in pieces]
    try:
        full = np.concatenate(blocks, axis=1 if horizontal else 0)
    except ValueError:
        raise ValueError(f"layout shard({dim}): shard shapes do not fit together: "
                         f"{[tuple(a.shape) for a in pieces]}") from None
    full_shape = list(pieces[0].shape)
    full_shape[d] = sum(a.shape[d] for a in pieces)
    rows, cols = full.shape

    w = min(11.0, max(4.5, 0.32 * cols + 2.5))
    h = min(8.0, max(2.4, 0.32 * rows + 1.8))
    fig = _new_figure(w, h)
    ax = fig.add_axes([0.08, 0.1, 0.72, 0.72])
    im = ax.imshow(full, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest", aspect="auto")
    _grid(ax, rows, cols)
    start = 0
    for r, blk in enumerate(blocks):
        br, bc = blk.shape
        x0, y0 = (start - 0.5, -0.5) if horizontal else (-0.5, start - 0.5)
        inset = 0.08
        ax.add_patch(Rectangle((x0 + inset, y0 + inset), bc - 2 * inset, br - 2 * inset, fill=False,
                               edgecolor=rank_color(r), linewidth=4, clip_on=False, zorder=3))
        label = f"rank {r}: {tuple(pieces[r].shape)}"
        if horizontal:
            ax.text(x0 + bc / 2, -0.5 - 0.02 * rows - 0.3, label, ha="center", va="bottom", fontsize=8,
                    color=_TEXT, rotation=0 if bc >= 4 or p <= 2 else 30, clip_on=False)
        else:
            ax.text(cols - 0.5 + 0.3 + 0.02 * cols, y0 + br / 2, label, ha="left", va="center",
                    fontsize=8, color=_TEXT, clip_on=False)
        start += bc if horizontal else br
    ax.set_xticks([])
    ax.set_yticks([])
    for s in ax.spines.values():
        s.set_visible(False)
    title = f"{name}: shard({dim}) over {p} rank{'s' if p != 1 else ''}, full shape {tuple(full_shape)}"
    if dense_shape is not None:
        ds = tuple(int(s) for s in dense_shape)
        title += ("  = dense" if ds == tuple(full_shape) else f"  ≠ dense {ds}!")
    fig.suptitle(title, fontsize=10, color=_TEXT)
    cax = fig.add_axes([0.9 if not horizontal else 0.86, 0.1, 0.025, 0.72])
    fig.colorbar(im, cax=cax)
    if not horizontal:
        ax.set_position([0.06, 0.1, 0.62, 0.72])
    return fig


def _shard_panels(pieces, kind, name, dense_shape, vmin, vmax, cmap) -> Figure:
    p = len(pieces)
    shapes = {a.shape for a in pieces}
    if len(shapes) != 1:
        raise ValueError(f"layout {kind}: every rank should hold a full-size tensor of one shape; "
                         f"got {[tuple(a.shape) for a in pieces]}")
    panels = [(f"rank {r}: {'partial ' if kind == 'partial' else ''}{tuple(a.shape)}", a, r)
              for r, a in enumerate(pieces)]
    if kind == "partial":
        total = np.sum(pieces, axis=0)
        panels.append((f"Σ over ranks: {tuple(total.shape)}", total, None))
        vmin, vmax = min(vmin, float(np.nanmin(total))), max(vmax, float(np.nanmax(total)))
    n = len(panels)
    ncols = min(n, 4)
    nrows = math.ceil(n / ncols)
    b2 = _to_2d(pieces[0])
    aspect = b2.shape[0] / max(b2.shape[1], 1)
    pw = 2.6
    ph = min(3.0, max(0.9, pw * aspect))
    fig = _new_figure(ncols * pw + 1.0, nrows * (ph + 0.6) + 0.7)
    gs = fig.add_gridspec(nrows, ncols, left=0.04, right=0.88, top=1 - 0.6 / (nrows * (ph + 0.6) + 0.7),
                          bottom=0.04, wspace=0.15, hspace=0.45)
    im = None
    for i, (label, a, r) in enumerate(panels):
        ax = fig.add_subplot(gs[i // ncols, i % ncols])
        a2 = _to_2d(a)
        im = ax.imshow(a2, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest", aspect="auto")
        _grid(ax, *a2.shape)
        ax.set_xticks([])
        ax.set_yticks([])
        for s in ax.spines.values():
            s.set_edgecolor(rank_color(r) if r is not None else "#222222")
            s.set_linewidth(5 if r is not None else 1.5)
        ax.set_title(label, fontsize=8.5, color=_TEXT)
    note = ""
    if kind == "replicate":
        diffs = [float(np.nanmax(np.abs(a - pieces[0]))) if a.size else 0.0 for a in pieces]
        worst = max(diffs)
        note = "  (all copies identical)" if worst == 0 else f"  (copies differ: max |Δ| {worst:.1e})"
    title = f"{name}: {kind} over {p} rank{'s' if p != 1 else ''}{note}"
    if dense_shape is not None:
        ds = tuple(int(s) for s in dense_shape)
        title += "  shape = dense" if ds == tuple(pieces[0].shape) else f"  ≠ dense {ds}!"
    fig.suptitle(title, fontsize=10, color=_TEXT)
    cax = fig.add_axes([0.91, 0.1, 0.02, 0.75])
    fig.colorbar(im, cax=cax)
    return fig


# --------------------------------------------------------------------------------------------
# FLOP/s
# --------------------------------------------------------------------------------------------


def plot_flops(degrees: Sequence[int], flops, title: str = "Achieved GFLOP/s vs TP degree", *,
               ideal: bool = True, ylabel: str = "achieved GFLOP/s (all ranks)") -> Figure:
    """Achieved GFLOP/s against TP degree, with the ideal linear-scaling line.

    ``flops``: one value per degree (GFLOP/s), or a ``{label: values}`` dict for several series
    (e.g. per matrix size). The ideal line extends the first point linearly
    (``flops[0] · degree / degrees[0]``); each point is annotated with its % of that ideal.
    """
    degrees = [int(d) for d in degrees]
    if not degrees:
        raise ValueError("degrees is empty")
    series = dict(flops) if isinstance(flops, dict) else {"measured": flops}
    for label, vals in series.items():
        if len(list(vals)) != len(degrees):
            raise ValueError(f"series {label!r} has {len(list(vals))} values for {len(degrees)} degrees")
    fig = _new_figure(6.4, 4.0)
    ax = fig.add_subplot()
    markers = ["o", "s", "^", "D", "v", "P"]
    greys = ["#111111", "#555555", "#888888", "#333333", "#777777", "#999999"]
    for i, (label, vals) in enumerate(series.items()):
        v = np.asarray(list(vals), dtype=float)
        ax.plot(degrees, v, marker=markers[i % 6], color=greys[i % 6], lw=1.8, label=label)
        if ideal and v.size and np.isfinite(v[0]) and v[0] > 0:
            ideal_v = v[0] * np.asarray(degrees, dtype=float) / degrees[0]
            ax.plot(degrees, ideal_v, ls="--", color=greys[i % 6], lw=1.0, alpha=0.6,
                    label=f"ideal (linear from degree {degrees[0]})" if len(series) == 1 else None)
            for d, y, yi in zip(degrees, v, ideal_v):
                if np.isfinite(y) and yi > 0:
                    ax.annotate(f"{100 * y / yi:.0f}%", (d, y), textcoords="offset points",
                                xytext=(0, 7), ha="center", fontsize=7.5, color=_MUTED)
    ax.set_xticks(degrees)
    ax.set_xlabel("TP degree (ranks sharing the layer)")
    ax.set_ylabel(ylabel)
    ax.set_ylim(bottom=0)
    ax.set_title(title, fontsize=11)
    ax.grid(True, color="#dddddd", lw=0.6)
    ax.legend(fontsize=8, frameon=False)
    fig.set_layout_engine("constrained")
    return fig


# --------------------------------------------------------------------------------------------
# cluster map
# --------------------------------------------------------------------------------------------


def cluster_map(infos) -> Figure:
    """Which rank sits on which host and device.

    infos: one dict per rank (a list, or ``{rank: dict}``) with keys ``rank``, ``host``,
    ``device``, ``backend`` (missing keys are shown as "?"). Hosts are drawn as boxes, ranks as
    squares in their rank colour labelled with the rank and device. Ranks >= 8 reuse colours.
    """
    if isinstance(infos, dict):
        infos = [dict(infos[k], rank=infos[k].get("rank", k)) for k in sorted(infos)]
    infos = [dict(i) for i in infos]
    if not infos:
        raise ValueError("infos is empty: expected one dict per rank")
    for i, info in enumerate(infos):
        info.setdefault("rank", i)
    infos.sort(key=lambda d: int(d["rank"]))
    hosts: dict[str, list[dict]] = {}
    for info in infos:
        hosts.setdefault(str(info.get("host", "?")), []).append(info)
    backends = sorted({str(i.get("backend", "?")) for i in infos})

    per_row = 4
    sq, gap, pad = 1.3, 0.35, 0.35
    boxes = []
    x = 0.0
    max_h = 0.0
    for host, ranks in hosts.items():
        ncol = min(per_row, len(ranks))
        nrow = math.ceil(len(ranks) / per_row)
        bw = pad * 2 + ncol * sq + (ncol - 1) * gap
        bw = max(bw, 0.14 * len(host) + 0.6)
        bh = pad + 0.55 + nrow * (sq + 0.4) + (nrow - 1) * gap * 0.5 + 0.25
        boxes.append((host, ranks, x, bw, bh, ncol))
        x += bw + 0.6
        max_h = max(max_h, bh)
    data_w = x - 0.6
    unit = min(0.8, 11.0 / data_w)
    fig = _new_figure(max(4.0, data_w * unit + 0.6), max_h * unit + 1.0)
    ax = fig.add_axes([0.3 / (data_w * unit + 0.6), 0.04, data_w * unit / (data_w * unit + 0.6), 0.8])
    ax.set_xlim(-0.1, data_w + 0.1)
    ax.set_ylim(max_h + 0.1, -0.1)
    ax.set_aspect("equal")
    ax.set_axis_off()
    for host, ranks, x0, bw, bh, ncol in boxes:
        ax.add_patch(FancyBboxPatch((x0, 0), bw, bh, boxstyle="round,pad=0,rounding_size=0.2",
                                    facecolor="#f4f4f4", edgecolor="#444444", linewidth=1.2))
        ax.text(x0 + pad, pad, host, ha="left", va="top", fontsize=10, color=_TEXT, fontweight="bold")
        for k, info in enumerate(ranks):
            r = int(info["rank"])
            cx = x0 + pad + (k % ncol) * (sq + gap)
            cy = pad + 0.55 + (k // per_row) * (sq + 0.5 + gap * 0.5)
            ax.add_patch(Rectangle((cx, cy), sq, sq, facecolor=rank_color(r), edgecolor="none"))
            ax.text(cx + sq / 2, cy + sq / 2, f"rank\n{r}", ha="center", va="center", fontsize=9,
                    color=_text_on(r), linespacing=1.1)
            dev = str(info.get("device", "?"))
            if len(backends) > 1:
                dev += f"\n{info.get('backend', '?')}"
            ax.text(cx + sq / 2, cy + sq + 0.06, dev, ha="center", va="top", fontsize=7.5, color=_MUTED)
    n = len(infos)
    fig.suptitle(f"{n} rank{'s' if n != 1 else ''} on {len(hosts)} host{'s' if len(hosts) != 1 else ''}"
                 f"  ·  backend {', '.join(backends)}", fontsize=11, color=_TEXT)
    return fig
