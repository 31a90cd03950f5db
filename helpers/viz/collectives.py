"""Who sends what to whom: a collective drawn from the ranks' real data (notebook 00).

Each stage is a column; each rank a row of cells holding its real values (pulled from the
engines, rank 0 first). A cell is filled with the colour of the rank its value came from; a
value that is a **sum** over ranks is striped with the colour of every rank in the sum. Lines
between two columns go from each sending rank to each receiving rank, in the sender's colour.

The lines show the data each rank's result depends on (the collective's meaning), not the
algorithm that moves it (NCCL and gloo run rings or trees; the result is the same).

    collective_figure("all_reduce", before, after)
    collective_chain(before, [("reduce_scatter", shard), ("all_gather", full)])
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from ..reference.compare import as_shard_list, to_f64
from .figure import MAX_DEGREE, MUTED, TEXT, diagram_axes, new_figure, rank_blocks, rank_color

__all__ = ["OPS", "collective_figure", "collective_chain"]

#: The collectives drawn here, with the one-line meaning shown in each column's title.
OPS = {
    "all_reduce": "all-reduce (sum): every rank gets the sum",
    "all_gather": "all-gather: every rank gets every piece",
    "reduce_scatter": "reduce-scatter (sum): rank r gets block r of the sum",
    "broadcast": "broadcast: every rank gets the root's tensor",
}
_MAX_CELLS = 16


def _vectors(values, what: str) -> list[np.ndarray]:
    out = [to_f64(v, f"{what}, rank {r}").numpy().reshape(-1) for r, v in enumerate(as_shard_list(values))]
    if not out:
        raise ValueError(f"{what}: expected one tensor per rank, got none")
    if len(out) > MAX_DEGREE:
        raise ValueError(f"{what}: the drawing has colours for {MAX_DEGREE} ranks, got {len(out)}")
    if max(len(v) for v in out) > _MAX_CELLS:
        raise ValueError(f"{what}: at most {_MAX_CELLS} values per rank fit the drawing, got "
                         f"{max(len(v) for v in out)}; draw a smaller example")
    return out


def _sources(op: str, r: int, j: int, n_in: int, p: int, root: int) -> list[tuple[int, int]]:
    """(sending rank, its element) pairs that element j of rank r's result is made of."""
    if op == "all_reduce":
        return [(s, j) for s in range(p)]
    if op == "all_gather":
        return [(j // n_in, j % n_in)]
    if op == "reduce_scatter":  # rank r's result is block r (n_in / p values) of the sum
        return [(s, r * (n_in // p) + j) for s in range(p)]
    return [(root, j)]  # broadcast (collective_chain refused any other op)


def _check_shapes(op: str, before: list, after: list, root: int) -> None:
    p = len(before)
    if len(after) != p:
        raise ValueError(f"{op}: {p} ranks before but {len(after)} after")
    n_in = len(before[0])
    want = {"all_reduce": n_in, "broadcast": n_in, "all_gather": n_in * p,
            "reduce_scatter": n_in // p if n_in % p == 0 else None}[op]
    if want is None:
        raise ValueError(f"reduce_scatter: {n_in} values per rank do not split into {p} blocks")
    if any(len(v) != n_in for v in before) or any(len(v) != want for v in after):
        raise ValueError(f"{op} on {p} ranks: expected {n_in} values per rank before and {want} "
                         f"after, got {[len(v) for v in before]} and {[len(v) for v in after]}")
    if op == "broadcast" and not 0 <= root < p:
        raise ValueError(f"broadcast: root {root} is not a rank of 0..{p - 1}")


def collective_chain(before: Sequence, steps: Sequence[tuple[str, Sequence]], *, root: int = 0,
                     title: str | None = None) -> Figure:
    """Draw ``before`` (one 1-D tensor per rank) and the result of each (op, after) step in turn.

    op is one of :data:`OPS`; ``after`` is what every rank held after it (real data, by rank).
    A value's stripes are the ranks whose *original* data it sums, through every step: after
    reduce-scatter then all-gather, every cell carries every rank's colour, as after an all-reduce.
    """
    stages = [_vectors(before, "before")]
    ops = [op for op, _ in steps]
    for op, after in steps:
        if op not in OPS:
            raise ValueError(f"unknown collective {op!r}; drawn: {', '.join(OPS)}")
        stages.append(_vectors(after, f"after {op}"))
        _check_shapes(op, stages[-2], stages[-1], root)
    p = len(stages[0])

    gap, row_h = 3.2, 1.4
    widths = [len(st[0]) for st in stages]
    xs = np.cumsum([0] + [w + gap for w in widths[:-1]])
    total_w = xs[-1] + widths[-1]
    w_in = min(2.2 + 0.42 * total_w, 15.5)
    fig = new_figure(w_in, 1.1 + 0.5 * p * row_h)
    left = 0.8 / w_in                                   # room for the "rank r" labels
    ax = diagram_axes(fig, [left, 0.03, 0.99 - left, 0.8], (-0.3, total_w + 0.3), (p * row_h + 0.1, -0.25))
    # provenance: for each stage, rank, element -> the set of original ranks summed into it
    prov = [[[{r} for _ in stages[0][r]] for r in range(p)]]
    for k, op in enumerate(ops):  # and who sends to whom, between stage k and k+1
        sources = [[_sources(op, r, j, widths[k], p, root) for j in range(widths[k + 1])] for r in range(p)]
        prov.append([[set().union(*(prov[k][s][e] for s, e in src)) for src in row] for row in sources])
        x0, x1 = xs[k] + widths[k] + 0.15, xs[k + 1] - 0.15
        for r in range(p):
            for s in sorted({s for src in sources[r] for s, _ in src}):
                dy = (s - (p - 1) / 2) * 0.08
                ax.annotate("", xy=(x1, r * row_h + 0.5 + dy), xytext=(x0, s * row_h + 0.5 + dy),
                            arrowprops=dict(arrowstyle="-|>", color=rank_color(s), lw=1.1,
                                            alpha=0.85, shrinkA=0, shrinkB=0))
    for k, st in enumerate(stages):
        head = "before" if k == 0 else OPS[ops[k - 1]].split(":")[0]
        ax.text(xs[k] + widths[k] / 2, -0.15, head, ha="center", va="bottom", fontsize=9, color=TEXT,
                fontweight="bold")
        for r in range(p):
            for j, v in enumerate(st[r]):  # a unit cell striped with the colours of the ranks it sums
                x, y = xs[k] + j, r * row_h
                rank_blocks(ax, x, y, 1, 1, [sorted(prov[k][r][j])], edge="none")
                ax.add_patch(Rectangle((x, y), 1, 1, fill=False, edgecolor="white", lw=1.5))
                ax.text(x + 0.5, y + 0.5, f"{v:.0f}" if v.is_integer() and abs(v) < 1e5 else f"{v:.3g}",
                        ha="center", va="center", fontsize=8, color="white", fontweight="bold",
                        bbox=dict(boxstyle="round,pad=0.12", fc="#00000055", ec="none"))
    for r in range(p):
        ax.text(-0.4, r * row_h + 0.5, f"rank {r}", ha="right", va="center", fontsize=9, color=TEXT)
    subtitle = " · ".join(OPS[op] for op in ops)
    fig.suptitle(title or subtitle, fontsize=10, color=TEXT, y=0.99)
    if title:
        fig.text(0.5, 0.9, subtitle, ha="center", fontsize=8, color=MUTED)
    return fig


def collective_figure(op: str, before: Sequence, after: Sequence, *, root: int = 0) -> Figure:
    """One collective: every rank's data before and after ``op`` (one of :data:`OPS`)."""
    return collective_chain(before, [(op, after)], root=root)
