"""Notebook 06's tensor-parallel block, built by hand from ``helpers.tp``'s layers and timed.

:class:`ParallelBlock` (its split: the class docstring): one *g* after each row layer in forward,
one *f* before each group of column layers in backward, four all-reduces per training step
(Shoeybi et al. 2019, arXiv:1909.08053, Fig. 3). Its forward takes an optional step timer that
times every local matmul and every collective; the attention core is the dense block's own :func:`attend`.
"""

from __future__ import annotations

import copy

import torch.nn as nn

from ..measure.timer import timed_linear
from ..tp.checks import check_divisible, tp_degree_and_rank
from ..tp.layers import ColumnParallelLinear, ParallelMLP, RowParallelLinear
from ..tp.ops import copy_to_tp_region, reduce_from_tp_region
from .parts import MLP, Block, attend

__all__ = ["ParallelBlock"]


class ParallelBlock(nn.Module):
    """A dense :class:`~helpers.models.parts.Block` split over a TP group (see the module docstring).

    Rank r of p keeps heads r·h/p … (r+1)·h/p: rows of wq, wk, wv (column-parallel) and the
    matching columns of wo (row-parallel); hidden units r·F/p … of the MLP (column → GELU → row). The
    norms and the row layers' biases are full copies. The submodule names are the dense block's (``attn.wq``,
    ``mlp.w2``, ...). ``n_heads``, ``n_kv_heads`` and ``d_ff`` must be divisible by p.
    """

    @classmethod
    def from_dense(cls, dense: Block, group=None) -> "ParallelBlock":
        if not isinstance(dense, Block) or not isinstance(dense.mlp, MLP) or hasattr(dense.attn, "wqkv"):
            raise TypeError(f"ParallelBlock.from_dense needs a Block with wq/wk/wv and a GELU MLP, "
                            f"got {type(dense).__name__}")
        p, _ = tp_degree_and_rank(group)
        attn = dense.attn
        for name, n in (("n_heads", attn.n_heads), ("n_kv_heads", attn.n_kv_heads), ("d_ff", dense.mlp.w1.out_features)):
            check_divisible(name, n, p)                              # before any copy or collective
        blk = cls()
        blk.group, blk.head_dim, blk.causal = group, attn.head_dim, attn.causal
        blk.attn_norm, blk.mlp_norm = copy.deepcopy(dense.attn_norm), copy.deepcopy(dense.mlp_norm)
        blk.attn = nn.ModuleDict({n: ColumnParallelLinear.from_linear(getattr(attn, n), gather_output=False,
                                                                      group=group)   # W: (D/p, D) each
                                  for n in ("wq", "wk", "wv")})
        blk.attn["wo"] = RowParallelLinear.from_linear(attn.wo, group=group)        # W: (D, D/p)
        blk.mlp = ParallelMLP.from_dense(dense.mlp.w1, dense.mlp.w2, activation=copy.deepcopy(dense.mlp.act),
                                         group=group)
        return blk

    def forward(self, x, timer=None):                         # x: (B, S, D) on every rank of the group
        g, t, a, mlp = self.group, timer, self.attn, self.mlp
        B, S, _ = x.shape
        h = copy_to_tp_region(self.attn_norm(x), g, timer=t, name="attention in")          # f
        q, k, v = (timed_linear(h, a[n].weight, a[n].bias, t, n)                           # (B, S, D/p) each
                   .view(B, S, -1, self.head_dim).transpose(1, 2) for n in ("wq", "wk", "wv"))
        y = attend(q, k, v, self.causal).transpose(1, 2).reshape(B, S, -1)                 # this rank's heads
        y = timed_linear(y, a["wo"].weight, None, t, "wo")                                 # (B, S, D), partial sum
        x = x + reduce_from_tp_region(y, g, timer=t, name="attention out")                 # g
        x = x if a["wo"].bias is None else x + a["wo"].bias
        h = copy_to_tp_region(self.mlp_norm(x), g, timer=t, name="MLP in")                 # f
        z = mlp.act(timed_linear(h, mlp.w1.weight, mlp.w1.bias, t, "w1"))                  # (B, S, F/p)
        y = timed_linear(z, mlp.w2.weight, None, t, "w2")                                  # (B, S, D), partial sum
        x = x + reduce_from_tp_region(y, g, timer=t, name="MLP out")                       # g
        return x if mlp.w2.bias is None else x + mlp.w2.bias
