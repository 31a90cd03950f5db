"""Drawings for notebook 05 (a whole TP language model): loss curves, bytes, memory, collectives.

Follows the figure contract of :mod:`.figure`: Agg figures, rank colours for per-rank bars,
greys for everything else (dense, formulas).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from ..common.numbers import fmt_bytes
from .figure import MUTED, REPLICATED_GREY, new_figure, rank_color

__all__ = ["plot_loss_curves", "plot_bytes", "plot_activation_memory", "plot_collectives"]


def plot_loss_curves(dense: Sequence[float], tp: Sequence[float], tol: float,
                     tp_label: str = "TP + SP (4 ranks)") -> Figure:
    """Left: the dense loss and the TP loss per step, side by side. Right: |Δ| per step and the tolerance."""
    dense, tp = np.asarray(dense, float), np.asarray(tp, float)
    if dense.shape != tp.shape:
        raise ValueError(f"the curves have {dense.size} and {tp.size} steps")
    steps = np.arange(1, dense.size + 1)
    fig = new_figure(10.5, 3.6)
    a1, a2, a3 = fig.subplots(1, 3)
    a1.plot(steps, dense, color="#222222", lw=1.8, marker="o", ms=3)
    a1.set_title("dense (one process)", fontsize=10)
    a2.plot(steps, tp, color=rank_color(0), lw=1.8, marker="s", ms=3)
    a2.set_title(tp_label, fontsize=10)
    lo, hi = min(dense.min(), tp.min()), max(dense.max(), tp.max())
    for ax in (a1, a2):
        ax.set_xlabel("step")
        ax.set_ylabel("cross-entropy loss")
        ax.set_ylim(lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo))
        ax.grid(True, color="#dddddd", lw=0.6)
    diff = np.abs(tp - dense)
    a3.semilogy(steps, np.maximum(diff, 1e-12), color=MUTED, marker="o", ms=3, label="|TP − dense|")
    a3.axhline(tol, color="#cf222e", ls="--", lw=1, label=f"tolerance {tol:.0e}")
    a3.set_xlabel("step")
    a3.set_title("difference per step", fontsize=10)
    a3.legend(fontsize=8, frameon=False)
    a3.grid(True, color="#dddddd", lw=0.6)
    fig.set_layout_engine("constrained")
    return fig


def plot_bytes(values: Mapping[str, float], title: str, colors: Sequence | None = None) -> Figure:
    """Horizontal bars, one per label, each annotated with its size (B / KB / MB)."""
    labels, vals = list(values), [float(v) for v in values.values()]
    fig = new_figure(7.5, 0.55 * len(labels) + 1.2)
    ax = fig.add_subplot()
    colors = list(colors) if colors is not None else [REPLICATED_GREY] * len(labels)
    y = np.arange(len(labels))[::-1]
    ax.barh(y, vals, color=colors, edgecolor="#444444", lw=0.6)
    for yi, v in zip(y, vals):
        ax.text(v, yi, f"  {fmt_bytes(v)}", va="center", fontsize=8.5)
    ax.set_yticks(y, labels, fontsize=9)
    ax.set_xlim(0, max(vals + [1]) * 1.3)
    ax.set_xlabel("bytes per rank")
    ax.set_title(title, fontsize=10.5)
    fig.set_layout_engine("constrained")
    return fig


def plot_activation_memory(measured: Mapping[str, Sequence[float]], formula: Mapping[str, float],
                           title: str = "What one block keeps for the backward, per rank") -> Figure:
    """Per-rank measured bytes (rank colours; 'dense' in grey) beside the formula (hatched)."""
    fig = new_figure(8.0, 3.8)
    ax = fig.add_subplot()
    x0, ticks, names = 0.0, [], []
    for name, per_rank in measured.items():
        per_rank = list(per_rank)
        n = len(per_rank)
        w = 0.8 / (n + 1)
        for r, v in enumerate(per_rank):
            ax.bar(x0 + r * w, v, w, color=REPLICATED_GREY if n == 1 else rank_color(r),
                   edgecolor="#444444", lw=0.5)
        f = formula.get(name)
        if f is not None:
            ax.bar(x0 + n * w, f, w, color="white", edgecolor="#444444", hatch="///", lw=0.6)
            ax.text(x0 + n * w, f, fmt_bytes(f), ha="center", va="bottom", fontsize=7.5, color=MUTED)
        ticks.append(x0 + n * w / 2)
        names.append(name)
        x0 += 1.0
    ax.set_xticks(ticks, names)
    ax.set_ylabel("bytes saved for backward")
    ax.set_title(title + "  (coloured: measured on each rank; hatched: formula)", fontsize=9.5)
    ax.grid(True, axis="y", color="#dddddd", lw=0.6)
    fig.set_layout_engine("constrained")
    return fig


def plot_collectives(summaries: Mapping[str, Mapping[str, Mapping[str, float]]], memory: Mapping[str, float],
                     title: str = "One block, forward + backward, per rank") -> Figure:
    """Three panels: how many collectives of each kind, bytes each rank sends, activation bytes held.

    summaries: ``{"TP": {"all_reduce": {"count", "sent", ...}}, "TP + SP": {...}}``
    (from :class:`helpers.engine.comm.CommBytes`); memory: ``{"TP": bytes, "TP + SP": bytes}``.
    """
    kinds = ["all_reduce", "all_gather", "reduce_scatter"]
    greys = {"all_reduce": "#555555", "all_gather": "#9a9a9a", "reduce_scatter": "#d0d0d0"}
    names = list(summaries)
    fig = new_figure(10.5, 3.5)
    a1, a2, a3 = fig.subplots(1, 3)
    x = np.arange(len(names))
    for ax, key in ((a1, "count"), (a2, "sent")):
        bottom = np.zeros(len(names))
        for k in kinds:
            v = np.array([summaries[n].get(k, {}).get(key, 0) for n in names], float)
            if v.any():
                ax.bar(x, v, 0.55, bottom=bottom, color=greys[k], edgecolor="#444444", lw=0.6, label=k)
            bottom += v
        for xi, tot in zip(x, bottom):
            ax.text(xi, tot, fmt_bytes(tot) if key == "sent" else f"{int(tot)}", ha="center",
                    va="bottom", fontsize=8.5)
        ax.set_xticks(x, names)
        ax.set_ylim(0, max(bottom.max(), 1) * 1.2)
    a1.set_title("collectives", fontsize=10)
    a1.legend(fontsize=7.5, frameon=False, loc="upper left")
    a2.set_title("bytes sent (ring algorithm)", fontsize=10)
    mem = np.array([memory.get(n, 0) for n in names], float)
    a3.bar(x, mem, 0.55, color=[rank_color(0)] * len(names), edgecolor="#444444", lw=0.6)
    for xi, v in zip(x, mem):
        a3.text(xi, v, fmt_bytes(v), ha="center", va="bottom", fontsize=8.5)
    a3.set_xticks(x, names)
    a3.set_ylim(0, max(mem.max(), 1) * 1.2)
    a3.set_title("activations held (rank 0)", fontsize=10)
    fig.suptitle(title, fontsize=10.5)
    fig.set_layout_engine("constrained")
    return fig
