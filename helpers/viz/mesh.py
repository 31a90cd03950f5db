"""The mesh map: ranks in their DeviceMesh grid, in rank colours, with their groups and hosts.

Pure drawing from plain data (a mesh shape, dim names, each rank's host and device); the groups
come from :func:`helpers.common.topology.mesh_groups`, so the picture and the warning about TP groups
that cross hosts (:func:`helpers.common.topology.tp_groups_across_hosts`) agree.
"""

from __future__ import annotations

import math

from matplotlib.figure import Figure
from matplotlib.patches import FancyBboxPatch, Rectangle

from ..common.topology import mesh_groups, tp_groups_across_hosts
from .figure import MUTED, TEXT, diagram_axes, new_figure, rank_color, text_on

__all__ = ["mesh_map"]

_CROSS = "#cf222e"  # a group that crosses hosts (red, not a rank colour: dashed outline only)
_NODE = "#e8edf5"   # a node's box behind its ranks (node_boxes=True)


def mesh_map(mesh_shape, dim_names, hosts=None, devices=None, group_dim: str | None = None,
             title: str | None = None, node_boxes: bool = False, flag_crossing: bool = True) -> Figure:
    """Ranks laid out as on the mesh (1-D: a row; 2-D: rows = dim 0), each in its rank colour.

    hosts / devices: one string per rank (rank 0 first), written under each rank.
    group_dim: the dim whose groups are outlined (default ``"tp"`` if the mesh has one, else the
    last dim); with ``hosts``, a group on more than one host is outlined in dashed red.
    node_boxes: with ``hosts``, draw each host (node) as a shaded box behind its ranks, labelled
    with its name: the node boundaries.
    flag_crossing: outline groups on several hosts in dashed red (turn off for groups that are
    meant to cross nodes, e.g. FSDP's).
    """
    shape = tuple(int(s) for s in mesh_shape)
    if len(shape) not in (1, 2):
        raise ValueError(f"mesh_map draws 1-D and 2-D meshes, got shape {shape}")
    names = tuple(dim_names) if dim_names else tuple(f"dim{i}" for i in range(len(shape)))
    n = math.prod(shape)
    for what, seq in (("hosts", hosts), ("devices", devices)):
        if seq is not None and len(seq) != n:
            raise ValueError(f"{what} needs one entry per rank: got {len(seq)} for a mesh of {n} ranks")
    group_dim = group_dim or ("tp" if "tp" in names else names[-1])
    if group_dim not in names:
        raise ValueError(f"group_dim {group_dim!r} is not a dim of this mesh; its dims are {names}")
    groups = mesh_groups(shape, names)[group_dim]
    crossing = tp_groups_across_hosts(shape, names, hosts, group_dim) if hosts is not None and flag_crossing else []
    crossing_sets = [set(g["ranks"]) for g in crossing]

    nrow, ncol = (1, shape[0]) if len(shape) == 1 else shape
    sq, gap = 1.0, 0.7
    pos = {r: ((r % ncol) * (sq + gap), (r // ncol) * (sq + gap + 0.25)) for r in range(n)}  # row-major
    W = ncol * (sq + gap) - gap
    H = nrow * (sq + gap + 0.25) - gap
    fig = new_figure(max(3.6, 1.25 * W + 1.6), 1.25 * H + 1.6)
    m = 0.3 if node_boxes else 0.0  # room for the node boxes
    ax = diagram_axes(fig, [0.05, 0.04, 0.9, 0.78], (-0.6 - m, W + 0.6 + m), (H + 0.5 + m, -0.6 - m), aspect="equal")
    if node_boxes and hosts is not None:
        for host in dict.fromkeys(map(str, hosts)):
            on = [r for r in range(n) if str(hosts[r]) == host]
            xs, ys = zip(*(pos[r] for r in on))
            ax.add_patch(FancyBboxPatch((min(xs) - 0.4, min(ys) - 0.38), max(xs) - min(xs) + sq + 0.8,
                                        max(ys) - min(ys) + sq + 0.83, boxstyle="round,pad=0,rounding_size=0.2",
                                        facecolor=_NODE, edgecolor="#8a9bb8", linewidth=1.0, zorder=0))
            ax.text(min(xs) - 0.33, min(ys) - 0.33, host, ha="left", va="top", fontsize=7, color=TEXT,
                    fontweight="bold", zorder=0.5)
    for g in groups:
        xs, ys = zip(*(pos[r] for r in g))
        bad = set(g) in crossing_sets
        ax.add_patch(FancyBboxPatch((min(xs) - 0.22, min(ys) - 0.22), max(xs) - min(xs) + sq + 0.44,
                                    max(ys) - min(ys) + sq + 0.62, boxstyle="round,pad=0,rounding_size=0.15",
                                    fill=False, edgecolor=_CROSS if bad else "#444444",
                                    linestyle="--" if bad else "-", linewidth=2.0 if bad else 1.3))
    for r in range(n):
        x, y = pos[r]
        ax.add_patch(Rectangle((x, y), sq, sq, facecolor=rank_color(r), edgecolor="none"))
        ax.text(x + sq / 2, y + sq / 2, f"rank {r}", ha="center", va="center", fontsize=8.5, color=text_on(r))
        under = [seq[r] for seq in (hosts, devices) if seq is not None and seq[r]]
        if under:
            ax.text(x + sq / 2, y + sq + 0.05, "\n".join(map(str, under)), ha="center", va="top",
                    fontsize=6.5, color=MUTED, linespacing=1.0)
    dims = " × ".join(f"{nm}={s}" for nm, s in zip(names, shape))
    sub = f"outlined: the {group_dim!r} groups " + ", ".join(str(g) for g in groups)
    if crossing:
        sub += f"\n{len(crossing)} {group_dim!r} group(s) cross hosts (dashed red)"
    if len(shape) == 2:
        sub += f"\nrows: {names[0]} coordinate · columns: {names[1]} coordinate"
    fig.suptitle(title or f"DeviceMesh ({dims})", fontsize=10.5, color=TEXT, y=0.99)
    fig.text(0.5, 0.9, sub, ha="center", va="top", fontsize=7.5, color=MUTED)
    return fig
