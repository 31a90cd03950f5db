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

from ..common.lazy import lazy_exports

# Loaded on first use (PEP 562): ``import helpers.tp`` does not import torch until a name is used.
_EXPORTS = {
    ".checks": ("check_divisible", "check_mesh_shape", "shard_range", "tp_degree_and_rank"),
    ".layers": ("ColumnParallelLinear", "ParallelMLP", "RowParallelLinear"),
    ".mesh": ("TPLayoutWarning", "check_placements", "check_tp_in_node", "mesh_groups", "tp_groups_across_hosts",
              "warn_if_tp_crosses_hosts"),
    ".ops": ("CopyToModelParallelRegion", "GatherFromModelParallelRegion", "ReduceFromModelParallelRegion",
             "ScatterToModelParallelRegion", "copy_to_tp_region", "gather_from_tp_region",
             "reduce_from_tp_region", "scatter_to_tp_region"),
    ".plan": ("check_plan",),
    ".vocab": ("VocabParallelEmbedding", "pad_embedding", "vocab_mask"),
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
