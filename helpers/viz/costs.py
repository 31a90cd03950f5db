"""Drawings of what parallelism costs: memory per rank, what fits a GPU, training curves, and
the time of TP's collectives, measured and modelled side by side.

Every figure labels where its numbers come from ("measured here" / "formula" / "model, cited
links"). The categories are drawn in their own colours, never in a rank colour (figure.py).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from .figure import MUTED, TEXT, new_axes, new_figure, stacked_bars

__all__ = ["MEMORY_COLORS", "memory_bars", "fit_grid", "training_curves", "comm_bars"]

#: one colour per kind of memory (none of them a rank colour)
MEMORY_COLORS = {
    "parameters": "#3b528b",
    "gradients": "#5ec962",
    "optimizer state": "#fde725",
    "activations": "#a05195",
}
MEASURED, MODELLED = "#404040", "#a0a0a0"


def memory_bars(measured: dict, modelled: dict, title: str = "Memory per rank, one training step") -> Figure:
    """Stacked bars per setup: measured on the engines (left) beside the formula (right, hatched).

    measured, modelled: ``{setup name: {"parameters": bytes, "gradients": ..., "optimizer state": ...,
    "activations": ...}}`` (same setups, same kinds).
    """
    setups = list(measured)
    if not setups or set(setups) != set(modelled):
        raise ValueError(f"measured and modelled must name the same setups, got {list(measured)} "
                         f"and {list(modelled)}")
    kinds = [k for k in MEMORY_COLORS if k in measured[setups[0]]]
    fig, ax = new_axes(7.6, 4.2)
    x = np.arange(len(setups))
    w = 0.36
    for shift, data, hatch in ((-w / 2 - 0.01, measured, None), (w / 2 + 0.01, modelled, "///")):
        bottom, bars = stacked_bars(ax, x + shift, [[float(data[s][k]) / 1024 for s in setups] for k in kinds],
                                    [MEMORY_COLORS[k] for k in kinds], width=w, edgecolor="white", hatch=hatch,
                                    linewidth=0.6)
        ax.bar_label(bars, [f"{t:.0f}" for t in bottom], fontsize=7.5, color=MUTED)
    ax.set_xticks(x, [f"{s}\nmeasured | formula" for s in setups], fontsize=8.5)
    ax.set_ylabel("KiB per rank")
    ax.set_title(title, fontsize=11)
    handles = [Patch(facecolor=MEMORY_COLORS[k], label=k) for k in kinds]
    handles.append(Patch(facecolor="white", edgecolor=MUTED, hatch="///", label="formula (helpers.costmodel)"))
    ax.legend(handles=handles, fontsize=8, frameon=False, loc="upper right")
    ax.grid(True, axis="y", color="#e0e0e0", lw=0.6)
    ax.set_axisbelow(True)
    return fig


def fit_grid(rows: Sequence[str], cols: Sequence[str], fits, totals, note: str = "") -> Figure:
    """A table of "layers that fit / layers of the model": green when the whole model fits.

    rows: model names; cols: setup names; fits[i][j], totals[i]: numbers of blocks.
    """
    fits = np.asarray(fits, dtype=float)
    if fits.shape != (len(rows), len(cols)):
        raise ValueError(f"fits has shape {fits.shape}, expected ({len(rows)}, {len(cols)})")
    frac = fits / np.asarray(totals, dtype=float)[:, None]
    fig, ax = new_axes(1.9 + 1.7 * len(cols), 1.0 + 0.55 * len(rows))
    colors = np.where(frac[..., None] >= 1, np.array([0.80, 0.93, 0.80]), np.array([0.99, 0.85, 0.80]))
    ax.imshow(colors, aspect="auto")
    for (i, j), n in np.ndenumerate(fits.astype(int)):
        t = int(totals[i])
        ax.text(j, i, f"{'all ' if n >= t else ''}{n} / {t} layers", ha="center", va="center",
                fontsize=9, color=TEXT, fontweight="bold" if n >= t else "normal")
    ax.set_xticks(range(len(cols)), cols, fontsize=8.5)
    ax.set_yticks(range(len(rows)), rows, fontsize=9)
    ax.tick_params(length=0)
    ax.set_title("A MODEL, not a measurement: blocks that fit in one A100 40 GB"
                 + (f"\n{note}" if note else ""), fontsize=10 if not note else 9)
    return fig


def training_curves(dense_losses, tp_losses, weight_errors: dict, *, tp_label: str = "TP × FSDP (2 × 2)") -> Figure:
    """Left: the loss per step, dense and TP × FSDP. Right: max |Δ| of each final weight."""
    fig = new_figure(10.0, 3.8, layout="constrained")
    ax1, ax2 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.3]})
    steps = np.arange(1, len(dense_losses) + 1)
    ax1.plot(steps, dense_losses, "o-", color=MEASURED, lw=2.5, ms=7, label="dense (this notebook)")
    ax1.plot(steps, tp_losses, "x--", color="#c05000", lw=1.2, ms=8, label=f"{tp_label} (engines)")
    ax1.set_xlabel("step")
    ax1.set_ylabel("loss (global batch)")
    ax1.set_xticks(steps)
    ax1.legend(fontsize=8, frameon=False)
    ax1.set_title("loss curve", fontsize=10)
    ax1.grid(True, color="#e0e0e0", lw=0.6)
    v = np.maximum(np.array(list(weight_errors.values()), dtype=float), 1e-12)
    ax2.barh(np.arange(len(v)), v, color="#8c8c8c")
    ax2.set_yticks(np.arange(len(v)), list(weight_errors), fontsize=6.5)
    ax2.invert_yaxis()
    ax2.set_xscale("log")
    ax2.set_xlabel("max |TP×FSDP − dense| of the final weight")
    ax2.set_title("final weights after training", fontsize=10)
    return fig


def comm_bars(rows: Sequence[dict], title: str = "TP's collectives: per layer and per training step") -> Figure:
    """Horizontal bars, one per row, in two panels (per layer, per step).

    rows: ``{"label": str, "layer_s": seconds, "step_s": seconds, "kind": "measured" | "modelled"}``.
    Measured bars are dark, modelled ones light and hatched; every bar is labelled with its time.
    """
    if not rows:
        raise ValueError("rows is empty")
    fig = new_figure(11.0, 0.9 + 0.5 * len(rows), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    y = np.arange(len(rows))
    modelled = [r["kind"] != "measured" for r in rows]
    for ax, key, what in ((axes[0], "layer_s", "per layer (forward + backward)"),
                          (axes[1], "step_s", "per training step (all layers)")):
        t = [r[key] for r in rows]
        bars = ax.barh(y, t, color=[MODELLED if m else MEASURED for m in modelled],
                       hatch=["//" if m else None for m in modelled], edgecolor="white")
        ax.bar_label(bars, [f" {_fmt_s(v)}" for v in t], fontsize=8, color=TEXT)
        ax.set_xscale("log")
        ax.set_title(what, fontsize=10)
        ax.set_xlabel("seconds (log scale)")
        ax.grid(True, axis="x", color="#e0e0e0", lw=0.6)
        ax.set_xlim(min(v for v in t if v > 0) / 3, max(t) * 30)
    axes[0].set_yticks(y, [f"{r['label']}  [{r['kind']}]" for r in rows], fontsize=8)
    axes[0].invert_yaxis()
    fig.suptitle(title, fontsize=11)
    return fig


def _fmt_s(t: float) -> str:
    if t >= 1:
        return f"{t:.2f} s"
    if t >= 1e-3:
        return f"{t * 1e3:.2f} ms"
    return f"{t * 1e6:.1f} µs"
