"""The course's cost model: pure Python (the standard library and :mod:`helpers.common`), no torch.

* :mod:`.dims` -- a transformer's shapes, the precisions, how ranks share it (``Setup``);
* :mod:`.collectives` -- the ONE byte convention (n = bytes of the full tensor; bytes sent per
  rank), the alpha-beta time, the link fit, TP's collectives per block, 1D vs 2D layouts;
* :mod:`.memory` -- parameters, gradients, optimizer state and activations per rank;
* :mod:`.flops` -- a block's FLOPs;
* :mod:`.hardware` -- Derecho's nodes and links and the reference efficiency table, with sources;
* :mod:`.calculator` -- notebook 06's "does my model need TP?" plan.
"""

from .calculator import CalculatorInputs, DegreeRow, Plan, check_inputs, derecho_inputs, interpolate_efficiency, plan
from .collectives import (
    COMM_FORMULAS,
    bytes_1d_column,
    bytes_1d_row,
    bytes_received,
    bytes_sent,
    bytes_summa,
    collective_time,
    fit_link,
    grid_side,
    tp_bytes_per_layer,
    tp_collectives_per_layer,
    tp_comm_time_per_layer,
)
from .dims import (
    LLAMA2_7B,
    LLAMA2_13B,
    LLAMA2_70B,
    PRECISIONS,
    PRESETS,
    REAL_MODELS,
    SETUPS,
    TINY,
    ModelDims,
    Precision,
    Setup,
    check_setup,
    layer_param_specs,
    param_count,
)
from .flops import block_flops
from .hardware import DERECHO, REFERENCE, REFERENCE_SHAPE, REFERENCE_SOURCE, Link, reference_curve, tp_link
from .memory import (
    MemoryBreakdown,
    activation_elements_per_layer,
    block_activation_bytes,
    layers_that_fit,
    memory_per_rank,
    param_bytes,
    param_elements_per_rank,
)

__all__ = [
    "CalculatorInputs", "DegreeRow", "Plan", "check_inputs", "derecho_inputs", "interpolate_efficiency", "plan",
    "COMM_FORMULAS", "bytes_1d_column", "bytes_1d_row", "bytes_received", "bytes_sent", "bytes_summa",
    "collective_time", "fit_link", "grid_side", "tp_bytes_per_layer", "tp_collectives_per_layer",
    "tp_comm_time_per_layer", "LLAMA2_7B", "LLAMA2_13B", "LLAMA2_70B", "PRECISIONS", "PRESETS", "REAL_MODELS",
    "SETUPS", "TINY", "ModelDims", "Precision", "Setup", "check_setup", "layer_param_specs", "param_count",
    "block_flops", "DERECHO", "REFERENCE", "REFERENCE_SHAPE", "REFERENCE_SOURCE", "Link", "reference_curve",
    "tp_link", "MemoryBreakdown", "activation_elements_per_layer", "block_activation_bytes", "layers_that_fit",
    "memory_per_rank", "param_bytes", "param_elements_per_rank",
]
