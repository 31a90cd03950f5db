"""Where Megatron's *f* and *g* sit in the MLP block, per rank (notebook 01).

Shoeybi et al. 2019, arXiv:1909.08053, Section 3 and Fig. 3a: the column-parallel layer is
entered through *f* (identity forward, all-reduce backward), the row-parallel layer is left
through *g* (all-reduce forward, identity backward). One row per rank.
"""

from __future__ import annotations

from matplotlib.figure import Figure
from matplotlib.patches import FancyBboxPatch, Rectangle

from .figure import MAX_DEGREE, MUTED, REPLICATED_GREY, TEXT, diagram_axes, new_figure, rank_color, text_on

__all__ = ["fg_placement_figure"]

# (label, shape text, kind): kind "rep" is replicated (grey), "shard" the rank's block,
# "partial" a full-size partial sum in the rank's colour
_STATIONS = [("X", "(B, D)", "rep"), ("X·W1_rᵀ+b1_r", "(B, H/p)", "shard"),
             ("Z_r = GELU(·)", "(B, H/p)", "shard"), ("P_r = Z_r·W2_rᵀ", "(B, D) partial", "partial"),
             ("Y = ΣP_r + b2", "(B, D)", "rep")]
# what sits between station i and i+1: an operator box (f, g) or a local step
_BETWEEN = ["f", "GELU", "·W2_rᵀ", "g"]
_OPS = {"f": ("forward: identity", "backward: all-reduce dL/dX"),
        "g": ("forward: all-reduce ΣP_r", "backward: identity")}


def fg_placement_figure(degree: int) -> Figure:
    """The Megatron MLP on ``degree`` ranks: what each rank holds, and where *f* and *g* act."""
    if not isinstance(degree, int) or not 1 <= degree <= MAX_DEGREE:
        raise ValueError(f"degree must be an integer in 1..{MAX_DEGREE}, got {degree!r}")
    p, box_w, gap, row_h = degree, 2.3, 1.5, 0.9
    xs = [i * (box_w + gap) for i in range(len(_STATIONS))]
    width = xs[-1] + box_w
    fig = new_figure(12.5, 1.9 + 0.48 * p)
    ax = diagram_axes(fig, [0.06, 0.02, 0.93, 0.8], (-0.2, width + 0.2), (p * row_h + 1.15, -0.55))
    for i, (label, shape, _) in enumerate(_STATIONS):
        ax.text(xs[i] + box_w / 2, -0.15, label, ha="center", va="bottom", fontsize=9, color=TEXT,
                fontweight="bold")
        ax.text(xs[i] + box_w / 2, p * row_h + 0.05, shape, ha="center", va="top", fontsize=8,
                color=MUTED)
    for r in range(p):
        y = r * row_h
        ax.text(-0.3, y + 0.35, f"rank {r}", ha="right", va="center", fontsize=9, color=TEXT)
        for i, (_, _, kind) in enumerate(_STATIONS):
            ax.add_patch(Rectangle((xs[i], y), box_w, 0.7, facecolor=REPLICATED_GREY if kind == "rep" else rank_color(r),
                                   edgecolor="white", hatch="//" if kind == "partial" else None))
            if kind == "partial":
                ax.text(xs[i] + box_w / 2, y + 0.35, "share of Y", ha="center", va="center",
                        fontsize=8, color=text_on(r))
    for i, op in enumerate(_BETWEEN):
        if op not in _OPS:  # a local step: an arrow on every rank's row
            for y in (r * row_h for r in range(p)):
                ax.annotate("", xy=(xs[i + 1] - 0.05, y + 0.35), xytext=(xs[i] + box_w + 0.05, y + 0.35),
                            arrowprops=dict(arrowstyle="-|>", color=TEXT, lw=1))
                ax.text(xs[i] + box_w + gap / 2, y + 0.28, op, ha="center", va="bottom", fontsize=8,
                        color=MUTED)
            continue
        x0 = xs[i] + box_w + 0.2  # f and g: one box across every rank
        ax.add_patch(FancyBboxPatch((x0, -0.05), gap - 0.4, p * row_h - 0.1,
                                    boxstyle="round,pad=0.05", facecolor="white", edgecolor=TEXT, lw=1.6))
        ax.text(x0 + (gap - 0.4) / 2, (p * row_h) / 2 - 0.1, op, ha="center", va="center",
                fontsize=22, style="italic", color=TEXT)
        ax.text(x0 + (gap - 0.4) / 2, p * row_h + 0.45, "\n".join(_OPS[op]), ha="center", va="top",
                fontsize=8, color=TEXT)
    ax.annotate("", xy=(0.0, p * row_h + 1.05), xytext=(width, p * row_h + 1.05),
                arrowprops=dict(arrowstyle="-|>", color=MUTED, lw=1, ls="--"))
    ax.text(width / 2, p * row_h + 1.0, "backward: dL/dY enters at g, dL/dX leaves at f", ha="center",
            va="bottom", fontsize=8, color=MUTED)
    fig.suptitle(f"Megatron's MLP on {p} ranks (Shoeybi et al. 2019, Fig. 3a): one all-reduce forward "
                 "(g), one backward (f)", fontsize=10, color=TEXT, y=0.99)
    return fig
