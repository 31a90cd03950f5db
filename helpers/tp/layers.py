"""Column-parallel, row-parallel and the Megatron MLP, each built from a dense layer.

``from_linear`` / ``from_dense`` split one master weight, so the dense reference and
the TP layer start from identical numbers (parity by construction).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .checks import check_divisible, check_input, check_module, tp_degree_and_rank
from .ops import copy_to_tp_region, gather_from_tp_region, reduce_from_tp_region, scatter_to_tp_region

__all__ = ["ColumnParallelLinear", "RowParallelLinear", "ParallelMLP"]


class _ShardedLinear(nn.Module):
    """What both halves share: a weight split along ``split`` (``"out_features"``: its rows,
    ``"in_features"``: its columns), drawn like ``nn.Linear``'s or copied from a dense layer."""

    split = ""

    def _shard(self, in_features, out_features, bias, group, device, dtype) -> int:
        super().__init__()
        for name, v in (("in_features", in_features), ("out_features", out_features)):
            if not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        self.group = group
        self.tp_degree, self.tp_rank = tp_degree_and_rank(group)
        self.in_features, self.out_features = in_features, out_features
        per_rank = check_divisible(self.split, getattr(self, self.split), self.tp_degree)
        column = self.split == "out_features"
        kw = dict(device=device, dtype=dtype)
        # column: W_i (H/p, D), b_i (H/p,); row: W_i (D, H/p), b (D,) replicated
        self.weight = nn.Parameter(torch.empty(*((per_rank, in_features) if column else (out_features, per_rank)), **kw))
        self.bias = nn.Parameter(torch.empty(per_rank if column else out_features, **kw)) if bias else None
        bound = 1 / math.sqrt(in_features)            # nn.Linear's default U(-1/√fan_in, 1/√fan_in), on a shard
        for t in self.parameters():                   # the weight, and the bias if there is one
            nn.init.uniform_(t, -bound, bound)
        return per_rank

    @classmethod
    def from_linear(cls, dense, **kw):
        """This rank's shard of ``dense`` copied (column: its rows of the weight and slice of the
        bias; row: its columns and the full bias); ``kw``: the layer's own (``group=``, ...)."""
        check_module(dense, nn.Linear, f"{cls.__name__}.from_linear")
        layer = cls(dense.in_features, dense.out_features, bias=dense.bias is not None,
                    device=dense.weight.device, dtype=dense.weight.dtype, **kw)
        dim = 0 if cls.split == "out_features" else 1          # column: rows of the weight; row: its columns
        with torch.no_grad():                                 # cls() has checked that the tp degree divides it
            layer.weight.copy_(dense.weight.chunk(layer.tp_degree, dim)[layer.tp_rank])
            if layer.bias is not None:
                layer.bias.copy_(dense.bias.chunk(layer.tp_degree)[layer.tp_rank] if dim == 0 else dense.bias)
        return layer


class ColumnParallelLinear(_ShardedLinear):
    """Y = X W^T + b with W split along out_features (rows of nn.Linear.weight).

        X (B, D) on every rank ──f──> X @ W_i^T + b_i = Y_i (B, H/p) ──[gather]──> Y (B, H)
        W (H, D) = [W_0; W_1; ...; W_{p-1}],  W_i: (H/p, D),  b_i: (H/p,)

    ``gather_output=False`` leaves Y_i on rank i (what a following RowParallelLinear wants).
    ``out_features`` must be divisible by the tp degree (:func:`~helpers.tp.checks.check_divisible`'s
    ``ValueError`` otherwise). Freshly constructed shards are drawn from each rank's own RNG;
    use :meth:`from_linear` to match a dense layer exactly.
    """

    split = "out_features"

    def __init__(self, in_features, out_features, bias=True, gather_output=True,
                 group=None, device=None, dtype=None):
        self.out_per_rank = self._shard(in_features, out_features, bias, group, device, dtype)
        self.gather_output = gather_output

    def forward(self, x):
        check_input(x, self.in_features,
                     f"ColumnParallelLinear expects in_features={self.in_features}", self.weight)
        x = copy_to_tp_region(x, self.group)              # X: (..., D) on every rank
        y = F.linear(x, self.weight, self.bias)          # Y_i: (..., H/p)
        return gather_from_tp_region(y, self.group) if self.gather_output else y

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features} "
                f"(shard {self.out_per_rank} on rank {self.tp_rank}/{self.tp_degree}), "
                f"bias={self.bias is not None}, gather_output={self.gather_output}")


class RowParallelLinear(_ShardedLinear):
    """Y = X W^T + b with W split along in_features (columns of nn.Linear.weight).

        X_i (B, H/p) on rank i ──> X_i @ W_i^T = Y_i (B, D), a partial sum ──g──> Y = sum Y_i
        W (D, H) = [W_0 | W_1 | ... | W_{p-1}],  W_i: (D, H/p);  then Y + b, b: (D,) full

    The bias is added once, after the all-reduce (adding it on every rank would count it p
    times). ``input_is_parallel=False`` takes the full X (B, H) and scatters it first.
    ``in_features`` must be divisible by the tp degree (:func:`~helpers.tp.checks.check_divisible`).
    """

    split = "in_features"

    def __init__(self, in_features, out_features, bias=True, input_is_parallel=True,
                 group=None, device=None, dtype=None):
        self.in_per_rank = self._shard(in_features, out_features, bias, group, device, dtype)
        self.input_is_parallel = input_is_parallel

    def forward(self, x):
        if self.input_is_parallel:
            check_input(x, self.in_per_rank, "RowParallelLinear (input_is_parallel=True) expects "
                         f"in_features/p = {self.in_features}/{self.tp_degree} = {self.in_per_rank}",
                         self.weight)
        else:
            check_input(x, self.in_features,
                         f"RowParallelLinear expects in_features={self.in_features}", self.weight)
            x = scatter_to_tp_region(x, self.group)      # X: (..., H) -> X_i: (..., H/p)
        partial = F.linear(x, self.weight)               # Y_i: (..., D), partial sum, no bias
        y = reduce_from_tp_region(partial, self.group)   # Y: (..., D) on every rank
        return y + self.bias if self.bias is not None else y

    def extra_repr(self):
        return (f"in_features={self.in_features} (shard {self.in_per_rank} on rank "
                f"{self.tp_rank}/{self.tp_degree}), out_features={self.out_features}, "
                f"bias={self.bias is not None}, input_is_parallel={self.input_is_parallel}")


class ParallelMLP(nn.Module):
    """Megatron's MLP block (paper Fig. 3a): column -> activation -> row.

        X (B, D) ──f──> w1 column shard ──> Z_i (B, H/p) ──GELU──> w2 row shard ──g──> Y (B, D)

    The activation is element-wise, so it runs on each shard with no communication. One
    all-reduce in forward (*g*) and one in backward (*f*). ``d_hidden`` must be divisible
    by the tp degree (``ValueError`` otherwise, naming the degrees that work).
    """

    def __init__(self, d_model, d_hidden, bias=True, activation=None, group=None,
                 device=None, dtype=None):
        super().__init__()
        check_divisible("d_hidden", d_hidden, tp_degree_and_rank(group)[0])
        kw = dict(bias=bias, group=group, device=device, dtype=dtype)
        self.w1 = ColumnParallelLinear(d_model, d_hidden, gather_output=False, **kw)
        self.act = activation if activation is not None else nn.GELU()
        self.w2 = RowParallelLinear(d_hidden, d_model, input_is_parallel=True, **kw)

    @classmethod
    def from_dense(cls, w1, w2, activation=None, group=None):
        """Shard two dense layers (e.g. ``helpers.models.MLP``'s ``w1``, ``w2``) onto this rank."""
        check_module(w1, nn.Linear, "ParallelMLP.from_dense (w1)")
        check_module(w2, nn.Linear, "ParallelMLP.from_dense (w2)")
        if w1.out_features != w2.in_features:
            raise ValueError(f"w1.out_features={w1.out_features} must equal "
                             f"w2.in_features={w2.in_features}")
        check_divisible("d_hidden", w1.out_features, tp_degree_and_rank(group)[0])
        mlp = cls.__new__(cls)
        nn.Module.__init__(mlp)
        mlp.w1 = ColumnParallelLinear.from_linear(w1, gather_output=False, group=group)
        mlp.act = activation if activation is not None else nn.GELU()
        mlp.w2 = RowParallelLinear.from_linear(w2, input_is_parallel=True, group=group)
        return mlp

    def forward(self, x):
        z = self.w1(x)                                  # Z_i: (..., H/p), no communication yet
        return self.w2(self.act(z))                     # Y: (..., D) after one all-reduce
