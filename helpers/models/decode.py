"""Notebook 07's tensor-parallel generation: a :class:`~helpers.models.transformer.TinyGPT` split
over a TP group by hand, with each rank's slice of the KV cache, and greedy decoding that runs
the same on the dense model and on the split one.

:class:`ParallelGPT` is cut ``from_dense`` (Megatron's split, Shoeybi et al. 2019,
arXiv:1909.08053, Fig. 3): rank r of p keeps query heads r·h/p … (r+1)·h/p (rows of wq, the
matching columns of wo), its key/value heads (rows of wk, wv: ``kv_heads_of_rank``) and hidden
units r·F/p … of the MLP. Its :class:`~helpers.models.parts.KVCache` per layer therefore holds
(B, kv heads of this rank, T, head_dim): the heads it owns, never the others'. Two all-reduces per
layer (after wo and after w2, the paper's *g*), nothing else: inference has no backward, so no *f*.
The embedding, the final norm and the head are full copies (small here; vLLM splits the
embedding and the head by vocabulary as notebook 05 did).

GQA with fewer kv heads than ranks (n_kv_heads < p, p a multiple of it): each kv head is
**replicated** on p/n_kv_heads ranks, the ones whose query heads use it (vLLM's rule); a head
count that divides neither way is refused before anything else (:func:`~helpers.models.plans.check_heads`).

Every matmul runs through :func:`~helpers.measure.timer.timed_linear` and every all-reduce through
:func:`~helpers.tp.ops.reduce_from_tp_region`, so an optional ``timer`` splits a decode step into
local matmuls, communication and the rest.
"""

from __future__ import annotations

import contextlib
import copy
import statistics

import torch
import torch.nn as nn

from ..measure.timer import timed_linear
from ..tp.checks import check_divisible, tp_degree_and_rank
from ..tp.ops import reduce_from_tp_region
from .parts import KVCache, attend
from .plans import kv_heads_of_rank
from .transformer import TinyGPT

__all__ = ["ParallelGPT", "generate", "cache_bytes", "prefill_decode_split"]


class ParallelGPT(nn.Module):
    """A dense :class:`TinyGPT` split over a TP group for generation (see the module docstring)."""

    @classmethod
    @torch.no_grad()
    def from_dense(cls, dense: TinyGPT, group=None) -> "ParallelGPT":
        if not isinstance(dense, TinyGPT):
            raise TypeError(f"ParallelGPT.from_dense needs a TinyGPT, got {type(dense).__name__}")
        p, r = tp_degree_and_rank(group)                  # no collective
        cfg = dense.cfg
        m = cls()
        m.kv_heads = kv_heads_of_rank(cfg.n_heads, cfg.n_kv_heads or cfg.n_heads, p, r)  # refuses the head counts
        f = check_divisible("d_ff", cfg.d_ff, p)          # both before any copy or collective
        m.cfg, m.group = cfg, group
        hd, hq = cfg.head_dim, cfg.n_heads // p
        kv_rows = torch.cat([torch.arange(h * hd, (h + 1) * hd) for h in m.kv_heads])
        q_rows = slice(r * hq * hd, (r + 1) * hq * hd)
        m.tok_emb, m.norm, m.head = (copy.deepcopy(x) for x in (dense.tok_emb, dense.norm, dense.head))
        m.blocks = nn.ModuleList()
        for blk in dense.blocks:
            b = nn.Module()
            b.attn_norm, b.mlp_norm = copy.deepcopy(blk.attn_norm), copy.deepcopy(blk.mlp_norm)
            a = blk.attn
            b.wq = nn.Parameter(a.wq.weight[q_rows].clone())        # (h/p·hd, D): this rank's query heads
            b.wk = nn.Parameter(a.wk.weight[kv_rows].clone())       # (kv/p·hd, D), or one replicated head
            b.wv = nn.Parameter(a.wv.weight[kv_rows].clone())
            b.wo = nn.Parameter(a.wo.weight[:, q_rows].clone())     # (D, h/p·hd): the matching columns
            b.w1 = nn.Parameter(blk.mlp.w1.weight[r * f:(r + 1) * f].clone())     # (F/p, D)
            b.w2 = nn.Parameter(blk.mlp.w2.weight[:, r * f:(r + 1) * f].clone())  # (D, F/p)
            b.act = copy.deepcopy(blk.mlp.act)
            m.blocks.append(b)
        return m

    new_cache = TinyGPT.new_cache                        # one empty KVCache per layer, the same code

    @torch.no_grad()
    def forward(self, ids, *, cache: list[KVCache] | None = None, timer=None):
        """ids: (B, S) on every rank of the group -> logits (B, S, V), the same on every rank."""
        B, S = ids.shape
        cap = cache[0].capacity if cache else None       # no cache, or one without a capacity: no limit
        if cap is not None and len(cache[0]) + S > cap:  # refused before any collective
            raise ValueError(f"the KV cache holds {cap} tokens: {len(cache[0])} cached + {S} new = "
                             f"{len(cache[0]) + S} do not fit; shorten the prompt or generate fewer "
                             f"tokens, or make the cache with capacity >= {len(cache[0]) + S}")
        g, hd = self.group, self.cfg.head_dim
        x = self.tok_emb(ids)                                                       # (B, S, D), full copy
        for i, b in enumerate(self.blocks):
            h = b.attn_norm(x)
            q, k, v = (timed_linear(h, w, None, timer, n).view(B, S, -1, hd).transpose(1, 2)
                       for n, w in (("wq", b.wq), ("wk", b.wk), ("wv", b.wv)))  # (B, heads here, S, hd)
            if cache is not None:
                k, v = cache[i].append(k, v)                                        # (B, kv here, T, hd)
            y = attend(q, k, v, causal=True).transpose(1, 2).reshape(B, S, -1)      # (B, S, h/p·hd)
            x = x + reduce_from_tp_region(timed_linear(y, b.wo, None, timer, "wo"), g, timer=timer,
                                          name="attention out")                     # g: all-reduce (B, S, D)
            z = b.act(timed_linear(b.mlp_norm(x), b.w1, None, timer, "w1"))         # (B, S, F/p)
            x = x + reduce_from_tp_region(timed_linear(z, b.w2, None, timer, "w2"), g, timer=timer,
                                          name="MLP out")                           # g
        return self.head(self.norm(x))                                             # (B, S, V)


@torch.no_grad()
def generate(model, prompt, n_new: int, *, capacity: int | None = None, timer=None, cache=None):
    """Greedy decoding with a KV cache: one prefill over the prompt (B, L), then ``n_new`` - 1 decode
    steps of one token each. Works on a dense :class:`TinyGPT` and on :class:`ParallelGPT` alike.

    Returns (ids (B, L + n_new), the logits of every step [(B, V)] × n_new, the cache). ``capacity``:
    the cache's size in tokens, checked against L + n_new before anything runs. With a ``timer``,
    step 0 (the prefill) and each decode step are timed steps (``timer.steps[0]`` is the prefill).
    ``cache``: continue from a cache that already holds earlier tokens (``prompt``: the tokens
    not yet in it).
    """
    L = prompt.shape[1]
    if capacity is not None and L + n_new > capacity:
        raise ValueError(f"the prompt has {L} tokens and {n_new} are to be generated: {L + n_new} > the "
                         f"cache's capacity of {capacity} tokens; shorten the prompt to at most "
                         f"{max(capacity - n_new, 0)} tokens or generate at most {max(capacity - L, 0)}")
    if cache is None:
        cache = model.new_cache(capacity)
    ids, steps, step_in = prompt, [], prompt
    kw = {"timer": timer} if isinstance(model, ParallelGPT) else {}      # the dense model takes no timer
    for _ in range(n_new):
        with timer.step() if timer is not None else contextlib.nullcontext():
            last = model(step_in, cache=cache, **kw)[:, -1]          # (B, V): the last position's logits
        steps.append(last)
        step_in = last.argmax(-1, keepdim=True)                      # (B, 1): the next token
        ids = torch.cat([ids, step_in], dim=1)
    return ids, steps, cache


def cache_bytes(cache) -> int:
    """Bytes of every layer's keys and values, from the tensors themselves."""
    return sum(c.nbytes for c in cache)


def prefill_decode_split(timer, n_new: int) -> dict:
    """A timer's steps from repeated :func:`generate` calls of ``n_new`` tokens, split in two: the
    median prefill (step 0 of each call) and the median decode step, each {step, matmul,
    communication, other} in seconds."""
    if not timer.steps or len(timer.steps) % n_new:
        raise ValueError(f"expected whole generate() calls of {n_new} timed steps, got {len(timer.steps)} steps")
    prefill = timer.steps[::n_new]
    decode = [s for i, s in enumerate(timer.steps) if i % n_new]
    keys = ("step", "matmul", "communication", "other")
    return {name: {k: statistics.median(s[k] for s in steps) for k in keys}
            for name, steps in (("prefill", prefill), ("decode", decode))}
