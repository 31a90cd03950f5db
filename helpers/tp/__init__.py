"""Megatron-LM tensor parallelism, one small piece at a time.

Shoeybi et al. 2019, "Megatron-LM: Training Multi-Billion Parameter Language Models
Using Model Parallelism", arXiv:1909.08053, Section 3 and Figure 3.

This package needs nothing but torch: the same code runs on ipyparallel engines and in a
torchrun batch job. Every function and layer takes an optional ``group`` (a
``torch.distributed`` ProcessGroup; ``None`` means the world group). The tensor-parallel
degree ``p`` is ``dist.get_world_size(group)`` and this rank's index is
``dist.get_rank(group)``.

User errors (uneven splits, wrong shapes, wrong device) raise ``ValueError``/``TypeError``
*before* any collective, so no rank is left waiting in an all-reduce for a peer that failed.
"""

from __future__ import annotations

from .checks import check_divisible, check_mesh_shape, shard_range, tp_degree_and_rank, valid_degrees
from .layers import ColumnParallelLinear, ParallelMLP, RowParallelLinear
from .mesh import (
    TPLayoutWarning,
    check_placements,
    check_tp_in_node,
    mesh_groups,
    tp_groups_across_hosts,
    warn_if_tp_crosses_hosts,
)
from .ops import (
    CopyToModelParallelRegion,
    GatherFromModelParallelRegion,
    ReduceFromModelParallelRegion,
    ScatterToModelParallelRegion,
    copy_to_tp_region,
    gather_from_tp_region,
    reduce_from_tp_region,
    scatter_to_tp_region,
)
from .plan import check_plan
from .vocab import VocabParallelEmbedding, pad_embedding, vocab_mask

__all__ = [
    "CopyToModelParallelRegion", "ReduceFromModelParallelRegion",
    "GatherFromModelParallelRegion", "ScatterToModelParallelRegion",
    "copy_to_tp_region", "reduce_from_tp_region", "gather_from_tp_region",
    "scatter_to_tp_region", "ColumnParallelLinear", "RowParallelLinear",
    "ParallelMLP", "shard_range", "check_divisible", "valid_degrees",
    "check_mesh_shape",
    "tp_degree_and_rank", "check_plan", "mesh_groups", "tp_groups_across_hosts", "check_tp_in_node",
    "warn_if_tp_crosses_hosts", "TPLayoutWarning", "check_placements",
    "VocabParallelEmbedding", "pad_embedding", "vocab_mask",
]

