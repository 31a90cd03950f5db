"""Drawings of where a TP step's time goes: stacked compute / communication bars per degree,
and matmul efficiency next to the cited H100 reference table.

Inputs are what ``cluster.pull(...)`` returned (a list, rank 0 first) of
:meth:`helpers.measure.timer.StepTimer.split` dicts, keyed by TP degree.
The bars use no rank colour (the parts of a step are not ranks): greys for compute, amber for
communication, hatching for modelled degrees.
"""

from __future__ import annotations

import html
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from .figure import TEXT, new_axes, stacked_bars

__all__ = ["summarize_splits", "step_efficiency", "step_time_figure", "efficiency_table",
           "efficiency_figure", "Evidence", "PART_COLORS"]

#: fill of each part of a step (never a rank colour)
PART_COLORS = {"matmul": "#4d4d4d", "other": "#a6a6a6", "communication": "#e8a33d"}
PART_LABELS = {"matmul": "local matmuls (forward + backward)",
               "other": "other compute (attention core, norms, GELU, autograd)",
               "communication": "collectives (all-reduces of f and g)"}


def summarize_splits(per_rank: Sequence[dict]) -> dict[int, dict[str, float]]:
    """Mean over ranks of each part of the median step, per degree: {p: {step, matmul, other,
    communication}} in seconds. (The ranks of one TP group wait for each other in every
    all-reduce, so their steps take the same time; the mean also averages the groups.)"""
    if not per_rank:
        raise ValueError("no timings: expected one {degree: split} dict per rank")
    return {p: {k: float(np.mean([r[p][k] for r in per_rank if p in r]))
                for k in ("step", "matmul", "other", "communication")}
            for p in sorted({int(p) for r in per_rank for p in r})}


def step_efficiency(summary: dict[int, dict[str, float]]) -> dict[int, dict[str, float]]:
    """Per degree: ``efficiency`` = T(1) / (p · T(p)) (1.0 = perfect: p ranks, p× faster),
    ``speedup`` = T(1) / T(p), ``comm_share`` = communication / step."""
    if 1 not in summary:
        raise ValueError(f"degree 1 is the baseline and was not timed (degrees: {sorted(summary)})")
    t1 = summary[1]["step"]
    return {p: {"efficiency": t1 / (p * s["step"]), "speedup": t1 / s["step"],
                "comm_share": s["communication"] / s["step"] if s["step"] > 0 else 0.0}
            for p, s in summary.items()}


def step_time_figure(summary: dict[int, dict[str, float]], modeled: dict[int, dict[str, float]] | None = None,
                     title: str = "One training step of the TP block, per TP degree") -> Figure:
    """Stacked bars (ms): matmuls, other compute, communication, one bar per degree (modelled
    degrees hatched), the ideal T(1)/p as a dashed line, and under each bar its efficiency
    T(1)/(p·T(p)) and communication share."""
    allp = {**(modeled or {}), **summary}
    degrees = sorted(allp)
    eff = step_efficiency(allp)
    fig, ax = new_axes(7.2, 4.4)
    x = np.arange(len(degrees))
    _, bars = stacked_bars(ax, x, [[1e3 * allp[p][part] for p in degrees] for part in PART_COLORS], PART_COLORS.values(),
                           width=0.62, edgecolor="white", linewidth=0.8,
                           hatch=[None if p in summary else "//" for p in degrees])
    ax.bar_label(bars, [f"{1e3 * allp[p]['step']:.1f} ms\neff {eff[p]['efficiency']:.0%}\ncomm {eff[p]['comm_share']:.0%}"
                        for p in degrees], padding=4, fontsize=8, color=TEXT)
    ax.plot(x, [1e3 * allp[1]["step"] / p for p in degrees], ls="--", marker="_", color="#222222", lw=1.0,
            label="ideal: T(1) / p")
    ax.set_xticks(x, [f"{p}" + (" (model)" if p not in summary else "") for p in degrees])
    ax.set_xlabel("TP degree p (ranks sharing the block)")
    ax.set_ylabel("ms per step (forward + backward)")
    ax.set_ylim(0, 1.38e3 * max(allp[p]["step"] for p in degrees))
    handles = [Patch(facecolor=PART_COLORS[k], label=PART_LABELS[k]) for k in PART_COLORS]
    if modeled:
        handles.append(Patch(facecolor="white", edgecolor="#666666", hatch="//",
                             label="modelled (cost model, link fitted here)"))
    handles.append(ax.get_lines()[0])
    ax.legend(handles=handles, fontsize=7.5, frameon=False, loc="upper left")
    ax.set_title(title, fontsize=11)
    ax.grid(True, axis="y", color="#dddddd", lw=0.6)
    ax.set_axisbelow(True)
    return fig


# ------------------------------------------------------------------------------ matmul efficiency
class _HTML:
    def __init__(self, html_text: str, text: str):
        self._html, self._text = html_text, text

    def _repr_html_(self) -> str:
        return self._html

    def __repr__(self) -> str:
        return self._text


def efficiency_table(reference: dict, measured: dict | None = None, *, source: str = "",
                     shape: str = "", measured_label: str = "this machine") -> _HTML:
    """The cited reference table next to this machine's numbers, as HTML.

    ``reference``: {(dtype, tokens): (TFLOP/s at p=1, {p: relative rate})};
    ``measured``: {label: {p: TFLOP/s}} (the % is computed against its p=1).
    """
    measured = {label: {int(p): v for p, v in row.items()} for label, row in (measured or {}).items()}
    degrees = sorted({p for _, curve in reference.values() for p in curve} | {p for row in measured.values() for p in row})
    rows = []  # (the row's HTML up to its cells, its label as text, its cells), both renderings from one list
    for (dtype, tokens), (rate, curve) in reference.items():
        rows.append((f"<tr><td>H100 reference</td><td>{dtype}</td><td>{tokens}</td>", f"H100 {dtype} {tokens}",
                     [f"{rate:.1f} TFLOP/s" if p == 1 else (f"{curve[p]:.0%}" if p in curve else "–") for p in degrees]))
    for label, row in measured.items():
        base = row.get(1)  # the % is against p = 1: without it, only dashes
        rows.append((f"<tr style='font-weight:bold'><td>{html.escape(measured_label)}</td>"
                     f"<td colspan=2>{html.escape(str(label))}</td>", str(label)[:28],
                     [f"{base:.3g} TFLOP/s" if p == 1 and base else f"{row[p] / base:.0%}" if p in row and base else "–"
                      for p in degrees]))
    cap = (f"<caption style='caption-side:bottom;text-align:left;font-size:85%'>Reference: "
           f"{html.escape(source)}; {html.escape(shape)}.</caption>") if source else ""
    head = "".join(f"<th>p={p}</th>" for p in degrees)
    table = (f"<table class='tp-efficiency-table'>{cap}<tr><th>source</th><th>dtype</th><th>tokens</th>{head}</tr>"
             + "".join(start + "".join(f"<td>{c}</td>" for c in cells) + "</tr>" for start, _, cells in rows) + "</table>")
    lines = [f"{'':28s}" + "".join(f"{'p=' + str(p):>9s}" for p in degrees)]
    lines += [f"{label:28s}" + "".join(f"{c:>9s}" for c in cells) for _, label, cells in rows]
    return _HTML(table, "\n".join(lines) + (f"\nreference: {source}; {shape}" if source else ""))


def efficiency_figure(reference: dict, measured: dict | None = None) -> Figure:
    """Rate at degree p relative to p = 1: the reference rows in grey, this machine's in black."""
    fig, ax = new_axes(6.4, 3.8)
    greys = ["#9a9a9a", "#b0b0b0", "#7f7f7f", "#c4c4c4", "#8c8c8c", "#a8a8a8"]
    for i, ((dtype, tokens), (_, curve)) in enumerate(reference.items()):
        ps = sorted(curve)
        ax.plot(ps, [100 * curve[p] for p in ps], color=greys[i % len(greys)], lw=1.2, ls="--",
                marker=".", label=f"H100 {dtype}, {tokens} tokens")
    for i, (label, row) in enumerate((measured or {}).items()):
        rowp = {int(k): v for k, v in row.items()}
        if not rowp.get(1):
            continue
        ps = sorted(rowp)
        ax.plot(ps, [100 * rowp[p] / rowp[1] for p in ps], color="#111111", lw=2.0,
                marker="os^D"[i % 4], label=f"here: {label}")
    ax.axhline(100, color="#444444", lw=0.8)
    ax.set_xscale("log", base=2)
    ticks = sorted({p for _, c in reference.values() for p in c})
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.set_xlabel("TP degree p (the shard is 1/p of the layer)")
    ax.set_ylabel("% of the rate at p = 1")
    ax.set_title("Matmul rate relative to p = 1 (one GPU's shard of the layer)", fontsize=10.5)
    ax.grid(True, color="#dddddd", lw=0.6)
    ax.legend(fontsize=7, frameon=False, ncol=2)
    return fig


# ------------------------------------------------------------------------------ evidence
class Evidence(_HTML):
    """The chapter's bullets, each with the number from this notebook that backs it.

    ``Evidence([(bullet, evidence), ...])`` shows as a two-column table."""

    def __init__(self, rows: Sequence[tuple[str, str]]):
        body = "".join(f"<tr><td style='text-align:left'><b>{html.escape(b)}</b></td>"
                       f"<td style='text-align:left'>{html.escape(e)}</td></tr>" for b, e in rows)
        super().__init__(f"<table class='tp-evidence'><tr><th>the chapter says</th>"
                         f"<th>measured or computed here</th></tr>{body}</table>",
                         "\n".join(f"* {b}\n    -> {e}" for b, e in rows))

