"""Schematic TP layouts for learning: which rank owns which block of X, W and Y, before any real
data (nothing here touches tensors); ``layout_explorer`` puts them behind sliders.
"""

from __future__ import annotations

import math
import textwrap

import ipywidgets as widgets
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from ..common.numbers import divisors, fmt_bytes
from ..costmodel.collectives import bytes_sent
from .figure import (
    BOX,
    MAX_DEGREE,
    MUTED,
    REPLICATED_GREY,
    TEXT,
    check_choice,
    diagram_axes,
    message_figure,
    new_figure,
    partial_cards,
    rank_blocks,
    rank_handles,
)
from .widget import FigureWidget

__all__ = ["MODES", "layout_figure", "layout_explorer", "LayoutExplorer"]

MODES = ("column", "row", "column+row")


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
        if p == 1:  # one rank holds everything: no "_r" pieces, no copies, no partial sums: one block
            name, own, under = name.replace("_r", ""), "cols", "rank 0 holds all of it"
        self.name, self.rows, self.cols, self.own, self.p, self.under = name, rows, cols, own, p, under


def _layout_items(p, d_in, d_out, batch, mode):
    """Panels left to right: _Mat or ('op', text) or ('comm', text)."""
    x_full = _Mat("X", batch, d_in, "rep", p, "every rank: full copy")

    def result(d, own, under, comm):  # "= Y_r", then (p > 1) the collective into a full Y on every rank
        items = [("op", "="), _Mat("Y_r", batch, d, own, p, under)]
        return items if p == 1 else items + [("comm", comm), _Mat("Y", batch, d, "rep", p, "every rank: full copy")]

    if mode == "column":
        return [
            x_full,
            ("op", "·"),
            _Mat("W", d_in, d_out, "cols", p, f"rank r: W[:, r-th block] ({d_in}, {d_out // p})"),
            *result(d_out, "cols", f"rank r: Y_r ({batch}, {d_out // p})", "all-gather"),
        ]
    if mode == "row":
        return [
            _Mat("X", batch, d_in, "cols", p, f"rank r: X_r ({batch}, {d_in // p})"),
            ("op", "·"),
            _Mat("W", d_in, d_out, "rows", p, f"rank r: W[r-th block, :] ({d_in // p}, {d_out})"),
            *result(d_out, "partial", f"rank r: partial sum ({batch}, {d_out})", "all-reduce\n(sum)"),
        ]
    # column+row: the MLP. in_features = model dim D, out_features = hidden dim H.
    return [
        x_full,
        ("op", "·"),
        _Mat("W1", d_in, d_out, "cols", p, f"column: ({d_in}, {d_out // p})"),
        ("op", "→ GeLU →"),
        _Mat("H_r", batch, d_out, "cols", p, f"rank r: H_r ({batch}, {d_out // p})"),
        ("op", "·"),
        _Mat("W2", d_out, d_in, "rows", p, f"row: ({d_out // p}, {d_in})"),
        *result(d_in, "partial", f"rank r: partial sum ({batch}, {d_in})", "all-reduce\n(sum)"),
    ]


def _comm_text(p, d_in, d_out, batch, b, mode) -> str:
    head = {
        "column": (f"column-parallel: W ({d_in}×{d_out}) split by columns, X replicated → rank r computes "
                   f"Y_r = X·W_r ({batch}×{d_out // p})."),
        "row": (f"row-parallel: W ({d_in}×{d_out}) split by rows, X split by columns → rank r computes a "
                f"full-size partial sum Y_r = X_r·W_r ({batch}×{d_out}); Y = Σ_r Y_r."),
        "column+row": (f"MLP = column then row (in_features = model dim D = {d_in}, out_features = hidden H = "
                       f"{d_out}): W1 (D×H) split by columns, W2 (H×D) split by rows. H_r = GeLU(X·W1_r) "
                       f"stays on rank r and feeds W2_r: no communication in between."),
    }[mode]
    if p == 1:
        return head + "\nTP degree 1: a single rank holds everything — no communication."
    if mode == "column":
        shard = batch * (d_out // p) * b
        forward = (f"all-gather of Y. Each rank contributes Y_r = B·out/p·bytes = {batch}·{d_out}/{p}·{b} = "
                   f"{fmt_bytes(shard)}")
        ring = (f"all-gather: each rank sends (p−1)·B·out/p·bytes = {p - 1}·{fmt_bytes(shard)} = "
                f"{fmt_bytes(bytes_sent('all_gather', batch * d_out * b, p))}")
        backward = f"all-reduce of dL/dX, B·in·bytes = {fmt_bytes(batch * d_in * b)} per rank"
    else:
        row = mode == "row"  # else column+row: the all-reduce of the MLP's output, (B, D)
        d_y, sym = (d_out, "out") if row else (d_in, "D")
        buf = batch * d_y * b
        forward = (f"{'' if row else 'one '}all-reduce of Y. Buffer per rank = B·{sym}·bytes = "
                   f"{batch}·{d_y}·{b} = {fmt_bytes(buf)}")
        ring = f"all-reduce: each rank sends 2(p−1)/p·B·{sym}·bytes = {fmt_bytes(bytes_sent('all_reduce', buf, p))}"
        backward = ("none (every rank already holds the full dL/dY)" if row
                    else f"one all-reduce of dL/dX, B·D·bytes = {fmt_bytes(buf)} per rank")
    return head + f"\nforward: {forward};\nring {ring} (and receives as much).\nbackward: {backward}."


def layout_figure(degree: int, in_features: int, out_features: int, mode: str, batch: int = 4,
                  dtype_bytes: int = 4) -> Figure:
    """Schematic of Y = X·W (W is in_features × out_features) split over ``degree`` ranks.

    mode "column": W split by columns, X replicated, Y_r gathered (all-gather);
    "row": W split by rows, X split by columns, partial sums all-reduced;
    "column+row": the Megatron MLP, W1 (in × out) column-parallel then W2 (out × in)
    row-parallel, one all-reduce, no communication in between.

    Box lengths follow the feature sizes, clamped so that every rank's block stays visible (the
    figure says when it is not to scale); a text box states the communication and its bytes. When
    the split dimension is not divisible by ``degree``, no shards are drawn: the figure says why
    (e.g. "out_features=10 is not divisible by 4").
    """
    p = _check_int("degree", degree, 1, MAX_DEGREE)
    d_in = _check_int("in_features", in_features, 1)
    d_out = _check_int("out_features", out_features, 1)
    batch = _check_int("batch", batch, 1)
    b = _check_int("dtype_bytes", dtype_bytes, 1)
    check_choice("mode", mode, MODES)
    title = f"Y = X·W, {mode}-parallel, TP degree {p}" if mode != "column+row" else \
        f"MLP  Y = GeLU(X·W1)·W2, column+row parallel, TP degree {p}"
    name, n = ("in_features", d_in) if mode == "row" else ("out_features", d_out)
    if n % p:  # an uneven split: the figure says why, and draws no shards
        ok = ", ".join(str(d) for d in divisors(n, upto=MAX_DEGREE))
        what = "the hidden dim H" if mode == "column+row" else name
        return message_figure(title, f"{name}={n} is not divisible by {p}\n"
                              f"({mode} mode splits {what} across the {p} ranks)\n"
                              f"pick a TP degree in {{{ok}}} or pad {name} to {math.ceil(n / p) * p}",
                              10, 3.2, fontsize=13)

    items = _layout_items(p, d_in, d_out, batch, mode)
    scale = 4.0 / max(max(m.rows, m.cols) for m in items if isinstance(m, _Mat))

    def length(n: int, split: int) -> float:  # to scale, but at least 0.9 and 0.36 per block
        return max(n * scale, 0.9, 0.36 * split)

    # geometry: (x, width, height, offset of the stacked partial-sum cards) per item
    geo = []
    x = 0.0
    clamped = False
    gap = 0.35
    for it in items:
        h, off = 0.0, 0.0  # an operator or a collective: text only
        if isinstance(it, _Mat):
            w = length(it.cols, p if it.own == "cols" else 1)
            h = length(it.rows, p if it.own == "rows" else 1)
            clamped = clamped or (w, h) != (it.cols * scale, it.rows * scale)
            off = 0.13 if it.own == "partial" else 0.0
        else:
            w = 1.9 if it[0] == "comm" else (1.7 if "GeLU" in it[1] else 0.55)
        geo.append((x, w, h, off))
        x += w + off * (p - 1) + gap
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
    text_h = 0.22 * (comm.count("\n") + 1) + 0.35  # inches, one line of text: 0.22
    legend_h = 0.45
    fig_h = top_pad + draw_h + legend_h + text_h + 0.15
    fig = new_figure(fig_w, fig_h)
    fig.suptitle(title, fontsize=12, color=TEXT, y=1 - 0.12 / fig_h, va="top")

    ax_w = (data_w + 0.4) * unit_in
    half = data_h / 2 + label_pad / unit_in
    ax = diagram_axes(fig, [(fig_w - ax_w) / 2 / fig_w, (legend_h + text_h + 0.15) / fig_h,
                            ax_w / fig_w, draw_h / fig_h], (-0.2, data_w + 0.2), (half, -half))

    for it, (x0, w, h, off) in zip(items, geo):
        if isinstance(it, _Mat):
            _draw_mat(ax, it, x0, w, h, off, unit_in)
        elif it[0] == "comm":
            ax.annotate("", xy=(x0 + w, 0), xytext=(x0, 0),
                        arrowprops=dict(arrowstyle="-|>", color=TEXT, lw=1.6))
            ax.text(x0 + w / 2, -0.15, it[1], ha="center", va="bottom", fontsize=10,
                    color=TEXT, fontweight="bold")
        else:
            ax.text(x0 + w / 2, 0, it[1], ha="center", va="center",
                    fontsize=18 if len(it[1]) == 1 else 10, color=TEXT)

    # legend: ranks, replicated, partial
    handles = rank_handles(p)
    if p > 1:
        handles.append(Patch(facecolor=REPLICATED_GREY, edgecolor="#666666",
                             label="grey: every rank has a full copy"))
        if mode != "column":
            handles.append(Patch(facecolor="white", edgecolor="#666666",
                                 label="stacked: each rank holds a full-size partial sum"))
    fig.legend(handles=handles, loc="center", ncol=min(len(handles), 6), frameon=False,
               fontsize=9, bbox_to_anchor=(0.5, (text_h + 0.15 + legend_h / 2) / fig_h),
               handlelength=1.2, columnspacing=1.0, labelcolor=TEXT)
    fig.text(0.5, (text_h + 0.05) / fig_h, comm, ha="center", va="top", fontsize=8.5, color=TEXT,
             linespacing=1.45, wrap=False,
             bbox=dict(boxstyle="round,pad=0.5", facecolor=BOX, edgecolor="#999999"))
    return fig


def _draw_mat(ax, m: _Mat, x0: float, w: float, h: float, off: float, unit_in: float) -> None:
    top = -h / 2
    p = m.p
    if m.own == "partial":  # p full-size cards, rank p-1 at the back; rank 0 on top (front, bottom-left)
        partial_cards(ax, x0, top, w, h, p, off, -off, lw=1.2, sigma=12)
    elif m.own == "rep":
        ax.add_patch(Rectangle((x0, top), w, h, facecolor=REPLICATED_GREY, edgecolor="#333333", linewidth=1.0))
    else:  # split by columns or by rows; blocks ~0.15 inch wide or more show their rank
        ranks = [list(range(p))] if m.own == "cols" else [[r] for r in range(p)]
        rank_blocks(ax, x0, top, w, h, ranks, label_min=0.15 / unit_in if p > 1 else None)
        ax.add_patch(Rectangle((x0, top), w, h, fill=False, edgecolor="#333333", linewidth=1.0))  # over the blocks' edges
    ax.text(x0 + w / 2 + off * (p - 1) / 2, top - off * (p - 1) - 0.12,  # above the cards (off = 0: no cards)
            f"{m.name}\n({m.rows}, {m.cols})", ha="center", va="bottom", fontsize=9, color=TEXT)
    if m.under:
        ax.text(x0 + w / 2, top + h + 0.12, m.under.replace(": ", ":\n", 1), ha="center", va="top",
                fontsize=7.5, color=MUTED)


# --------------------------------------------------------------------------------------------
# explorer widget
# --------------------------------------------------------------------------------------------


class LayoutExplorer(FigureWidget):
    """Interactive :func:`layout_figure` (batch 4, float32): sliders for TP degree and feature sizes,
    a mode menu. Attributes: ``degree``, ``in_features``, ``out_features`` (IntSlider), ``mode``
    (Dropdown), and those of :class:`~.widget.FigureWidget`.

    CSS classes, for the browser tests: ``.tp-layout-explorer`` (the widget), ``img.tp-layout-image``
    (the picture), ``.tp-degree`` (the slider labelled "TP degree"), ``.tp-in-features``,
    ``.tp-out-features``, ``.tp-mode``.
    """

    what = "layout"

    def __init__(self, degree=4, in_features=16, out_features=32, mode="column"):
        check_choice("mode", mode, MODES)
        kw = dict(style={"description_width": "90px"}, layout=widgets.Layout(width="330px"))
        self.degree = widgets.IntSlider(value=_check_int("degree", degree, 1, MAX_DEGREE), min=1, max=MAX_DEGREE,
                                        description="TP degree", continuous_update=False, **kw).add_class("tp-degree")
        self.in_features, self.out_features = (
            widgets.IntSlider(value=_check_int(name, v, 8, 64), min=8, max=64, step=8, description=name,
                              continuous_update=False, **kw).add_class(f"tp-{name.replace('_', '-')}")
            for name, v in (("in_features", in_features), ("out_features", out_features)))
        self.mode = widgets.Dropdown(options=list(MODES), value=mode, description="layout", **kw).add_class("tp-mode")
        self._assemble([[self.degree, self.mode], [self.in_features, self.out_features]], "tp-layout-explorer",
                       "tp-layout-image")

    def figure(self) -> Figure:
        return layout_figure(self.degree.value, self.in_features.value, self.out_features.value, self.mode.value)


layout_explorer = LayoutExplorer  # the notebooks' name for it
