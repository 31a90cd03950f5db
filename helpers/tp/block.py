"""A small transformer block (attention with q/k/v/out projections, then an MLP) for DTensor TP.

Plain matmul attention (``F.scaled_dot_product_attention`` on DTensors has no CPU sharding rule
in torch 2.13). No layer norm, so the TP plan is only the six linear layers:

    plan = {"attn.q": ColwiseParallel(), "attn.k": ColwiseParallel(), "attn.v": ColwiseParallel(),
            "attn.out": RowwiseParallel(), "ffn.w1": ColwiseParallel(), "ffn.w2": RowwiseParallel()}

After ``parallelize_module`` each rank holds ``n_heads // p`` whole heads, so set
``block.attn.n_heads = n_heads // p`` (``local_heads``): the attention reshapes by ``n_heads``.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["Attention", "FeedForward", "GatedFeedForward", "TransformerBlock", "interleave_qkv"]


class Attention(nn.Module):
    """Multi-head self-attention. x: (B, S, D) -> (B, S, D); q, k, v, out: Linear(D, D).

    ``fused_qkv=True`` uses one ``qkv = Linear(D, 3·D)`` whose output is split into q, k, v.
    """

    def __init__(self, d_model: int, n_heads: int, fused_qkv: bool = False):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        self.n_heads = n_heads
        self.fused_qkv = fused_qkv
        if fused_qkv:
            self.qkv = nn.Linear(d_model, 3 * d_model)
        else:
            self.q, self.k, self.v = (nn.Linear(d_model, d_model) for _ in range(3))
        self.out = nn.Linear(d_model, d_model)

    def forward(self, x):
        B, S, _ = x.shape
        if self.fused_qkv:
            q, k, v = self.qkv(x).chunk(3, dim=-1)                # each (B, S, D) (D/p per rank under TP)
        else:
            q, k, v = self.q(x), self.k(x), self.v(x)
        # (B, S, n_heads·head_dim) -> (B, n_heads, S, head_dim); under TP: this rank's heads only
        q, k, v = (t.reshape(B, S, self.n_heads, -1).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).softmax(dim=-1)
        y = (att @ v).transpose(1, 2).reshape(B, S, -1)           # (B, S, n_heads·head_dim)
        return self.out(y)


class FeedForward(nn.Module):
    """w2(GELU(w1(x))): w1 = Linear(D, F), w2 = Linear(F, D)."""

    def __init__(self, d_model: int, d_ff: int):
        super().__init__()
        self.w1, self.w2 = nn.Linear(d_model, d_ff), nn.Linear(d_ff, d_model)

    def forward(self, x):
        return self.w2(F.gelu(self.w1(x)))


class GatedFeedForward(nn.Module):
    """Llama's SwiGLU MLP: w2(SiLU(w1(x)) · w3(x)); w1, w3 = Linear(D, F), w2 = Linear(F, D)."""

    def __init__(self, d_model: int, d_ff: int):
        super().__init__()
        self.w1, self.w3 = nn.Linear(d_model, d_ff), nn.Linear(d_model, d_ff)
        self.w2 = nn.Linear(d_ff, d_model)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    """x + attn(x), then + ffn(·). x: (B, S, D)."""

    def __init__(self, d_model: int = 16, n_heads: int = 4, d_ff: int = 32, fused_qkv: bool = False):
        super().__init__()
        self.attn = Attention(d_model, n_heads, fused_qkv)
        self.ffn = FeedForward(d_model, d_ff)

    def forward(self, x):
        x = x + self.attn(x)
        return x + self.ffn(x)


def interleave_qkv(t: torch.Tensor, degree: int) -> torch.Tensor:
    """Reorder a fused qkv weight (3·D, D) or bias (3·D,) so that rank r's row block is [q_r; k_r; v_r].

    ColwiseParallel gives rank r rows r·3D/p … (r+1)·3D/p. In the plain [q; k; v] order that block
    is mostly q (rank 0 gets only q's rows); in this order it is rank r's heads of q, of k and of v,
    which the local ``chunk(3)`` then splits correctly.
    """
    rows = t.shape[0]
    if rows % 3:
        raise ValueError(f"a fused qkv tensor has 3·D rows; got {rows}")
    d = rows // 3
    if d % degree:
        raise ValueError(f"D={d} is not divisible by tp degree {degree}")
    q, k, v = t.chunk(3, dim=0)
    blocks = [torch.cat([q.chunk(degree)[r], k.chunk(degree)[r], v.chunk(degree)[r]]) for r in range(degree)]
    return torch.cat(blocks)
