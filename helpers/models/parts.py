"""The parts every notebook's model is built from: attention, MLP, gated MLP, the pre-norm block.

One naming everywhere, Llama's: ``attn.wq, attn.wk, attn.wv, attn.wo`` (or one fused ``attn.wqkv``),
``mlp.w1, mlp.w2`` (and ``mlp.w3`` when gated), ``attn_norm`` and ``mlp_norm``.

Attention is written out (two matmuls and a softmax, :func:`attend`). Why not
``F.scaled_dot_product_attention``: on CPU it runs the flash-attention kernel for CPU, and in
torch 2.13 DTensor has no sharding rule for that kernel, so SDPA on DTensors fails on CPU engines
(on GPUs it works). The explicit form is the math SDPA computes, runs the same on CPU and GPU,
and lets the dense reference use the very same code.

One head-count convention: the number of heads is read from the tensors
(``view(B, S, -1, head_dim)``). Under TP the column-parallel wq/wk/wv return this rank's heads
only, so after ``parallelize_module`` nothing needs patching.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..tp.checks import check_divisible

__all__ = ["attend", "KVCache", "Attention", "MLP", "GatedMLP", "Block", "interleave_qkv"]


def attend(q, k, v, causal: bool = False):
    """softmax(q kᵀ / √head_dim) v on the heads present.

    q: (B, h, S, hd); k, v: (B, h_kv, S_k, hd) with h a multiple of h_kv (GQA: each kv head serves
    h/h_kv query heads, repeated here). The queries are the last S of the S_k positions (S_k > S
    after a KV cache), so the causal mask lets query i see keys 0 … S_k − S + i. Returns (B, h, S, hd).
    """
    h, h_kv = q.shape[1], k.shape[1]
    if h % h_kv:
        raise ValueError(f"{h} query heads cannot share {h_kv} kv heads: the query heads must be a "
                         "multiple of the kv heads (on this rank)")
    if h != h_kv:
        k, v = k.repeat_interleave(h // h_kv, dim=1), v.repeat_interleave(h // h_kv, dim=1)
    att = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])          # (B, h, S, S_k)
    if causal:
        S, S_k = q.shape[2], k.shape[2]
        mask = torch.ones(S, S_k, dtype=torch.bool, device=q.device).tril(diagonal=S_k - S)
        att = att.masked_fill(~mask, float("-inf"))
    return att.softmax(dim=-1) @ v


class KVCache:
    """One attention layer's keys and values so far: ``k``, ``v`` of shape (B, kv heads, T, hd).

    Under TP each rank's column-parallel wk/wv produce its own kv heads, so each rank's cache holds
    its heads' slice: (B, n_kv_heads/p, T, hd). ``append`` grows T and returns the whole cache.
    ``capacity`` (optional): the most tokens it may hold; :func:`helpers.models.decode.generate`
    refuses a prompt that would overflow it before anything runs.
    """

    def __init__(self, capacity: int | None = None):
        self.k = self.v = None
        self.capacity = capacity

    def __len__(self) -> int:                          # tokens cached (the next position)
        return 0 if self.k is None else self.k.shape[2]

    def append(self, k, v):
        if self.k is not None:
            k, v = torch.cat([self.k, k], dim=2), torch.cat([self.v, v], dim=2)
        self.k, self.v = k, v
        return k, v

    @property
    def nbytes(self) -> int:
        return 0 if self.k is None else self.k.nbytes + self.v.nbytes


class Attention(nn.Module):
    """Multi-head self-attention (GQA when ``n_kv_heads < n_heads``). x: (B, S, D) -> (B, S, D).

    wq, wo: Linear(D, D); wk, wv: Linear(D, n_kv_heads·head_dim). ``bias`` is for wq, wv and wo:
    a separate wk never has one (a key bias shifts every score of a query equally; softmax ignores that, so its
    gradient is 0 up to rounding, which Adam would amplify). ``fused_qkv=True`` uses one
    ``wqkv = Linear(D, 3·D)`` whose output is split into q, k, v (see :func:`interleave_qkv`).
    ``forward(x, cache=KVCache())`` appends this call's k, v to the cache and attends over all of it.
    """

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int | None = None, *, causal: bool = False,
                 bias: bool = True, fused_qkv: bool = False):
        super().__init__()
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        if n_heads < 1 or d_model % n_heads:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        if n_kv_heads < 1 or n_heads % n_kv_heads:
            raise ValueError(f"n_heads={n_heads} is not a multiple of n_kv_heads={n_kv_heads}")
        if fused_qkv and n_kv_heads != n_heads:
            raise ValueError("fused_qkv needs n_kv_heads == n_heads; use separate wq, wk, wv for GQA")
        self.n_heads, self.n_kv_heads, self.causal = n_heads, n_kv_heads, causal
        self.head_dim = d_model // n_heads
        if fused_qkv:
            self.wqkv = nn.Linear(d_model, 3 * d_model, bias=bias)
        else:
            self.wq = nn.Linear(d_model, d_model, bias=bias)
            self.wk = nn.Linear(d_model, n_kv_heads * self.head_dim, bias=False)
            self.wv = nn.Linear(d_model, n_kv_heads * self.head_dim, bias=bias)
        self.wo = nn.Linear(d_model, d_model, bias=bias)

    def forward(self, x, *, cache: KVCache | None = None):          # x: (B, S, D)
        B, S, _ = x.shape
        if hasattr(self, "wqkv"):
            qkv = self.wqkv(x).chunk(3, dim=-1)                       # each (B, S, D) (D/p under TP)
        else:
            qkv = self.wq(x), self.wk(x), self.wv(x)
        # (B, S, heads·hd) -> (B, heads, S, hd); under TP: this rank's heads only
        q, k, v = (t.view(B, S, -1, self.head_dim).transpose(1, 2) for t in qkv)
        if cache is not None:
            k, v = cache.append(k, v)                                 # (B, kv heads, T so far, hd)
        y = attend(q, k, v, self.causal)                              # (B, h, S, hd)
        return self.wo(y.transpose(1, 2).reshape(B, S, -1))           # (B, S, D)


class MLP(nn.Module):
    """w2(GELU(w1(x))): w1 = Linear(D, F), w2 = Linear(F, D)."""

    def __init__(self, d_model: int, d_ff: int, bias: bool = True):
        super().__init__()
        self.w1 = nn.Linear(d_model, d_ff, bias=bias)                 # column-parallel under TP
        self.act = nn.GELU()
        self.w2 = nn.Linear(d_ff, d_model, bias=bias)                 # row-parallel under TP

    def forward(self, x):
        return self.w2(self.act(self.w1(x)))


class GatedMLP(nn.Module):
    """Llama's SwiGLU MLP: w2(SiLU(w1(x)) · w3(x)); w1, w3 = Linear(D, F), w2 = Linear(F, D)."""

    def __init__(self, d_model: int, d_ff: int, bias: bool = True):
        super().__init__()
        self.w1 = nn.Linear(d_model, d_ff, bias=bias)
        self.w3 = nn.Linear(d_model, d_ff, bias=bias)
        self.w2 = nn.Linear(d_ff, d_model, bias=bias)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(attn_norm(x)), then + mlp(mlp_norm(·)). x: (B, S, D).

    ``norms=False`` makes both norms ``nn.Identity`` (notebook 02's plain block); ``gated=True``
    uses :class:`GatedMLP`. The other keywords go to :class:`Attention`.
    """

    def __init__(self, d_model: int, n_heads: int, d_ff: int, n_kv_heads: int | None = None, *,
                 causal: bool = False, bias: bool = True, norms: bool = True, gated: bool = False,
                 fused_qkv: bool = False):
        super().__init__()
        self.attn_norm = nn.LayerNorm(d_model) if norms else nn.Identity()
        self.attn = Attention(d_model, n_heads, n_kv_heads, causal=causal, bias=bias, fused_qkv=fused_qkv)
        self.mlp_norm = nn.LayerNorm(d_model) if norms else nn.Identity()
        self.mlp = (GatedMLP if gated else MLP)(d_model, d_ff, bias=bias)

    def forward(self, x, *, cache: KVCache | None = None):
        x = x + self.attn(self.attn_norm(x), cache=cache)
        return x + self.mlp(self.mlp_norm(x))


def interleave_qkv(t: torch.Tensor, degree: int) -> torch.Tensor:
    """Reorder a fused qkv weight (3·D, D) or bias (3·D,) so that rank r's row block is [q_r; k_r; v_r].

    ColwiseParallel gives rank r rows r·3D/p … (r+1)·3D/p. In the plain [q; k; v] order that block
    is mostly q (rank 0 gets only q's rows); in this order it is rank r's heads of q, of k and of v,
    which the local ``chunk(3)`` then splits correctly.
    """
    rows = t.shape[0]
    if rows % 3:
        raise ValueError(f"a fused qkv tensor has 3·D rows; got {rows}")
    check_divisible("D", rows // 3, degree)
    # rows as (q/k/v, rank, D/p): swap the first two, so rank r's block is q_r, k_r, v_r
    return t.reshape(3, degree, rows // 3 // degree, *t.shape[1:]).transpose(0, 1).reshape(t.shape)
