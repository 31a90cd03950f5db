"""Drawings for notebook 05 (a whole TP language model): loss curves, bytes, memory, collectives."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from ..common.numbers import fmt_bytes
from .figure import MUTED, REPLICATED_GREY, diagram_axes, new_axes, new_figure, partial_cards, rank_blocks, rank_color

__all__ = ["plot_loss_curves", "plot_bytes", "plot_activation_memory", "plot_collectives", "sp_dataflow_figure"]


def plot_loss_curves(dense: Sequence[float], tp: Sequence[float], tol: float, ranks: int) -> Figure:
    """Left: the dense loss and the TP loss (on ``ranks`` ranks) per step, side by side. Right: |Δ| per
    step and the tolerance."""
    dense, tp = np.asarray(dense, float), np.asarray(tp, float)
    if dense.shape != tp.shape:
        raise ValueError(f"the curves have {dense.size} and {tp.size} steps")
    steps = np.arange(1, dense.size + 1)
    fig = new_figure(10.5, 3.6, layout="constrained")
    a1, a2, a3 = fig.subplots(1, 3, subplot_kw=dict(xlabel="step"))
    a2.sharey(a1)  # one loss scale for the two curves
    for ax, y, color, marker, label in ((a1, dense, "#222222", "o", "dense (one process)"),
                                        (a2, tp, rank_color(0), "s", f"TP + SP ({ranks} ranks)")):
        ax.plot(steps, y, color=color, lw=1.8, marker=marker, ms=3)
        ax.set_title(label, fontsize=10)
        ax.set_ylabel("cross-entropy loss")
        ax.grid(True, color="#dddddd", lw=0.6)
    a3.semilogy(steps, np.maximum(np.abs(tp - dense), 1e-12), color=MUTED, marker="o", ms=3, label="|TP − dense|")
    a3.axhline(tol, color="#cf222e", ls="--", lw=1, label=f"tolerance {tol:.0e}")
    a3.set_title("difference per step", fontsize=10)
    a3.legend(fontsize=8, frameon=False)
    a3.grid(True, color="#dddddd", lw=0.6)
    return fig


def plot_bytes(values: Mapping[str, float], title: str) -> Figure:
    """Horizontal bars, one per label, each annotated with its size (B / KB / MB)."""
    labels, vals = list(values), [float(v) for v in values.values()]
    fig, ax = new_axes(7.5, 0.55 * len(labels) + 1.2)
    y = np.arange(len(labels))[::-1]
    bars = ax.barh(y, vals, color=REPLICATED_GREY, edgecolor="#444444", lw=0.6)
    ax.bar_label(bars, [f"  {fmt_bytes(v)}" for v in vals], fontsize=8.5)
    ax.set_yticks(y, labels, fontsize=9)
    ax.set_xlim(0, max(vals + [1]) * 1.3)
    ax.set_xlabel("bytes per rank")
    ax.set_title(title, fontsize=10.5)
    return fig


def plot_activation_memory(measured: Mapping[str, Sequence[float]], formula: Mapping[str, float]) -> Figure:
    """Per-rank measured bytes (rank colours; 'dense' in grey) beside the formula (hatched)."""
    fig, ax = new_axes(8.0, 3.8)
    ticks = []
    for x0, (name, per_rank) in enumerate(measured.items()):
        n = len(per_rank)
        w = 0.8 / (n + 1)
        ax.bar(x0 + w * np.arange(n), per_rank, w, color=[rank_color(r) for r in range(n)] if n > 1 else REPLICATED_GREY,
               edgecolor="#444444", lw=0.5)
        f = formula.get(name)
        if f is not None:
            ax.bar(x0 + n * w, f, w, color="white", edgecolor="#444444", hatch="///", lw=0.6)
            ax.text(x0 + n * w, f, fmt_bytes(f), ha="center", va="bottom", fontsize=7.5, color=MUTED)
        ticks.append(x0 + n * w / 2)
    ax.set_xticks(ticks, list(measured))
    ax.set_ylabel("bytes saved for backward")
    ax.set_title("What one block keeps for the backward, per rank  (coloured: measured on each rank; hatched: formula)",
                 fontsize=9.5)
    ax.grid(True, axis="y", color="#dddddd", lw=0.6)
    return fig


def plot_collectives(summaries: Mapping[str, Mapping[str, Mapping[str, float]]], memory: Mapping[str, float]) -> Figure:
    """Three panels: how many collectives of each kind, bytes each rank sends, activation bytes held.

    summaries: ``{"TP": {"all_reduce": {"count", "sent", ...}}, "TP + SP": {...}}``
    (from :meth:`helpers.measure.comm.CommRecorder.by_op`); memory: ``{"TP": bytes, "TP + SP": bytes}``.
    """
    greys = {"all_reduce": "#555555", "all_gather": "#9a9a9a", "reduce_scatter": "#d0d0d0"}
    names = list(summaries)
    fig = new_figure(10.5, 3.5, layout="constrained")
    axes = fig.subplots(1, 3)
    x = np.arange(len(names))
    by_op = {key: {k: ([summaries[n].get(k, {}).get(key, 0) for n in names], grey) for k, grey in greys.items()}
             for key in ("count", "sent")}
    for ax, what, layers, fmt in ((axes[0], "collectives", by_op["count"], lambda t: f"{int(t)}"),
                                  (axes[1], "bytes sent (ring algorithm)", by_op["sent"], fmt_bytes),
                                  (axes[2], "activations held (rank 0)",
                                   {None: ([memory.get(n, 0) for n in names], rank_color(0))}, fmt_bytes)):
        bottom = np.zeros(len(names))
        for label, (v, color) in layers.items():  # a kind no setup ran gets no bar (and no legend entry)
            if any(v):
                ax.bar(x, v, 0.55, bottom=bottom, color=color, edgecolor="#444444", lw=0.6, label=label)
            bottom += v
        for xi, tot in zip(x, bottom):
            ax.text(xi, tot, fmt(tot), ha="center", va="bottom", fontsize=8.5)
        ax.set_xticks(x, names)
        ax.set_ylim(0, max(bottom.max(), 1) * 1.2)
        ax.set_title(what, fontsize=10)
    axes[0].legend(fontsize=7.5, frameon=False, loc="upper left")
    fig.suptitle("One block, forward + backward, per rank", fontsize=10.5)
    return fig


def _sp_glyph(ax, x, y, layout: str, p: int, w: float = 0.9, h: float = 1.2) -> None:
    """A (T, D) activation drawn at (x, y) (lower left): T downwards, D across. ``layout``:
    "Shard(1)" (p strips along T in rank colours), "Shard(-1)" (p strips along D),
    "Replicate()" (grey) or "Partial()" (p stacked cards: partial sums, one per rank)."""
    if layout == "Replicate()":
        ax.add_patch(Rectangle((x, y), w, h, facecolor=REPLICATED_GREY, edgecolor="#333333", lw=0.8))
    elif layout == "Partial()":
        partial_cards(ax, x, y, w, h, p, 0.06, -0.06, edge="#333333", lw=0.6)
    else:  # rank 0's strip on top (Shard(1)) or on the left (Shard(-1))
        ranks = [[r] for r in reversed(range(p))] if layout == "Shard(1)" else [list(range(p))]
        rank_blocks(ax, x, y, w, h, ranks, edge="#333333", lw=0.6)


def sp_dataflow_figure(p: int = 4) -> Figure:
    """One TP + SP block (Korthikanti et al. 2022, §4.2.2, Fig. 5): the activations' layouts
    between the collectives, in rank colours (strips along T: ``Shard(1)``; along D:
    ``Shard(-1)``; grey: every rank holds it whole; stacked cards: partial sums), with the
    paper's *g* (all-gather forward, reduce-scatter backward) and *ḡ* (reduce-scatter forward,
    all-gather backward) transitions."""
    fig = new_figure(12.5, 5.0)
    ax = diagram_axes(fig, [0.005, 0.01, 0.99, 0.94], (-0.6, 13.1), (-0.9, 4.6))
    rows = (("attention", "attn_norm", "wq, wk, wv\n(column)", "heads / p", "attention,\nwo (row)"),
            ("MLP", "mlp_norm", "w1 (column)", "hidden / p", "GELU,\nw2 (row)"))
    steps = [("Shard(1)", "(B, T/p, D)"), ("Shard(1)", "(B, T/p, D)"), ("Replicate()", "(B, T, D)"),
             ("Shard(-1)", None), ("Partial()", "(B, T, D)"), ("Shard(1)", "(B, T/p, D)")]  # Shard(-1): the row's local
    xs = [0.0, 2.3, 4.6, 6.9, 9.2, 11.5]
    for row, (name, norm, col, local, rowop) in enumerate(rows):
        y = 3.0 - 2.9 * row
        ax.text(-0.25, y + 0.6, name, rotation=90, ha="right", va="center", fontsize=10, weight="bold")
        ops = [f"{norm}\n(local)", "g", col, rowop, "ḡ"]
        for k, (x, (layout, shape)) in enumerate(zip(xs, steps)):
            _sp_glyph(ax, x, y, layout, p)
            ax.text(x + 0.45, y - 0.28, f"{shape or local}\n{layout}", ha="center", va="top", fontsize=7.5, color=MUTED)
            if k < len(ops):
                x0, x1 = x + (1.2 if layout == "Partial()" else 1.0), xs[k + 1] - 0.1
                ax.annotate("", xy=(x1, y + 0.6), xytext=(x0, y + 0.6),
                            arrowprops=dict(arrowstyle="->", color="#222222", lw=1.2))
                op = ops[k]
                if op in ("g", "ḡ"):
                    fwd, bwd = ("all-gather", "reduce-scatter") if op == "g" else ("reduce-scatter", "all-gather")
                    ax.text((x0 + x1) / 2, y + 0.75, op, ha="center", va="bottom", fontsize=13,
                            weight="bold", style="italic")
                    ax.text((x0 + x1) / 2, y + 0.45, f"fwd: {fwd}\nbwd: {bwd}", ha="center", va="top",
                            fontsize=6.8, color="#222222")
                else:
                    ax.text((x0 + x1) / 2, y + 0.7, op, ha="center", va="bottom", fontsize=7.5)
        ax.text(xs[-1] + 1.05, y + 0.6, "+ x", fontsize=9, va="center")
    ax.set_title(f"Sequence parallelism in one block on p = {p} ranks: norms and residuals on T/p "
                 "positions; g gathers the sequence, ḡ scatters it back", fontsize=10)
    return fig
