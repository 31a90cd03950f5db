"""Megatron-LM tensor parallelism, one small piece at a time.

Shoeybi et al. 2019, "Megatron-LM: Training Multi-Billion Parameter Language Models
Using Model Parallelism", arXiv:1909.08053, Section 3 and Figure 3.

This module needs nothing but torch: the same code runs on ipyparallel engines and in a
torchrun batch job. Every function and layer takes an optional ``group`` (a
``torch.distributed`` ProcessGroup; ``None`` means the world group). The tensor-parallel
degree ``p`` is ``dist.get_world_size(group)`` and this rank's index is
``dist.get_rank(group)``.

User errors (uneven splits, wrong shapes, wrong device) raise ``ValueError``/``TypeError``
*before* any collective, so no rank is left waiting in an all-reduce for a peer that failed.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "CopyToModelParallelRegion", "ReduceFromModelParallelRegion",
    "GatherFromModelParallelRegion", "ScatterToModelParallelRegion",
    "copy_to_tp_region", "reduce_from_tp_region", "gather_from_tp_region",
    "scatter_to_tp_region", "ColumnParallelLinear", "RowParallelLinear",
    "ParallelMLP", "DenseMLP", "shard_range", "check_divisible", "valid_degrees",
    "check_mesh_shape",
    "tp_degree_and_rank",
]


# ----------------------------------------------------------------------------- checks
def valid_degrees(size: int) -> list[int]:
    """All tp degrees that split ``size`` evenly (the divisors of ``size``)."""
    return [d for d in range(1, size + 1) if size % d == 0]


def check_divisible(name: str, size: int, degree: int) -> int:
    """Return ``size // degree``; raise ``ValueError`` naming the fix if it does not divide.

    >>> check_divisible("out_features", 10, 4)
    Traceback (most recent call last):
    ValueError: out_features=10 is not divisible by tp degree 4; pick a degree in {1, 2, 5, 10} or pad out_features to 12
    """
    if size <= 0:
        raise ValueError(f"{name}={size} must be a positive integer")
    if degree <= 0:
        raise ValueError(f"tp degree must be a positive integer, got {degree}")
    if size % degree:
        ok = ", ".join(str(d) for d in valid_degrees(size))
        padded = math.ceil(size / degree) * degree
        raise ValueError(f"{name}={size} is not divisible by tp degree {degree}; "
                         f"pick a degree in {{{ok}}} or pad {name} to {padded}")
    return size // degree


def check_mesh_shape(shape, world_size: int) -> tuple[int, ...]:
    """Refuse a device-mesh shape whose size is not the world size, before any rank builds it.

    >>> check_mesh_shape((2, 4), 4)
    Traceback (most recent call last):
    ValueError: mesh shape (2, 4) needs 8 ranks but world_size is 4; pick (4,) or a 2D shape: (1, 4), (2, 2), (4, 1)
    """
    try:
        dims = tuple(int(d) for d in shape)
    except (TypeError, ValueError):
        raise TypeError(f"mesh shape must be a tuple of ints, got {shape!r}") from None
    if not dims or any(d <= 0 for d in dims):
        raise ValueError(f"mesh shape {dims} must have positive sizes, e.g. ({world_size},)")
    if math.prod(dims) != world_size:
        fits = ", ".join(f"({d}, {world_size // d})" for d in valid_degrees(world_size))
        raise ValueError(f"mesh shape {dims} needs {math.prod(dims)} ranks but world_size is "
                         f"{world_size}; pick ({world_size},) or a 2D shape: {fits}")
    return dims


def shard_range(size: int, degree: int, rank: int, name: str = "size") -> tuple[int, int]:
    """(start, stop) of rank's contiguous slice when ``size`` is split into ``degree`` parts."""
    if not 0 <= rank < degree:
        raise ValueError(f"rank {rank} is outside 0..{degree - 1} for tp degree {degree}")
    n = check_divisible(name, size, degree)
    return rank * n, (rank + 1) * n


def tp_degree_and_rank(group=None) -> tuple[int, int]:
    """(p, rank) of this process inside ``group``; refuses groups it is not part of."""
    if not dist.is_initialized():
        raise RuntimeError("torch.distributed is not initialized; call "
                           "dist.init_process_group(...) (or helpers.connect()) first")
    if group is dist.GroupMember.NON_GROUP_MEMBER:
        raise ValueError(f"this process (global rank {dist.get_rank()}) is not a member of "
                         "the given group; pass the group this rank belongs to")
    degree, rank = dist.get_world_size(group), dist.get_rank(group)
    if degree <= 0 or rank < 0:
        raise ValueError(f"this process (global rank {dist.get_rank()}) is not a member of "
                         f"the given group (rank {rank}, size {degree}); pass its own group")
    return degree, rank


def _check_input(x, last_dim: int, expects: str, weight: torch.Tensor) -> None:
    """Shape, device and dtype checks on a layer input, done before any collective."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"input must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() == 0 or x.shape[-1] != last_dim:
        got = x.shape[-1] if x.dim() else "(none, a scalar)"
        raise ValueError(f"input has last dim {got} but {expects}")
    if x.device != weight.device:
        raise ValueError(f"input is on {x.device} but the weight shard is on {weight.device}; "
                         f"move it with x.to({str(weight.device)!r})")
    if x.dtype != weight.dtype:
        raise ValueError(f"input has dtype {x.dtype} but the weight shard has {weight.dtype}; "
                         f"cast it with x.to({weight.dtype})")


# ------------------------------------------------------------------ the four primitives
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


# ------------------------------------------------------------------------------ layers
def _check_linear(dense, who):
    if not isinstance(dense, nn.Linear):
        raise TypeError(f"{who} needs an nn.Linear, got {type(dense).__name__}")


def _check_features(in_features, out_features):
    for name, v in (("in_features", in_features), ("out_features", out_features)):
        if not isinstance(v, int) or v <= 0:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")


def _init_(w, b, fan_in):
    """nn.Linear's default distribution, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), on a shard."""
    bound = 1 / math.sqrt(fan_in)
    with torch.no_grad():
        w.uniform_(-bound, bound)
        if b is not None:
            b.uniform_(-bound, bound)


class ColumnParallelLinear(nn.Module):
    """Y = X W^T + b with W split along out_features (rows of nn.Linear.weight).

        X (B, D) on every rank ──f──> X @ W_i^T + b_i = Y_i (B, H/p) ──[gather]──> Y (B, H)
        W (H, D) = [W_0; W_1; ...; W_{p-1}],  W_i: (H/p, D),  b_i: (H/p,)

    ``gather_output=False`` leaves Y_i on rank i (what a following RowParallelLinear wants).
    ``out_features`` must be divisible by the tp degree: otherwise ``ValueError`` (e.g.
    "out_features=10 is not divisible by tp degree 4; pick a degree in {1, 2, 5, 10} or
    pad out_features to 12"). Freshly constructed shards are drawn from each rank's own RNG;
    use :meth:`from_linear` to match a dense layer exactly.
    """

    def __init__(self, in_features, out_features, bias=True, gather_output=True,
                 group=None, device=None, dtype=None):
        super().__init__()
        _check_features(in_features, out_features)
        self.group = group
        self.tp_degree, self.tp_rank = tp_degree_and_rank(group)
        self.in_features, self.out_features = in_features, out_features
        self.gather_output = gather_output
        self.out_per_rank = check_divisible("out_features", out_features, self.tp_degree)
        kw = dict(device=device, dtype=dtype)
        self.weight = nn.Parameter(torch.empty(self.out_per_rank, in_features, **kw))  # W_i: (H/p, D)
        self.bias = nn.Parameter(torch.empty(self.out_per_rank, **kw)) if bias else None  # b_i: (H/p,)
        _init_(self.weight, self.bias, in_features)

    @classmethod
    def from_linear(cls, dense, gather_output=True, group=None):
        """This rank's rows of ``dense.weight`` (and slice of ``dense.bias``), copied."""
        _check_linear(dense, "ColumnParallelLinear.from_linear")
        layer = cls(dense.in_features, dense.out_features, bias=dense.bias is not None,
                    gather_output=gather_output, group=group,
                    device=dense.weight.device, dtype=dense.weight.dtype)
        start, stop = shard_range(dense.out_features, layer.tp_degree, layer.tp_rank, "out_features")
        with torch.no_grad():
            layer.weight.copy_(dense.weight[start:stop])
            if layer.bias is not None:
                layer.bias.copy_(dense.bias[start:stop])
        return layer

    def forward(self, x):
        _check_input(x, self.in_features,
                     f"ColumnParallelLinear expects in_features={self.in_features}", self.weight)
        x = copy_to_tp_region(x, self.group)              # X: (..., D) on every rank
        y = F.linear(x, self.weight, self.bias)          # Y_i: (..., H/p)
        return gather_from_tp_region(y, self.group) if self.gather_output else y

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features} "
                f"(shard {self.out_per_rank} on rank {self.tp_rank}/{self.tp_degree}), "
                f"bias={self.bias is not None}, gather_output={self.gather_output}")


class RowParallelLinear(nn.Module):
    """Y = X W^T + b with W split along in_features (columns of nn.Linear.weight).

        X_i (B, H/p) on rank i ──> X_i @ W_i^T = Y_i (B, D), a partial sum ──g──> Y = sum Y_i
        W (D, H) = [W_0 | W_1 | ... | W_{p-1}],  W_i: (D, H/p);  then Y + b, b: (D,) full

    The bias is added once, after the all-reduce (adding it on every rank would count it p
    times). ``input_is_parallel=False`` takes the full X (B, H) and scatters it first.
    ``in_features`` must be divisible by the tp degree: otherwise ``ValueError`` (e.g.
    "in_features=10 is not divisible by tp degree 4; pick a degree in {1, 2, 5, 10} or
    pad in_features to 12").
    """

    def __init__(self, in_features, out_features, bias=True, input_is_parallel=True,
                 group=None, device=None, dtype=None):
        super().__init__()
        _check_features(in_features, out_features)
        self.group = group
        self.tp_degree, self.tp_rank = tp_degree_and_rank(group)
        self.in_features, self.out_features = in_features, out_features
        self.input_is_parallel = input_is_parallel
        self.in_per_rank = check_divisible("in_features", in_features, self.tp_degree)
        kw = dict(device=device, dtype=dtype)
        self.weight = nn.Parameter(torch.empty(out_features, self.in_per_rank, **kw))  # W_i: (D, H/p)
        self.bias = nn.Parameter(torch.empty(out_features, **kw)) if bias else None  # b: (D,) replicated
        _init_(self.weight, self.bias, in_features)

    @classmethod
    def from_linear(cls, dense, input_is_parallel=True, group=None):
        """This rank's columns of ``dense.weight`` and the full ``dense.bias``, copied."""
        _check_linear(dense, "RowParallelLinear.from_linear")
        layer = cls(dense.in_features, dense.out_features, bias=dense.bias is not None,
                    input_is_parallel=input_is_parallel, group=group,
                    device=dense.weight.device, dtype=dense.weight.dtype)
        start, stop = shard_range(dense.in_features, layer.tp_degree, layer.tp_rank, "in_features")
        with torch.no_grad():
            layer.weight.copy_(dense.weight[:, start:stop])
            if layer.bias is not None:
                layer.bias.copy_(dense.bias)
        return layer

    def forward(self, x):
        if self.input_is_parallel:
            _check_input(x, self.in_per_rank, "RowParallelLinear (input_is_parallel=True) expects "
                         f"in_features/p = {self.in_features}/{self.tp_degree} = {self.in_per_rank}",
                         self.weight)
        else:
            _check_input(x, self.in_features,
                         f"RowParallelLinear expects in_features={self.in_features}", self.weight)
            x = scatter_to_tp_region(x, self.group)      # X: (..., H) -> X_i: (..., H/p)
        partial = F.linear(x, self.weight)               # Y_i: (..., D), partial sum, no bias
        y = reduce_from_tp_region(partial, self.group)   # Y: (..., D) on every rank
        return y + self.bias if self.bias is not None else y

    def extra_repr(self):
        return (f"in_features={self.in_features} (shard {self.in_per_rank} on rank "
                f"{self.tp_rank}/{self.tp_degree}), out_features={self.out_features}, "
                f"bias={self.bias is not None}, input_is_parallel={self.input_is_parallel}")


class DenseMLP(nn.Module):
    """The single-device reference: fc1 (D -> H), GELU, fc2 (H -> D)."""

    def __init__(self, d_model, d_hidden, bias=True):
        super().__init__()
        self.fc1 = nn.Linear(d_model, d_hidden, bias=bias)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(d_hidden, d_model, bias=bias)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class ParallelMLP(nn.Module):
    """Megatron's MLP block (paper Fig. 3a): column -> activation -> row.

        X (B, D) ──f──> fc1 column shard ──> Z_i (B, H/p) ──GELU──> ──> fc2 row shard ──g──> Y (B, D)

    The activation is element-wise, so it runs on each shard with no communication. One
    all-reduce in forward (*g*) and one in backward (*f*). ``d_hidden`` must be divisible
    by the tp degree (``ValueError`` otherwise, naming the degrees that work).
    """

    def __init__(self, d_model, d_hidden, bias=True, activation=None, group=None,
                 device=None, dtype=None):
        super().__init__()
        check_divisible("d_hidden", d_hidden, tp_degree_and_rank(group)[0])
        kw = dict(bias=bias, group=group, device=device, dtype=dtype)
        self.fc1 = ColumnParallelLinear(d_model, d_hidden, gather_output=False, **kw)
        self.act = activation if activation is not None else nn.GELU()
        self.fc2 = RowParallelLinear(d_hidden, d_model, input_is_parallel=True, **kw)

    @classmethod
    def from_dense(cls, fc1, fc2, activation=None, group=None):
        """Shard two dense layers (e.g. ``DenseMLP.fc1``, ``.fc2``) onto this rank."""
        _check_linear(fc1, "ParallelMLP.from_dense (fc1)")
        _check_linear(fc2, "ParallelMLP.from_dense (fc2)")
        if fc1.out_features != fc2.in_features:
            raise ValueError(f"fc1.out_features={fc1.out_features} must equal "
                             f"fc2.in_features={fc2.in_features}")
        check_divisible("d_hidden", fc1.out_features, tp_degree_and_rank(group)[0])
        mlp = cls.__new__(cls)
        nn.Module.__init__(mlp)
        mlp.fc1 = ColumnParallelLinear.from_linear(fc1, gather_output=False, group=group)
        mlp.act = activation if activation is not None else nn.GELU()
        mlp.fc2 = RowParallelLinear.from_linear(fc2, input_is_parallel=True, group=group)
        return mlp

    def forward(self, x):
        z = self.fc1(x)                                  # Z_i: (..., H/p), no communication yet
        return self.fc2(self.act(z))                     # Y: (..., D) after one all-reduce
