"""Notebook 08's drawings: a TP step's per-rank timeline (collective and matmul lanes) from
timestamps taken on the ranks, and which shard of which parameter each rank wrote or read in a
checkpoint."""

from __future__ import annotations

from matplotlib.patches import Rectangle

from .figure import MUTED, REPLICATED_GREY, TEXT, new_figure, rank_color

__all__ = ["timeline_figure", "checkpoint_figure", "overlap_seconds"]

LANES = ("collective", "matmul")


def overlap_seconds(spans) -> float:
    """Seconds during which a collective span and a matmul span of one rank run at the same time."""
    coll = [(a, b) for lane, _, a, b in spans if lane == "collective"]
    mm = [(a, b) for lane, _, a, b in spans if lane == "matmul"]
    return sum(max(0.0, min(b1, b2) - max(a1, a2)) for a1, b1 in coll for a2, b2 in mm)


def timeline_figure(runs: dict, title: str = "one step, per rank", note: str = ""):
    """``runs``: {label: [spans of rank 0, spans of rank 1, ...]}, a span (lane, label, t0, t1) in
    seconds from ``time.perf_counter`` on the rank. One panel per run; per rank two lanes: the
    collective (hatched) and the matmul, in the rank's colour. Times from each run's first span."""
    n = len(runs)
    p = max(len(v) for v in runs.values())
    fig = new_figure(10, 0.55 * p * 2 * n + 0.9 * n, layout="constrained")
    axes = fig.subplots(n, 1, squeeze=False)[:, 0]
    for ax, (label, by_rank) in zip(axes, runs.items()):
        t0 = min(s[2] for spans in by_rank for s in spans)
        t_end = max(s[3] for spans in by_rank for s in spans)
        ticks = []
        for r, spans in enumerate(by_rank):
            for k, lane in enumerate(LANES):
                yv = (p - 1 - r) * 2.6 + (1 - k) * 1.1
                ticks.append(yv + 0.45)
                ax.broken_barh([((a - t0) * 1e3, max((b - a) * 1e3, 1e-3)) for ln, _, a, b in spans if ln == lane],
                               (yv, 0.9), facecolors=rank_color(r), edgecolor=TEXT, linewidth=0.4,
                               hatch="///" if lane == "collective" else None)
            ax.text((t_end - t0) * 1e3 * 1.01, (p - 1 - r) * 2.6 + 0.9, f"overlap {overlap_seconds(spans) * 1e3:.2f} ms",
                    fontsize=8, color=MUTED, va="center")
        ax.set_yticks(ticks, [f"rank {r} {lane}" for r in range(len(by_rank)) for lane in LANES], fontsize=8)
        ax.set_xlim(0, (t_end - t0) * 1e3 * 1.22)
        ax.set_xlabel("ms since the first span (time.perf_counter on each rank)")
        ax.set_title(label, fontsize=10, loc="left")
    fig.suptitle(title + (f"\n{note}" if note else ""), fontsize=10)
    return fig


def checkpoint_figure(layouts: dict, shapes: dict, title: str = "which rank wrote / read which shard"):
    """``layouts``: {setup label: [{param: (offset, size)} of rank 0, rank 1, ...]} where offset and
    size are the rank's piece of the 2-D parameter (rows, cols); ``shapes``: {param: (rows, cols)}.
    Each parameter is a rectangle; each rank's piece is filled in its colour (ranks holding the same
    piece share it in stripes); a setup with one holder and the whole tensor is drawn grey."""
    names = list(shapes)
    fig = new_figure(2.4 * len(names) + 1.5, 2.1 * len(layouts) + 0.6, layout="constrained")
    axes = fig.subplots(len(layouts), len(names), squeeze=False, subplot_kw=dict(xticks=[], yticks=[]))
    for i, (setup, by_rank) in enumerate(layouts.items()):
        for j, name in enumerate(names):
            ax = axes[i, j]
            rows, cols = shapes[name]
            pieces: dict = {}
            for r, lay in enumerate(by_rank):
                if name in lay:
                    pieces.setdefault(tuple(map(tuple, lay[name])), []).append(r)
            for ((r0, c0), (nr, nc)), ranks in pieces.items():
                whole = len(by_rank) == 1 and (nr, nc) == (rows, cols)
                w = nc / len(ranks)
                for k, r in enumerate(ranks):
                    ax.add_patch(Rectangle((c0 + k * w, rows - r0 - nr), w, nr, edgecolor=TEXT, linewidth=0.5,
                                           facecolor=REPLICATED_GREY if whole else rank_color(r)))
                ax.text(c0 + nc / 2, rows - r0 - nr / 2, "dense" if whole else ",".join(map(str, ranks)),
                        ha="center", va="center", fontsize=7, color="white" if not whole else TEXT)
            ax.set_xlim(0, cols)
            ax.set_ylim(0, rows)
            if i == 0:
                ax.set_title(f"{name}\n{rows}×{cols}", fontsize=8)
            if j == 0:
                ax.set_ylabel(setup, fontsize=8)
    fig.suptitle(title, fontsize=10)
    return fig
