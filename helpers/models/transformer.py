"""The course's two small models, built from :mod:`helpers.models.parts`: :class:`TinyTransformer`
(notebook 03) and :class:`TinyGPT` (notebooks 05, 07), a causal language model::

    ids (B, T) ──tok_emb──▶ x (B, T, D) ──[Block × n_layers]──▶ norm ──head──▶ logits (B, T, V)

There is no positional embedding: a causal decoder learns where it is from the mask alone
(Haviv et al. 2022, "Transformer Language Models without Positional Encodings Still Learn
Positional Information", arXiv:2203.16634). It keeps the sequence-parallel plan to the layers
the chapter is about, and decoding with a KV cache needs no position offset.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .parts import Block, KVCache

__all__ = ["TinyTransformer", "GPTConfig", "TinyGPT", "lm_loss", "greedy"]


class TinyTransformer(nn.Module):
    """``n_layers`` pre-norm blocks on inputs of shape (B, S, d_model); no embedding (the inputs are vectors)."""

    def __init__(self, d_model: int = 32, n_heads: int = 4, d_ff: int = 128, n_layers: int = 2):
        super().__init__()
        self.blocks = nn.ModuleList(Block(d_model, n_heads, d_ff) for _ in range(n_layers))

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int = 64
    d_model: int = 32
    n_heads: int = 4
    n_layers: int = 2
    d_ff: int = 128
    seq_len: int = 16  # the training context T
    n_kv_heads: int | None = None  # None: = n_heads (no GQA)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


class TinyGPT(nn.Module):
    """Embedding, ``n_layers`` causal pre-norm blocks without biases, final LayerNorm, head (untied)."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg.d_model, cfg.n_heads, cfg.d_ff, cfg.n_kv_heads, causal=True, bias=False)
                                    for _ in range(cfg.n_layers))
        self.norm = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)

    def new_cache(self, capacity: int | None = None) -> list[KVCache]:
        """One empty :class:`KVCache` per block, for ``forward(ids, cache=...)``; ``capacity``: the
        most tokens it may hold (:func:`helpers.models.decode.generate` checks it up front)."""
        return [KVCache(capacity) for _ in self.blocks]

    def forward(self, ids, *, cache: list[KVCache] | None = None):   # ids: (B, T) token ids
        x = self.tok_emb(ids)                               # (B, T, D); (B, T/p, D) per rank under SP
        for i, block in enumerate(self.blocks):
            x = block(x) if cache is None else block(x, cache=cache[i])
        return self.head(self.norm(x))                      # (B, T, V); (B, T, V/p) per rank under TP


def lm_loss(logits, targets):
    """Mean next-token cross entropy. logits: (B, T, V) (a DTensor sharded on V under
    ``loss_parallel()``), targets: (B, T)."""
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(0, 1))


@torch.no_grad()
def greedy(model, prompt, n_new: int, window: int):
    """Greedy decoding with a fixed window of ``window`` tokens (a multiple of p under SP).

    prompt: (1, L) ids with L >= window. Returns (1, L + n_new). Only the last position's
    logits are gathered (``full_tensor()`` of a (1, V) slice), never the whole (B, T, V).
    """
    if prompt.shape[1] < window:
        raise ValueError(f"the prompt has {prompt.shape[1]} tokens; greedy() needs at least "
                         f"window={window}")
    ids = prompt
    for _ in range(n_new):
        last = model(ids[:, -window:])[:, -1]               # (1, V), or a DTensor Shard(-1)
        if hasattr(last, "full_tensor"):
            last = last.full_tensor()
        ids = torch.cat([ids, last.argmax(-1, keepdim=True)], dim=1)
    return ids
