"""Drawings of real data from the engines, by rank (rank 0 first): shards, FLOP/s, the cluster map."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import FancyBboxPatch, Rectangle

from ..common.placements import parse_placement, placement_text
from ..reference.compare import as_shard_list, to_f64
from .figure import MAX_DEGREE, MUTED, TEXT, grey_panel, grid_lines, new_axes, new_figure, rank_color, text_on, to_2d

__all__ = ["shard_figure", "plot_flops", "cluster_map"]


def _grid(ax, rows: int, cols: int) -> None:
    if rows <= 32 and cols <= 32:  # more cells: the lines would hide them
        grid_lines(ax, -0.5, -0.5, rows, cols, lw=0.4)


def shard_figure(shards: Sequence, layout: str, name: str = "W", dense_shape=None) -> Figure:
    """Draw the actual per-rank values pulled from the engines.

    ``Shard(d)``: each rank's block sits at its place in the full tensor; values in a grey
    colormap (shared scale), a thick ``RANK_COLORS[r]`` border around rank r's block and the
    label ``rank r: (4, 16)``. ``Replicate()`` / ``Partial()``: one panel per rank (every rank has a
    full-size tensor), framed in the rank's colour; ``Partial()`` adds the Σ panel.
    1-D tensors are drawn as 1×N; >2-D tensors are flattened to (prod(leading dims), last dim)
    (sharding must then be along the first or last dim). ``dense_shape``, if given, is checked
    against the reassembled shape and stated in the title.
    """

    kind, dim = parse_placement(layout)
    pieces = [to_f64(s, f"{name}: shard of rank {r}").numpy() for r, s in enumerate(as_shard_list(shards))]
    p = len(pieces)
    if p == 0:
        raise ValueError("shards is empty: expected one tensor per rank")
    if p > MAX_DEGREE:
        raise ValueError(f"shard_figure draws up to {MAX_DEGREE} ranks, got {p}")
    allv = np.concatenate([a[np.isfinite(a)] for a in pieces])  # the finite values, 1-D
    vmin, vmax = (float(allv.min()), float(allv.max())) if allv.size else (0.0, 0.0)
    if vmin == vmax:
        vmin, vmax = vmin - 1.0, vmax + 1.0

    if kind == "shard":
        fig, shape, note = _shard_blocks(pieces, dim, vmin, vmax)
    else:
        fig, shape, note = _shard_panels(pieces, kind, vmin, vmax)
    title = f"{name}: {placement_text(kind, dim)} over {p} rank{'s' if p != 1 else ''}{note}"
    if dense_shape is not None:
        ds = tuple(int(s) for s in dense_shape)
        title += "  = dense" if ds == shape else f"  ≠ dense {ds}!"
    fig.suptitle(title, fontsize=10, color=TEXT)
    return fig


def _shard_blocks(pieces, dim, vmin, vmax):
    """Each rank's block at its place in the full tensor: ``fig``, the full shape, the title's note."""
    nd = pieces[0].ndim
    if nd == 0 or any(a.ndim != nd for a in pieces):
        raise ValueError(f"layout Shard({dim}): shards must all have the same number (>= 1) of dims; "
                         f"got shapes {[a.shape for a in pieces]}")
    if not -nd <= dim < nd:
        raise ValueError(f"layout Shard({dim}): dim out of range for {nd}-d shards")
    d = dim % nd
    if nd > 2 and d not in (0, nd - 1):
        raise ValueError(f"shard_figure draws >2-d tensors flattened to 2-d, so the shard dim must be "
                         f"the first or last; got Shard({dim}) of {nd}-d shards")
    horizontal = d == nd - 1  # 1-d shards too: drawn as 1×N
    try:
        full = np.concatenate(pieces, axis=d)
    except ValueError:
        raise ValueError(f"layout Shard({dim}): shard shapes do not fit together: "
                         f"{[tuple(a.shape) for a in pieces]}") from None
    rows, cols = to_2d(full).shape  # flattened, each rank's block stays contiguous (d is the first or last dim)

    w = min(11.0, max(4.5, 0.32 * cols + 2.5))
    h = min(8.0, max(2.4, 0.32 * rows + 1.8))
    fig = new_figure(w, h)
    ax = fig.add_axes([0.08, 0.1, 0.72, 0.72] if horizontal else [0.06, 0.1, 0.62, 0.72])
    im = ax.imshow(to_2d(full), cmap="Greys_r", vmin=vmin, vmax=vmax, interpolation="nearest", aspect="auto")
    _grid(ax, rows, cols)
    start = 0
    for r, a in enumerate(pieces):
        br, bc = to_2d(a).shape
        x0, y0 = (start - 0.5, -0.5) if horizontal else (-0.5, start - 0.5)
        inset = 0.08  # the frame inside the block, so neighbours' frames do not overlap
        ax.add_patch(Rectangle((x0 + inset, y0 + inset), bc - 2 * inset, br - 2 * inset, fill=False,
                               edgecolor=rank_color(r), linewidth=4, clip_on=False, zorder=3))
        label = f"rank {r}: {a.shape}"
        if horizontal:
            ax.text(x0 + bc / 2, -0.5 - 0.02 * rows - 0.3, label, ha="center", va="bottom", fontsize=8,
                    color=TEXT, rotation=0 if bc >= 4 or len(pieces) <= 2 else 30, clip_on=False)
        else:
            ax.text(cols - 0.5 + 0.3 + 0.02 * cols, y0 + br / 2, label, ha="left", va="center",
                    fontsize=8, color=TEXT, clip_on=False)
        start += bc if horizontal else br
    ax.axis("off")
    fig.colorbar(im, cax=fig.add_axes([0.86 if horizontal else 0.9, 0.1, 0.025, 0.72]))
    return fig, full.shape, f", full shape {full.shape}"


def _shard_panels(pieces, kind, vmin, vmax):
    """One full-size panel per rank (and Σ for ``Partial()``): ``fig``, the shape, the title's note."""
    if len({a.shape for a in pieces}) != 1:
        raise ValueError(f"layout {placement_text(kind)}: every rank should hold a full-size tensor of one shape; "
                         f"got {[tuple(a.shape) for a in pieces]}")
    panels = [(f"rank {r}: {'partial ' if kind == 'partial' else ''}{tuple(a.shape)}", a, rank_color(r), 5)
              for r, a in enumerate(pieces)]  # (title, values, frame colour, frame width)
    if kind == "partial":
        total = np.sum(pieces, axis=0)
        panels.append((f"Σ over ranks: {tuple(total.shape)}", total, TEXT, 1.5))
        vmin, vmax = min(vmin, float(np.nanmin(total))), max(vmax, float(np.nanmax(total)))
    ncols = min(len(panels), 4)
    nrows = math.ceil(len(panels) / ncols)
    rows, cols = to_2d(pieces[0]).shape
    pw = 2.6
    ph = min(3.0, max(0.9, pw * rows / max(cols, 1)))
    fig = new_figure(ncols * pw + 1.0, nrows * (ph + 0.6) + 0.7)
    gs = fig.add_gridspec(nrows, ncols, left=0.04, right=0.88, top=1 - 0.6 / fig.get_figheight(),
                          bottom=0.04, wspace=0.15, hspace=0.45)
    for i, (label, a, color, lw) in enumerate(panels):
        ax = fig.add_subplot(gs[i // ncols, i % ncols])
        im = grey_panel(ax, to_2d(a), color, label, lw=lw, vmin=vmin, vmax=vmax)
        _grid(ax, rows, cols)  # every panel has the shape of pieces[0]
    shape = tuple(pieces[0].shape)
    note = f", each {shape}"
    if kind == "replicate":
        worst = max(float(np.nanmax(np.abs(a - pieces[0]))) if a.size else 0.0 for a in pieces)
        note += "  (all copies identical)" if worst == 0 else f"  (copies differ: max |Δ| {worst:.1e})"
    fig.colorbar(im, cax=fig.add_axes([0.91, 0.1, 0.02, 0.75]))
    return fig, shape, note


# --------------------------------------------------------------------------------------------
# FLOP/s
# --------------------------------------------------------------------------------------------


def plot_flops(degrees: Sequence[int], flops, title: str = "Achieved GFLOP/s vs TP degree") -> Figure:
    """Achieved GFLOP/s against TP degree, with the ideal linear-scaling line.

    ``flops``: one value per degree (GFLOP/s), or a ``{label: values}`` dict for several series
    (e.g. per matrix size). The ideal line extends the first point linearly
    (``flops[0] · degree / degrees[0]``); each point is annotated with its % of that ideal.
    """
    degrees = [int(d) for d in degrees]
    if not degrees:
        raise ValueError("degrees is empty")
    series = {label: np.asarray(list(vals), dtype=float)
              for label, vals in (flops.items() if isinstance(flops, dict) else [("measured", flops)])}
    for label, v in series.items():
        if len(v) != len(degrees):
            raise ValueError(f"series {label!r} has {len(v)} values for {len(degrees)} degrees")
    fig, ax = new_axes(6.4, 4.0)
    markers = ["o", "s", "^", "D", "v", "P"]
    greys = ["#111111", "#555555", "#888888", "#333333", "#777777", "#999999"]
    for i, (label, v) in enumerate(series.items()):
        ax.plot(degrees, v, marker=markers[i % 6], color=greys[i % 6], lw=1.8, label=label)
        if np.isfinite(v[0]) and v[0] > 0:  # v has one value per degree, and degrees is not empty
            ideal_v = v[0] * np.asarray(degrees, dtype=float) / degrees[0]
            ax.plot(degrees, ideal_v, ls="--", color=greys[i % 6], lw=1.0, alpha=0.6,
                    label=f"ideal (linear from degree {degrees[0]})" if len(series) == 1 else None)
            for d, y, yi in zip(degrees, v, ideal_v):
                if np.isfinite(y) and yi > 0:
                    ax.annotate(f"{100 * y / yi:.0f}%", (d, y), textcoords="offset points",
                                xytext=(0, 7), ha="center", fontsize=7.5, color=MUTED)
    ax.set_xticks(degrees)
    ax.set_xlabel("TP degree (ranks sharing the layer)")
    ax.set_ylabel("achieved GFLOP/s (all ranks)")
    ax.set_ylim(bottom=0)
    ax.set_title(title, fontsize=11)
    ax.grid(True, color="#dddddd", lw=0.6)
    ax.legend(fontsize=8, frameon=False)
    return fig


# --------------------------------------------------------------------------------------------
# cluster map
# --------------------------------------------------------------------------------------------


def cluster_map(infos) -> Figure:
    """Which rank sits on which host and device: a box per host, its ranks inside.

    infos: one dict per rank (a list, or ``{rank: dict}``) with keys ``rank``, ``host``,
    ``device``, ``backend`` (missing keys are shown as "?").
    """
    items = sorted(infos.items()) if isinstance(infos, dict) else enumerate(infos)
    infos = sorted(({"rank": k, **info} for k, info in items), key=lambda d: int(d["rank"]))  # a "rank" key wins
    if not infos:
        raise ValueError("infos is empty: expected one dict per rank")
    hosts: dict[str, list[dict]] = {}
    for info in infos:
        hosts.setdefault(str(info.get("host", "?")), []).append(info)
    backends = sorted({str(i.get("backend", "?")) for i in infos})

    per_row = 4
    sq, gap, pad = 1.3, 0.35, 0.35
    boxes = []
    x = 0.0
    for host, ranks in hosts.items():
        ncol = min(per_row, len(ranks))
        nrow = math.ceil(len(ranks) / per_row)
        bw = max(pad * 2 + ncol * sq + (ncol - 1) * gap, 0.14 * len(host) + 0.6)  # the ranks, or the host's name
        bh = pad + 0.55 + nrow * (sq + 0.4) + (nrow - 1) * gap * 0.5 + 0.25
        boxes.append((host, ranks, x, bw, bh, ncol))
        x += bw + 0.6
    max_h = max(b[4] for b in boxes)
    data_w = x - 0.6
    unit = min(0.8, 11.0 / data_w)
    fig = new_figure(max(4.0, data_w * unit + 0.6), max_h * unit + 1.0)
    ax = fig.add_axes([0.3 / (data_w * unit + 0.6), 0.04, data_w * unit / (data_w * unit + 0.6), 0.8],
                      xlim=(-0.1, data_w + 0.1), ylim=(max_h + 0.1, -0.1), aspect="equal")
    ax.set_axis_off()
    for host, ranks, x0, bw, bh, ncol in boxes:
        ax.add_patch(FancyBboxPatch((x0, 0), bw, bh, boxstyle="round,pad=0,rounding_size=0.2",
                                    facecolor="#f4f4f4", edgecolor="#444444", linewidth=1.2))
        ax.text(x0 + pad, pad, host, ha="left", va="top", fontsize=10, color=TEXT, fontweight="bold")
        for k, info in enumerate(ranks):
            r = int(info["rank"])
            cx = x0 + pad + (k % ncol) * (sq + gap)
            cy = pad + 0.55 + (k // per_row) * (sq + 0.5 + gap * 0.5)
            ax.add_patch(Rectangle((cx, cy), sq, sq, facecolor=rank_color(r), edgecolor="none"))
            ax.text(cx + sq / 2, cy + sq / 2, f"rank\n{r}", ha="center", va="center", fontsize=9,
                    color=text_on(r), linespacing=1.1)
            dev = str(info.get("device", "?"))
            if len(backends) > 1:
                dev += f"\n{info.get('backend', '?')}"
            ax.text(cx + sq / 2, cy + sq + 0.06, dev, ha="center", va="top", fontsize=7.5, color=MUTED)
    n = len(infos)
    fig.suptitle(f"{n} rank{'s' if n != 1 else ''} on {len(hosts)} host{'s' if len(hosts) != 1 else ''}"
                 f"  ·  backend {', '.join(backends)}", fontsize=11, color=TEXT)
    return fig
