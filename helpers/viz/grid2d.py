"""Drawings for 2D tensor parallelism (notebook 04). Blocks are laid out row-major: the rank at
grid position (i, j) is ``i·s + j``. The byte numbers come from the formulas in
:mod:`helpers.costmodel.collectives` (pure functions, no collective).
"""

from __future__ import annotations

import math
from fractions import Fraction
from functools import partial
from typing import Sequence

import ipywidgets as widgets
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from ..common.numbers import fmt_bytes
from ..costmodel.collectives import COMM_FORMULAS, grid_side, mlp_bytes_1d, mlp_bytes_2d, mlp_crossover_tokens
from ..reference.compare import to_f64
from .figure import (
    BOX,
    MUTED,
    REPLICATED_GREY,
    TEXT,
    check_choice,
    diagram_axes,
    grey_panel,
    message_figure,
    new_axes,
    new_figure,
    partial_cards,
    rank_blocks,
    rank_color,
    rank_handles,
    to_2d,
)
from .widget import FigureWidget

__all__ = ["grid_blocks_figure", "summa_step_figure", "summa_stepper", "SummaStepper",
           "GRID_MODES", "grid_layout_figure", "grid_layout_explorer", "GridLayoutExplorer",
           "comm_time_figure", "mlp_bytes_figure", "mlp_crossover_figure"]

GRID_MODES = tuple(COMM_FORMULAS)  # ("1D column", "1D row", "2D SUMMA")


def _np(t) -> np.ndarray:
    return to_2d(to_f64(t, "block").numpy())


# --------------------------------------------------------------------------------------------
# the chapter's figure, from real blocks
# --------------------------------------------------------------------------------------------
def grid_blocks_figure(blocks: Sequence, name: str = "A", dims=("K", "N")) -> Figure:
    """The chapter's "A [K × N] on a 2×2 grid", drawn from the blocks pulled by rank.

    ``blocks``: one 2-D tensor per rank, rank 0 first, row-major on an s × s grid. Each panel
    shows the real values (shared grey scale), framed in the rank's colour, and names the slice
    both ways: ``A[0:K/2, 0:N/2]`` and ``A[0:4, 0:6]``.
    """
    arrs = [_np(b) for b in blocks]
    s = grid_side(len(arrs))
    r, c = arrs[0].shape
    vmin = min(float(a.min()) for a in arrs)
    vmax = max(float(a.max()) for a in arrs)
    fig = new_figure(2.9 * s + 1.2, 2.5 * s + 0.9)
    gs = fig.add_gridspec(s, s, left=0.04, right=0.86, top=0.84, bottom=0.04, wspace=0.12,
                          hspace=0.42)
    for rank, a in enumerate(arrs):
        i, j = divmod(rank, s)
        sym = (f"{name}[{_frac(i, s, dims[0])}:{_frac(i + 1, s, dims[0])}, "
               f"{_frac(j, s, dims[1])}:{_frac(j + 1, s, dims[1])}]")
        im = grey_panel(fig.add_subplot(gs[i, j]), a, rank_color(rank), f"GPU ({i},{j}) = rank {rank}\n{sym} = "
                        f"{name}[{i * r}:{(i + 1) * r}, {j * c}:{(j + 1) * c}]", vmin=vmin, vmax=vmax)
    fig.suptitle(f"{name} [{dims[0]} × {dims[1]}] = ({r * s}, {c * s}) on a {s}×{s} grid: each rank holds "
                 f"one ({r}, {c}) block", fontsize=10, color=TEXT)
    fig.colorbar(im, cax=fig.add_axes([0.9, 0.1, 0.025, 0.7]))
    return fig


def _frac(n: int, s: int, sym: str) -> str:
    """n/s of ``sym``, reduced: "0", "K/2", "3K/4", "K"."""
    f = Fraction(n, s)
    if f == 0:
        return "0"
    return f"{'' if f.numerator == 1 else f.numerator}{sym}" + ("" if f.denominator == 1 else f"/{f.denominator}")


# --------------------------------------------------------------------------------------------
# SUMMA, one step at a time
# --------------------------------------------------------------------------------------------
def summa_step_figure(traces: Sequence[Sequence[dict]], k: int, X=None, W=None) -> Figure:
    """What every rank received and accumulated after SUMMA step ``k`` (0-based).

    ``traces``: ``cluster.pull`` of :func:`helpers.tp.summa.summa_trace` (one list of step dicts
    per rank). One panel group per rank, laid out as the grid: the X block it received (framed
    in its owner's colour), the W block it received (owner's colour), and its Y block so far
    (its own colour). With the full ``X``, ``W`` the title of each Y block gives
    max|Δ| against the dense partial sum Σ_{t≤k} X_it·W_tj.
    """
    s = grid_side(len(traces))
    if not 0 <= k < s:
        raise ValueError(f"step k={k} is outside 0..{s - 1} for a {s}×{s} grid")
    fig = new_figure(4.2 * s + 0.4, 2.3 * s + 1.0)
    outer = fig.add_gridspec(s, s, left=0.02, right=0.98, top=0.8, bottom=0.03, wspace=0.12,
                             hspace=0.55)
    Xd = to_f64(X, "X").numpy() if X is not None else None
    Wd = to_f64(W, "W").numpy() if W is not None else None
    for rank, steps in enumerate(traces):
        st = steps[k]
        i, j = st["coords"]
        inner = outer[i, j].subgridspec(1, 3, wspace=0.35)
        panels = [(_np(st[b]), bi * s + bj, f"{b.upper()}[{bi},{bj}]\nfrom rank {bi * s + bj}")  # X_ik, W_kj, owners
                  for b, (bi, bj) in (("x", st["x_from"]), ("w", st["w_from"]))]
        acc = _np(st["acc"])
        note = ""
        if Xd is not None and Wd is not None:
            mb, kb = st["x"].shape
            nb = st["w"].shape[1]
            dense = Xd[i * mb:(i + 1) * mb, :(k + 1) * kb] @ Wd[:(k + 1) * kb, j * nb:(j + 1) * nb]  # Σ_{t≤k}
            note = f"\nmax|Δ| {float(np.abs(acc - dense).max()):.0e}"
        panels.append((acc, rank, f"rank {rank}: Y[{i},{j}]\n= Σ t≤{k}{note}"))
        for col, (a, owner, label) in enumerate(panels):
            grey_panel(fig.add_subplot(inner[0, col]), a, rank_color(owner), label, fontsize=7.5, lw=4)
    fig.suptitle(f"SUMMA step {k + 1} of {s}: X blocks of grid column {k} travel along the rows, "
                 f"W blocks of grid row {k} down the columns;\nevery rank adds X[i,{k}]·W[{k},j] "
                 "to its Y[i,j] (frames: the block's owner)", fontsize=9.5, color=TEXT)
    return fig


class SummaStepper(FigureWidget):
    """A slider over SUMMA's steps that redraws :func:`summa_step_figure`: ``step`` (IntSlider,
    1-based), ``image``, ``messages``."""

    what = "step"

    def __init__(self, traces, X=None, W=None):
        self.traces, self.X, self.W = traces, X, W
        self.step = widgets.IntSlider(value=1, min=1, max=grid_side(len(traces)), description="SUMMA step",
                                      continuous_update=False, style={"description_width": "90px"})
        self._assemble([[self.step.add_class("tp-summa-step")]], "tp-summa-stepper")

    def figure(self) -> Figure:
        return summa_step_figure(self.traces, self.step.value - 1, self.X, self.W)


summa_stepper = SummaStepper  # the notebook's name for it


# --------------------------------------------------------------------------------------------
# 1D vs 2D layouts: schematic and explorer
# --------------------------------------------------------------------------------------------
def _problem(mode, p, M, K, N) -> str | None:
    if mode == "2D SUMMA":
        s = math.isqrt(p)
        if s * s != p:
            return (f"p={p} is not a square: SUMMA as built here needs an s × s grid\n"
                    f"pick p = {s * s} or {(s + 1) ** 2}, or use a 1D layout")
        bad = [f"{n}={v}" for n, v in (("M", M), ("K", K), ("N", N)) if v % s]
        return (f"{', '.join(bad)} not divisible by the grid side {s}" if bad else None)
    split = {"1D column": ("N", N), "1D row": ("K", K)}[mode]
    return None if split[1] % p == 0 else f"{split[0]}={split[1]} is not divisible by p={p}"


def grid_layout_figure(p: int, M: int, K: int, N: int, mode: str = "2D SUMMA") -> Figure:
    """Who holds what of Y = X·W (X (M, K), W (K, N)) on p ranks, 1D or 2D, and what it costs.

    ``mode``: "1D column" (X replicated, W by columns, all-gather Y), "1D row" (X and W split
    along K, all-reduce of partial sums) or "2D SUMMA" (X, W, Y in √p × √p blocks). The text
    box gives the formulas' bytes per rank, the collectives, the synchronisation points and the
    groups each layout needs (float32).
    """
    check_choice("mode", mode, GRID_MODES)
    for name, v in (("p", p), ("M", M), ("K", K), ("N", N)):
        if not isinstance(v, (int, np.integer)) or v <= 0:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    problem = _problem(mode, p, M, K, N)
    title = f"Y = X·W on p = {p} ranks, {mode}"
    if problem:
        return message_figure(title, problem, 9, 2.6, fontsize=12)
    s = math.isqrt(p)
    fig = new_figure(10, 5.2)
    fig.suptitle(title, fontsize=11, color=TEXT)
    scale = 2.2 / max(M, K, N)
    owners = {"1D column": {"X": ("rep", 1, 1), "W": ("grid", 1, p), "Y": ("grid", 1, p)},  # (kind, row blocks, col blocks)
              "1D row": {"X": ("grid", 1, p), "W": ("grid", p, 1), "Y": ("partial", 1, 1)},
              "2D SUMMA": dict.fromkeys("XWY", ("grid", s, s))}[mode]
    for n, (name, rows, cols) in enumerate([("X", M, K), ("W", K, N), ("Y", M, N)]):
        ax = diagram_axes(fig, [0.04 + n * 0.33, 0.36, 0.27, 0.52], (-0.1, 2.4), (2.4, -0.35))
        h, w = max(rows * scale, 0.5), max(cols * scale, 0.5)
        kind, nr, nc = owners[name]
        if kind == "rep":
            ax.add_patch(Rectangle((0, 0), w, h, facecolor=REPLICATED_GREY, edgecolor="#333333"))
        elif kind == "partial":
            partial_cards(ax, 0, 0, w, h, p, 0.06, 0.06, sigma=13)
        else:  # rank i·nc + j holds block (i, j): 2D row-major, 1D a single row or column
            rank_blocks(ax, 0, 0, w, h, np.arange(nr * nc).reshape(nr, nc), label_min=0.18)
        ax.text(0, -0.08, f"{name} ({rows}, {cols})", fontsize=9.5, color=TEXT, va="bottom")
    fig.text(0.345, 0.62, "·", fontsize=22, ha="center", va="center", color=TEXT)
    fig.text(0.675, 0.62, "=", fontsize=16, ha="center", va="center", color=TEXT)
    b = COMM_FORMULAS[mode](M, K, N, p)
    lines = {
        "1D column": ("one all-gather of Y_r (M, N/p); X must already be on every rank",
                      "(p−1)·M·N/p·bytes", "1 group (all p ranks)"),
        "1D row": ("one all-reduce of the (M, N) partial sums", "2(p−1)/p·M·N·bytes", "1 group (all p ranks)"),
        "2D SUMMA": (f"{2 * s} broadcasts: at each of the {s} steps, X blocks along the rows, "
                     "W blocks down the columns",
                     "(√p−1)·(M·K + K·N)/p·bytes",
                     f"{2 * s} groups ({s} grid rows + {s} grid columns); X arrives in blocks"),
    }[mode]
    text = (f"forward: {lines[0]}\nformula: sent = received = {lines[1]} = {fmt_bytes(b['sent'])} per rank "
            f"(float32)\nsynchronisation points: {b['calls']};  needs: {lines[2]}")
    fig.text(0.5, 0.05, text, ha="center", va="bottom", fontsize=8.5, color=TEXT, linespacing=1.5,
             bbox=dict(boxstyle="round,pad=0.5", facecolor=BOX, edgecolor="#999999"))
    handles = rank_handles(min(p, 8))
    if mode == "1D column":
        handles.append(Patch(facecolor=REPLICATED_GREY, label="grey: full copy on every rank"))
    fig.legend(handles=handles, loc="center", ncol=len(handles), frameon=False,
               fontsize=8, bbox_to_anchor=(0.5, 0.3))
    return fig


class GridLayoutExplorer(FigureWidget):
    """Notebook 01's layout explorer, extended to 2D grids: ``p`` (Dropdown), ``M``/``K``/``N``
    (IntSlider), ``mode`` (Dropdown), ``image`` (PNG), ``messages``, ``redraw_count``."""

    P_CHOICES = (1, 2, 4, 8, 9, 16)
    what = "layout"

    def __init__(self, p=4, M=16, K=16, N=16, mode="2D SUMMA"):
        check_choice("mode", mode, GRID_MODES)
        check_choice("p", p, self.P_CHOICES)
        kw = dict(style={"description_width": "70px"}, layout=widgets.Layout(width="300px"))
        self.p = widgets.Dropdown(options=list(self.P_CHOICES), value=p, description="ranks p", **kw).add_class("tp-p")
        self.mode = widgets.Dropdown(options=list(GRID_MODES), value=mode, description="layout", **kw).add_class("tp-mode")
        self.M, self.K, self.N = (widgets.IntSlider(value=v, min=4, max=64, step=4, description=d, continuous_update=False,
                                                    **kw).add_class(f"tp-{d.lower()}")
                                  for d, v in (("M", M), ("K", K), ("N", N)))
        self._assemble([[self.p, self.mode], [self.M, self.K, self.N]], "tp-layout-explorer", "tp-layout-image")

    def figure(self) -> Figure:
        return grid_layout_figure(self.p.value, self.M.value, self.K.value, self.N.value, self.mode.value)


grid_layout_explorer = GridLayoutExplorer  # the notebook's name for it


# --------------------------------------------------------------------------------------------
# communication: measured times per layout
# --------------------------------------------------------------------------------------------
def comm_time_figure(times: dict, p: int = 4, what: str = "forward, ms",
                     how: str = "slowest rank, best of 15 runs", subject: str = "Y = X·W") -> Figure:
    """Bars of measured times per layout (``{mode: milliseconds}``), measured on this cluster."""
    fig, ax = new_axes(6.0, 3.0)
    bars = ax.barh(list(times), [float(v) for v in times.values()], color=["#333333", "#777777", "#aaaaaa"])
    ax.bar_label(bars, fmt=" {:.2f}", fontsize=8.5, color=MUTED)
    ax.invert_yaxis()
    ax.set_xlabel(what)
    ax.set_title(f"{subject} at p={p}, measured on this cluster ({how})",
                 fontsize=9.5)
    return fig


# --------------------------------------------------------------------------------------------
# one MLP block: 1D (Megatron) vs 2D (SUMMA), measured at p and modelled beyond; the crossover
# --------------------------------------------------------------------------------------------
def mlp_bytes_figure(M: int, D: int, H: int, measured: dict | None = None, measured_p: int = 4,
                     ps: Sequence[int] = (4, 16, 64)) -> Figure:
    """Bytes sent per rank by ONE MLP block against p: 1D (one all-reduce each way) and 2D
    (SUMMA in both matmuls), forward and forward + backward. Lines: the formulas of
    :mod:`helpers.costmodel.collectives` (a model); markers: ``measured`` =
    ``{"1D": {"forward": b, "backward": b}, "2D": {...}}`` counted at ``measured_p``. float32; the
    linears have biases (2D then all-reduces their gradients down grid columns)."""
    ps = [int(p) for p in ps]
    fig, ax = new_axes(6.8, 4.0)
    for name, f, color in (("1D", mlp_bytes_1d, "#111111"), ("2D", partial(mlp_bytes_2d, bias=True), "#8a8a8a")):
        for what, phases, ls, mk in (("forward", ("forward",), "-", "o"),
                                     ("training (fwd + bwd)", ("forward", "backward"), "--", "s")):
            ys = [sum(f(M, D, H, p)[ph]["sent"] for ph in phases) for p in ps]
            ax.plot(ps, ys, ls=ls, color=color, lw=1.8, label=f"{name}, {what} (formula)")
            if measured and name in measured:
                y = sum(measured[name][ph] for ph in phases)
                ax.plot([measured_p], [y], marker=mk, ms=10, ls="none", markerfacecolor="white",
                        markeredgecolor=color, markeredgewidth=2,
                        label=f"{name}, {what}: measured at p={measured_p}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(ps, [str(p) for p in ps])
    ax.set_xlabel("ranks p")
    ax.set_ylabel("bytes sent per rank, one MLP block")
    ax.set_title(f"MLP block X ({M}, {D}) → H {H} → {D}, float32\nlines: MODEL (formulas); markers: "
                 f"counted on this cluster at p={measured_p}", fontsize=9.5)
    ax.grid(True, which="both", color="#e4e4e4", lw=0.6)
    ax.legend(fontsize=7, frameon=False, ncol=2)
    return fig


def mlp_crossover_figure(D: int, H: int, ps: Sequence[int] = (4, 16, 64), points: dict | None = None,
                         n_in: int = 1, title: str = "") -> Figure:
    """2D bytes / 1D bytes per rank, ONE MLP block, against the tokens M (the activation is
    M × D, the weights (n_in + 1)·D·H): below 1, 2D sends less. One shade per p; solid: forward,
    dashed: training (forward + backward). The crossover M of each is marked (formula:
    :func:`helpers.costmodel.collectives.mlp_crossover_tokens`). ``points``: ``{label: M}``."""
    fig, ax = new_axes(6.8, 4.0)
    ms = np.unique(np.geomspace(max(1, D // 64), 256 * D, 80).astype(int))
    shades = ["#111111", "#555555", "#999999", "#bbbbbb"]

    def ratio(m, p, phases):
        return (sum(mlp_bytes_2d(int(m), D, H, p, n_in=n_in)[ph]["sent"] for ph in phases)
                / sum(mlp_bytes_1d(int(m), D, H, p, n_in=n_in)[ph]["sent"] for ph in phases))

    for p, color in zip(ps, shades):
        for training, phases, ls in ((False, ("forward",), "-"), (True, ("forward", "backward"), "--")):
            x = mlp_crossover_tokens(D, H, p, training=training, n_in=n_in)
            where = f"2D wins above M = {x:,.0f}" if math.isfinite(x) else "2D never wins"
            ax.plot(ms, [ratio(m, p, phases) for m in ms], ls=ls, color=color, lw=1.7,
                    label=f"p={p}, {'training' if training else 'forward'}: {where}")
            if math.isfinite(x):
                ax.plot([x], [1.0], marker="|", ms=14, color=color, mew=2)
    ax.axhline(1.0, color="#000000", lw=0.8)
    ax.axhspan(1e-3, 1.0, color="#f2f2f2", zorder=0)
    ax.text(ms[0], 0.5, " 2D sends less", fontsize=8, color=MUTED, va="center")
    ax.text(ms[0], 2.0, " 1D sends less", fontsize=8, color=MUTED, va="center")
    for label, m in (points or {}).items():
        ax.axvline(m, color="#777777", lw=0.8, ls=":")
        ax.text(m, 0.06, f"{label} ", rotation=90, fontsize=7.5, color=MUTED, va="bottom", ha="right")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_ylim(0.05, 40)
    ax.set_xlabel(f"tokens M in the TP group's batch (activation M × {D}; weights "
                  f"{n_in + 1} × {D} × {H})")
    ax.set_ylabel("2D bytes / 1D bytes, per rank")
    ax.set_title(title or f"Where 2D pays off: one MLP block, D = {D}, H = {H} (formulas)", fontsize=9.5)
    ax.grid(True, which="both", color="#e4e4e4", lw=0.6)
    ax.legend(fontsize=7, frameon=False, loc="upper right")
    return fig
