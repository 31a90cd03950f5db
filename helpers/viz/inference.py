"""Notebook 07's drawings: the KV cache by rank, decode vs prefill, the alpha-beta curve."""

from __future__ import annotations

from collections import Counter

import numpy as np
from matplotlib.patches import Patch

from ..costmodel.collectives import bytes_sent, steps
from .figure import MUTED, TEXT, new_axes, new_figure, rank_color, rank_handles, stacked_bars
from .timing import PART_COLORS

__all__ = ["shared_device_note", "cache_figure", "prefill_decode_figure", "alpha_beta_figure"]

_PART_LABELS = {"matmul": "local matmuls", "other": "other (attention core, norms, Python)",
                "communication": "all-reduce"}


def shared_device_note(info: list[dict]) -> str:
    """'' when every rank has a device of its own; else a label such as 'shared GPU: 4 ranks on
    cuda:0' (or 'shared CPU: 4 ranks on 1 host'), for the figures' titles. ``info``: ``cluster.info()``."""
    seen = Counter((e.get("host"), str(e.get("device"))) for e in info)
    (_, dev), n = max(seen.items(), key=lambda kv: kv[1], default=((None, ""), 1))  # the most shared device
    if n < 2:
        return ""
    if dev.startswith("cuda"):
        return f"shared GPU: {n} ranks on {dev}"
    return f"shared CPU: {n} ranks on {len({h for h, _ in seen})} host(s)"


def cache_figure(holdings: list[list[int]], n_kv_heads: int, lengths: list[int], prompt_len: int,
                 title: str = "The KV cache, by rank, as the sequence grows", note: str = ""):
    """One panel per moment in ``lengths`` (tokens cached): a row per (kv head, rank holding it),
    a cell per cached position in that rank's colour; the dashed line ends the prompt (prefill),
    hatched cells were appended by decode steps. ``holdings[r]``: the global kv heads rank r holds
    (a head on several ranks is replicated: several rows)."""
    rows = [(h, r) for h in range(n_kv_heads) for r, hs in enumerate(holdings) if h in hs]
    fig = new_figure(3.2 * len(lengths) + 1.2, 0.32 * len(rows) + 1.6)
    axes = fig.subplots(1, len(lengths), squeeze=False, sharey=True,  # tick labels on the first panel only
                        subplot_kw=dict(xlim=(0, max(lengths)), ylim=(len(rows), 0)))[0]
    for ax, n in zip(axes, lengths):
        for y, (h, r) in enumerate(rows):  # one cell per position, from t to t + 0.92
            ax.barh(y + 0.43, 0.92, height=0.86, left=np.arange(n), color=rank_color(r),
                    edgecolor="white", hatch=["///" if t >= prompt_len else None for t in range(n)], linewidth=0)
        ax.axvline(prompt_len - 0.04, color=TEXT, linestyle="--", linewidth=1)
        ax.set_yticks(np.arange(len(rows)) + 0.43, [f"kv head {h} · rank {r}" for h, r in rows], fontsize=7)
        ax.set_xlabel("position (token)", fontsize=8)
        ax.set_title(f"{n} tokens cached", fontsize=9, color=TEXT)
        ax.tick_params(labelsize=7)
        ax.spines[["top", "right"]].set_visible(False)
    fig.legend(handles=rank_handles(len(holdings)), loc="upper right", fontsize=7, ncol=len(holdings), frameon=False)
    fig.suptitle(title + (f"  ({note})" if note else ""), fontsize=10, x=0.02, ha="left", color=TEXT)
    fig.text(0.02, 0.01, "dashed: end of the prompt (prefill); hatched: appended by decode steps",
             fontsize=7, color=MUTED)
    fig.tight_layout(rect=(0, 0.04, 1, 0.9))
    return fig


def prefill_decode_figure(decode: dict, prefill: dict, note: str = ""):
    """Two panels of stacked bars per TP degree: one decode step (ms per generated token) and the
    prefill (ms), each split into local matmuls, other and all-reduce. ``decode``/``prefill``:
    {p: {"matmul", "other", "communication"} in seconds}."""
    fig = new_figure(9.5, 3.6)
    axes = fig.subplots(1, 2, subplot_kw=dict(ylabel="ms"))
    for ax, (what, data) in zip(axes, (("one decode step (1 token)", decode), ("the prefill (the prompt)", prefill))):
        degrees = sorted(data)
        x = np.arange(len(degrees))
        bottom, bars = stacked_bars(ax, x, [[1e3 * data[p][part] for p in degrees] for part in PART_COLORS],
                                    PART_COLORS.values(), width=0.6, edgecolor="white")
        ax.bar_label(bars, [f"{t:.2f} ms\n{1e3 * data[p]['communication'] / max(t, 1e-9):.0%} comm"
                            for p, t in zip(degrees, bottom)], fontsize=7, color=TEXT)
        ax.set_xticks(x, [f"TP={p}" for p in degrees])
        ax.set_ylim(0, max(bottom) * 1.3 if len(bottom) else 1)
        ax.set_title(what, fontsize=10)
        ax.spines[["top", "right"]].set_visible(False)
    fig.legend(handles=[Patch(facecolor=PART_COLORS[k], label=_PART_LABELS[k]) for k in PART_COLORS],
               loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.suptitle("Where the time goes, per TP degree" + (f"  ({note})" if note else ""), fontsize=10.5)
    fig.tight_layout(rect=(0, 0.08, 1, 0.95))
    return fig


def alpha_beta_figure(measured: dict[int, float], p: int, latency: float, bandwidth: float,
                      marks: dict[str, int], note: str = ""):
    """Measured all-reduce seconds by message size (points) over ``p`` ranks, the fitted
    t(n) = 2(p-1)·α + 2(p-1)/p·n/β (line), its two regimes (dotted), and the messages of
    ``marks`` ({label: bytes}: a decode step's, a prefill's) placed on the line."""
    fig, ax = new_axes(6.8, 4.0)
    sizes = sorted(measured)
    lo, hi = min(sizes + list(marks.values())) / 2, max(sizes + list(marks.values())) * 2
    n = np.geomspace(lo, hi, 200)
    lat = steps("all_reduce", p) * latency               # the formulas of helpers.costmodel.collectives
    bw = bytes_sent("all_reduce", n, p) / bandwidth      # 0 for an infinite bandwidth
    ax.loglog(n, 1e6 * (lat + bw), color=TEXT, linewidth=1.5,
              label=f"fit: α = {latency * 1e6:.0f} µs/step, β = "
                    + (f"{bandwidth / 1e9:.2f} GB/s" if np.isfinite(bandwidth) else "∞"))
    if lat > 0:
        ax.loglog(n, np.full_like(n, 1e6 * lat), ":", color=MUTED, linewidth=1, label="latency term 2(p−1)α")
    if np.isfinite(bandwidth):
        ax.loglog(n, 1e6 * np.maximum(bw, 1e-12), "-.", color=MUTED, linewidth=1, label="bandwidth term")
    ax.loglog(sizes, [1e6 * measured[s] for s in sizes], "o", color=PART_COLORS["communication"],
              markersize=7, label=f"measured all-reduce, p = {p}")
    for label, nb in marks.items():
        ax.axvline(nb, color=MUTED, linewidth=0.8)
        ax.annotate(f"{label}\n{nb:,} B", (nb, 1e6 * (lat + bytes_sent("all_reduce", nb, p) / bandwidth)),  # on the fit
                    textcoords="offset points", xytext=(6, 10), fontsize=8, color=TEXT)
    ax.set_xlabel("message: bytes of the full tensor")
    ax.set_ylabel("µs per all-reduce")
    ax.legend(fontsize=7.5, frameon=False, loc="upper left")
    ax.set_title("All-reduce time vs message size" + (f"  ({note})" if note else ""), fontsize=10)
    return fig
