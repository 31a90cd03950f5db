"""Drawings for the notebook kernel, by audience (see helpers/README.md).

* :mod:`helpers.viz.figure` -- the contract: rank colours, PNG output, colour counting;
* :mod:`helpers.viz.schematic` -- layouts for learning (no real data), the layout explorer;
* :mod:`helpers.viz.data` -- drawings of real shards, FLOP/s and the cluster map;
* :mod:`helpers.viz.dtensor` -- DTensors' real shards by rank, collectives per module;
* :mod:`helpers.viz.mesh` -- the DeviceMesh map (groups, hosts, devices);
* :mod:`helpers.viz.costs` -- memory per rank, what fits a GPU, training curves, collective times.

``from helpers.viz import layout_explorer, shard_figure, ...`` keeps working.
"""

from .costs import MEMORY_COLORS, comm_bars, fit_grid, memory_bars, training_curves
from .data import cluster_map, plot_flops, shard_figure
from .dtensor import comm_chart, draw_dtensor
from .figure import (
                     RANK_COLORS,
                     RANK_COLORS_HEX,
                     REPLICATED_GREY,
                     TPFigure,
                     count_rank_colors,
                     figure_to_png,
                     figure_to_rgba,
                     rank_color,
)
from .mesh import mesh_map
from .schematic import MODES, LayoutExplorer, layout_explorer, layout_figure

__all__ = [
    "RANK_COLORS", "RANK_COLORS_HEX", "TPFigure", "REPLICATED_GREY", "MODES", "rank_color",
    "count_rank_colors", "figure_to_png", "figure_to_rgba", "layout_figure", "layout_explorer",
    "LayoutExplorer", "shard_figure", "plot_flops", "cluster_map", "draw_dtensor", "comm_chart", "mesh_map",
    "MEMORY_COLORS", "memory_bars", "fit_grid", "training_curves", "comm_bars",
]
