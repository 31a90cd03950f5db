"""Megatron's communication operators as autograd Functions, one per role.

Shoeybi et al. 2019, "Megatron-LM: Training Multi-Billion Parameter Language Models
Using Model Parallelism", arXiv:1909.08053, Section 3 and Figure 3: *f* (identity
forward, all-reduce backward) and *g* (all-reduce forward, identity backward), plus
the gather/scatter pair of a column-parallel layer that gathers its output.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from .checks import check_divisible, shard_range, tp_degree_and_rank

__all__ = [
    "CopyToModelParallelRegion", "ReduceFromModelParallelRegion",
    "GatherFromModelParallelRegion", "ScatterToModelParallelRegion",
    "copy_to_tp_region", "reduce_from_tp_region", "gather_from_tp_region",
    "scatter_to_tp_region",
]


def _all_reduce(x, group):
    out = x.contiguous().clone()  # all_reduce is in place: never touch autograd's tensor
    dist.all_reduce(out, group=group)
    return out


def _all_gather_last(x, group):
    x = x.contiguous()
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, x, group=group)  # list form: works on gloo and NCCL
    return torch.cat(parts, dim=-1)


def _split_last(x, group):
    degree, rank = dist.get_world_size(group), dist.get_rank(group)
    start, stop = shard_range(x.shape[-1], degree, rank, name="input last dim")
    return x[..., start:stop].contiguous()


class CopyToModelParallelRegion(torch.autograd.Function):
    """The paper's *f* (Fig. 3a): identity forward, all-reduce backward.

        forward:   X ──┬──> X   (rank 0)       backward:  dX = dX_0 + dX_1 + ... (all-reduce)
                       └──> X   (rank 1) ...
    Every rank uses the full input, so each one's gradient is only a partial sum.
    """

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return _all_reduce(grad, ctx.group), None


class ReduceFromModelParallelRegion(torch.autograd.Function):
    """The paper's *g* (Fig. 3a): all-reduce forward, identity backward.

        forward:   Y_0 + Y_1 + ... + Y_{p-1} = Y on every rank     backward: dY passes through
    Each rank holds a partial sum; the all-reduce completes it.
    """

    @staticmethod
    def forward(ctx, x, group):
        return _all_reduce(x, group)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class GatherFromModelParallelRegion(torch.autograd.Function):
    """All-gather along the last dim forward; split (keep own slice) backward.

        forward:  [Y_0] [Y_1] ... [Y_{p-1}]  ──>  [Y_0 | Y_1 | ... | Y_{p-1}] on every rank
        backward: [dY_0 | dY_1 | ...]        ──>  dY_i on rank i
    """

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _all_gather_last(x, group)

    @staticmethod
    def backward(ctx, grad):
        return _split_last(grad, ctx.group), None


class ScatterToModelParallelRegion(torch.autograd.Function):
    """Split along the last dim forward (keep own slice); all-gather backward.

        forward:  [X_0 | X_1 | ... | X_{p-1}]  ──>  X_i on rank i
        backward: [dX_0] [dX_1] ...            ──>  [dX_0 | dX_1 | ...] on every rank
    """

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _split_last(x, group)

    @staticmethod
    def backward(ctx, grad):
        return _all_gather_last(grad, ctx.group), None


def _apply(fn, x, group):
    degree, _ = tp_degree_and_rank(group)
    return x if degree == 1 else fn.apply(x, group)  # degree 1: no collective at all


def copy_to_tp_region(x, group=None):
    """*f*: identity forward, all-reduce backward."""
    return _apply(CopyToModelParallelRegion, x, group)


def reduce_from_tp_region(x, group=None):
    """*g*: all-reduce forward, identity backward."""
    return _apply(ReduceFromModelParallelRegion, x, group)


def gather_from_tp_region(x, group=None):
    """All-gather along the last dim forward, split backward."""
    return _apply(GatherFromModelParallelRegion, x, group)


def scatter_to_tp_region(x, group=None):
    """Split along the last dim forward, all-gather backward (checks divisibility first)."""
    degree, _ = tp_degree_and_rank(group)
    check_divisible("input last dim", x.shape[-1], degree)
    return _apply(ScatterToModelParallelRegion, x, group)


