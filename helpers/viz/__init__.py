"""Drawings for the notebook kernel; which module draws what, by notebook: helpers/README.md.

``from helpers.viz import layout_explorer, shard_figure, ...`` keeps working; each module is loaded
on first use (PEP 562), so a torch-free one (``helpers.viz.calculator``) imports without torch.
"""

from ..common.lazy import lazy_exports

_EXPORTS = {
    ".costs": ("MEMORY_COLORS", "comm_bars", "fit_grid", "memory_bars", "training_curves"),
    ".data": ("cluster_map", "plot_flops", "shard_figure"),
    ".dtensor": ("comm_chart", "draw_dtensor"),
    ".figure": ("RANK_COLORS", "REPLICATED_GREY", "TPFigure", "count_rank_colors",
                "figure_to_png", "figure_to_rgba", "rank_color"),
    ".grid2d": ("GRID_MODES", "GridLayoutExplorer", "SummaStepper", "comm_time_figure",
                "grid_blocks_figure", "grid_layout_explorer", "grid_layout_figure", "mlp_bytes_figure",
                "mlp_crossover_figure", "summa_step_figure", "summa_stepper"),
    ".inference": ("alpha_beta_figure", "cache_figure", "prefill_decode_figure", "shared_device_note"),
    ".lm": ("plot_activation_memory", "plot_bytes", "plot_collectives", "plot_loss_curves", "sp_dataflow_figure"),
    ".mesh": ("mesh_map",),
    ".schematic": ("MODES", "LayoutExplorer", "layout_explorer", "layout_figure"),
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
