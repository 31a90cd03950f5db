"""Drawings of DTensors and of the collectives they ran: the real shards (what
``cluster.pull_dtensor`` returned), the comm trace."""

from __future__ import annotations

import math

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from .figure import MUTED, TEXT, grid_lines, new_axes, new_figure, rank_color, text_on

__all__ = ["draw_dtensor", "comm_chart"]

_MAX_VALUES = 64  # print the numbers in the cells when the tensor has at most this many


def draw_dtensor(view, title: str | None = None) -> Figure:
    """One panel per rank, placed as on the mesh: the global tensor, rank r's cells in its colour.

    view: a :class:`helpers.reference.dtensor.DTensorView`. 1-D tensors are drawn as 1×N. The
    numbers of the rank's local shard are written in its cells when the tensor is small (at most
    64 cells). An empty shard (uneven split) leaves its panel blank.
    """
    shape = tuple(view.shape)
    if len(shape) not in (1, 2):
        raise ValueError(f"draw_dtensor draws 1-D and 2-D tensors; {view.name} has shape {shape}")
    rows_t, cols_t = (1, shape[0]) if len(shape) == 1 else shape
    if len(view.mesh_shape) not in (1, 2):
        raise ValueError(f"draw_dtensor draws DTensors on 1-D and 2-D meshes; this one is {tuple(view.mesh_shape)}")
    # the panels placed as the ranks on the mesh; a 1-D mesh in rows of at most 4
    ncol = min(view.mesh_shape[0], 4) if len(view.mesh_shape) == 1 else view.mesh_shape[1]
    nrow = math.ceil(view.world_size / ncol)
    values = rows_t * cols_t <= _MAX_VALUES
    cell = min(0.42, 2.6 / max(cols_t, 1), 2.2 / max(rows_t, 1))
    pw, ph = max(cols_t * cell, 1.2), max(rows_t * cell, 0.4)
    names = f" ({', '.join(f'{n}={s}' for n, s in zip(view.mesh_dim_names, view.mesh_shape))})" \
        if view.mesh_dim_names else f" {tuple(view.mesh_shape)}"
    head = f"{title or view.name}: ({', '.join(view.placements)}) on mesh{names}, global {shape}"
    fig = new_figure(max(ncol * (pw + 0.5) + 0.4, 0.085 * len(head) + 0.6), nrow * (ph + 0.75) + 0.7)
    gs = fig.add_gridspec(nrow, ncol, left=0.03, right=0.97, bottom=0.04,
                          top=1 - 0.6 / fig.get_figheight(), wspace=0.25, hspace=0.55)
    partial = any(kind == "partial" for kind, _ in view.kinds)
    for r in range(view.world_size):
        c = view.coordinates[r]
        ax = fig.add_subplot(gs[divmod(c[0], ncol) if len(view.mesh_shape) == 1 else tuple(c)],
                             xlim=(0, cols_t), ylim=(rows_t, 0), aspect="equal")
        ax.set_axis_off()
        # rank r's rows and columns of the global tensor (a 1-D tensor is one row)
        (r0, r1), (c0, c1) = [(s.start, s.stop) for s in [slice(0, 1), *view.region(r)][-2:]]
        local = view.local_shards[r].detach().double().reshape(r1 - r0, c1 - c0).numpy() if r1 > r0 and c1 > c0 else None
        grid_lines(ax, 0, 0, rows_t, cols_t, "#dddddd")
        if local is not None:
            ax.add_patch(Rectangle((c0, r0), c1 - c0, r1 - r0, facecolor=rank_color(r), edgecolor="none"))
            grid_lines(ax, c0, r0, r1 - r0, c1 - c0)  # white over the grey: lines are drawn above patches
            if values:
                for (a, b), v in np.ndenumerate(local):
                    ax.text(c0 + b + 0.5, r0 + a + 0.5, f"{v:.1f}", ha="center", va="center", fontsize=6.5,
                            color=text_on(r))
        ax.add_patch(Rectangle((0, 0), cols_t, rows_t, fill=False, edgecolor="#999999", lw=1.0, clip_on=False,
                               zorder=4))
        note = " empty" if local is None else (" partial Σ" if partial else "")
        where = f" {tuple(c)}" if len(view.mesh_shape) > 1 else ""
        ax.set_title(f"rank {r}{where}: local {tuple(view.local_shards[r].shape)}{note}", fontsize=8, color=TEXT)
    fig.suptitle(head, fontsize=10, color=TEXT)
    return fig


# --------------------------------------------------------------------------------------------
# the comm trace
# --------------------------------------------------------------------------------------------

_OP_GREYS = {"all_reduce": "#333333", "all_gather": "#777777", "reduce_scatter": "#aaaaaa",
             "all_to_all": "#555555"}


def _short_names(modules: list[str], keep_root: bool = False) -> list[str]:
    """Module paths without the model's class name: ``"Block.attn.q" -> "attn.q"``; the model itself
    becomes ``"Block (whole)"`` (or ``""`` with ``keep_root``, as ``named_modules()`` calls it)."""
    roots = {m.split(".")[0] for m in modules}
    if len(roots) != 1:
        return modules
    root = roots.pop()
    whole = "" if keep_root else f"{root} (whole)"
    return [m[len(root) + 1:] if m != root else whole for m in modules]


def comm_chart(trace: dict, title: str = "Collectives per module", order=None) -> Figure:
    """Horizontal bars: for each module, its collectives in the forward (solid) and backward (hatched).

    trace: ``{module: {"forward": {"all_reduce": 1}, "backward": {...}}}`` as returned by
    :func:`helpers.measure.comm.comm_trace` (pull it from one rank). Counts include the module's
    children (a block counts its layers' collectives).
    order: module names in the order to draw them, e.g. ``[n for n, _ in model.named_modules()]``
    ("" is the whole model); default: sorted by name.
    """
    modules = sorted(trace)
    if order is not None:
        rank_of = {name: i for i, name in enumerate(order)}
        short = dict(zip(modules, _short_names(modules, keep_root=True)))
        modules.sort(key=lambda m: rank_of.get(short[m], len(rank_of)))
    if not modules:
        raise ValueError("the trace is empty: run the forward and backward inside `with CommDebugMode() as comm:`")
    ops = sorted({op for m in modules for p in ("forward", "backward") for op in trace[m].get(p, {})})
    colors = [_OP_GREYS.get(op, "#888888") for op in ops]
    fig, ax = new_axes(7.0, 0.55 * len(modules) + 1.4)
    h, xmax = 0.38, 1
    for k, m in enumerate(modules):
        for off, p, hatch in ((-h / 2, "forward", None), (h / 2, "backward", "////")):
            n = [trace[m].get(p, {}).get(op, 0) for op in ops]  # one bar per op, end to end
            total = sum(n)
            ax.barh(k + off, n, left=np.cumsum([0] + n[:-1]), height=h, color=colors, hatch=hatch,
                    edgecolor="white", linewidth=0.5)
            if total:
                ax.text(total + 0.05, k + off, f"{total} {'fwd' if p == 'forward' else 'bwd'}", va="center",
                        fontsize=7.5, color=MUTED)
            xmax = max(xmax, total)
    ax.set_yticks(range(len(modules)), _short_names(modules), fontsize=8.5)
    ax.invert_yaxis()
    ax.set_xlabel("collectives (count)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_title(title, fontsize=11, color=TEXT)
    handles = [Patch(facecolor=c, label=op) for op, c in zip(ops, colors)]
    handles += [Patch(facecolor="white", edgecolor="#555555", label="forward"),
                Patch(facecolor="white", edgecolor="#555555", hatch="////", label="backward")]
    ax.legend(handles=handles, fontsize=8, frameon=False, loc="lower right")
    ax.grid(True, axis="x", color="#dddddd", lw=0.6)
    ax.set_xlim(0, xmax + 1.2)
    return fig
