"""A small transformer block (attention + MLP), dense and tensor-parallel, for timing TP (notebook 06).

Pre-norm, as in GPT-2 and Llama: ``x + attn(ln1(x))``, then ``+ mlp(ln2(x))``.
:class:`ParallelBlock` is built ``from_dense`` with the course's layers: q, k and v
column-parallel (each rank keeps whole heads), the output projection row-parallel, the MLP
Megatron's column → GELU → row. One *g* after each row layer in forward, one *f* before each
group of column layers in backward: four all-reduces per training step (Shoeybi et al. 2019,
arXiv:1909.08053, Fig. 3). Its forward takes an optional :class:`~helpers.measure.timer.StepTimer`
that times every local matmul and every collective.
"""

from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F

from ..measure.timer import timed_linear
from .checks import check_divisible, tp_degree_and_rank
from .layers import ColumnParallelLinear, DenseMLP, ParallelMLP, RowParallelLinear
from .ops import copy_to_tp_region, reduce_from_tp_region

__all__ = ["DenseBlock", "ParallelBlock"]


def _attention(q, k, v, n_heads):
    """Causal attention over ``n_heads`` heads; q, k, v: (B, S, n_heads·hd) -> (B, S, n_heads·hd)."""
    b, s, width = q.shape
    hd = width // n_heads

    def heads(t):                                            # (B, S, h·hd) -> (B, h, S, hd)
        return t.reshape(b, s, n_heads, hd).transpose(1, 2)

    o = F.scaled_dot_product_attention(heads(q), heads(k), heads(v), is_causal=True)
    return o.transpose(1, 2).reshape(b, s, width)


class DenseBlock(nn.Module):
    """The single-device reference: LayerNorm, causal multi-head attention, LayerNorm, MLP."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int):
        super().__init__()
        if n_heads < 1 or d_model % n_heads:                  # whole heads: d_model = n_heads · head_dim
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}: every head needs "
                             f"d_model/n_heads features; pick n_heads in "
                             f"{{{', '.join(str(h) for h in range(1, d_model + 1) if d_model % h == 0)}}}")
        self.n_heads = n_heads
        self.ln1, self.ln2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.q, self.k, self.v, self.o = (nn.Linear(d_model, d_model) for _ in range(4))
        self.mlp = DenseMLP(d_model, d_ff)

    def forward(self, x):                                    # x: (B, S, D)
        h = self.ln1(x)
        x = x + self.o(_attention(self.q(h), self.k(h), self.v(h), self.n_heads))
        return x + self.mlp(self.ln2(x))


class ParallelBlock(nn.Module):
    """:class:`DenseBlock` split over a TP group (see the module docstring).

    Rank r of p keeps heads r·h/p … (r+1)·h/p: rows of q, k, v's weights (column-parallel) and the
    matching columns of o's weight (row-parallel); hidden units r·F/p … of the MLP. The norms
    and the row layers' biases are full copies. ``n_heads`` and ``d_ff`` must be divisible by p.
    """

    @classmethod
    def from_dense(cls, dense: DenseBlock, group=None) -> "ParallelBlock":
        if not isinstance(dense, DenseBlock):
            raise TypeError(f"ParallelBlock.from_dense needs a DenseBlock, got {type(dense).__name__}")
        p, _ = tp_degree_and_rank(group)
        heads_here = check_divisible("n_heads", dense.n_heads, p)   # before any copy or collective
        check_divisible("d_ff", dense.mlp.fc1.out_features, p)
        blk = cls()
        blk.group, blk.tp_degree, blk.n_heads = group, p, heads_here
        blk.ln1, blk.ln2 = (nn.LayerNorm(n.normalized_shape) for n in (dense.ln1, dense.ln2))
        blk.ln1.load_state_dict(dense.ln1.state_dict())
        blk.ln2.load_state_dict(dense.ln2.state_dict())
        blk.ln1.to(dense.ln1.weight.device)
        blk.ln2.to(dense.ln2.weight.device)
        col = dict(gather_output=False, group=group)
        blk.q, blk.k, blk.v = (ColumnParallelLinear.from_linear(m, **col)     # W: (D/p, D) each
                               for m in (dense.q, dense.k, dense.v))
        blk.o = RowParallelLinear.from_linear(dense.o, group=group)           # W: (D, D/p)
        blk.mlp = ParallelMLP.from_dense(dense.mlp.fc1, dense.mlp.fc2, group=group)
        return blk

    def forward(self, x, timer=None):                         # x: (B, S, D) on every rank of the group
        g, t = self.group, timer
        h = copy_to_tp_region(self.ln1(x), g, timer=t, name="attention in")          # f
        q, k, v = (timed_linear(h, m.weight, m.bias, t, name)                  # (B, S, D/p) each
                   for m, name in ((self.q, "q"), (self.k, "k"), (self.v, "v")))
        a = _attention(q, k, v, self.n_heads)                                  # this rank's heads
        y = timed_linear(a, self.o.weight, None, t, "o")                       # (B, S, D), partial sum
        x = x + reduce_from_tp_region(y, g, timer=t, name="attention out") + self.o.bias   # g
        h = copy_to_tp_region(self.ln2(x), g, timer=t, name="MLP in")               # f
        fc1, fc2 = self.mlp.fc1, self.mlp.fc2
        z = F.gelu(timed_linear(h, fc1.weight, fc1.bias, t, "fc1"))            # (B, S, F/p)
        y = timed_linear(z, fc2.weight, None, t, "fc2")                        # (B, S, D), partial sum
        return x + reduce_from_tp_region(y, g, timer=t, name="MLP out") + fc2.bias  # g

