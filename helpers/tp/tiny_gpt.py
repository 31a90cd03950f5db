"""A tiny GPT-style language model, and its tensor-parallel + sequence-parallel plan.

Torch only: the same code runs on ipyparallel engines and under torchrun.

    ids (B, T) ──tok_emb──▶ x (B, T, D) ──[Block × n_layers]──▶ norm ──head──▶ logits (B, T, V)
    Block:  x = x + attn(ln1(x));  x = x + mlp(ln2(x))          (pre-norm, GPT-2 style)

There is no positional embedding: a causal decoder learns where it is from the mask alone
(Haviv et al. 2022, "Transformer Language Models without Positional Encodings Still Learn
Positional Information", arXiv:2203.16634). It keeps the sequence-parallel plan to the layers
the chapter is about. Attention is written out (matmul, mask, softmax) on this rank's heads:
``F.scaled_dot_product_attention`` on DTensors has no CPU sharding rule in torch 2.13, and the
``view(B, T, -1, head_dim)`` below works on a full model and on a rank's n_heads/p heads alike.

The TP plan (Megatron-LM, Shoeybi et al. 2019) with sequence parallelism (Korthikanti et al.
2022, "Reducing Activation Recomputation in Large Transformer Models", arXiv:2205.05198) is a
plain dict per module (:func:`block_plan`, :func:`model_plan`), applied by
:func:`parallelize_tiny_gpt`. Every refusal (head count, vocabulary, sequence length, token ids)
happens before any collective, with the numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .checks import check_divisible

__all__ = ["GPTConfig", "TinyGPT", "Block", "Attention", "MLP", "block_plan", "model_plan",
           "parallelize_tiny_gpt", "check_tp_config", "check_ids", "lm_loss", "greedy", "to_local",
           "layout_of", "local_grads", "block_activation_bytes"]


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int = 64
    d_model: int = 32
    n_heads: int = 4
    n_layers: int = 2
    d_ff: int = 128
    seq_len: int = 16  # the training context T

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


class Attention(nn.Module):
    """Causal multi-head self-attention; q, k, v and the output projection without bias."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        if cfg.d_model % cfg.n_heads:
            raise ValueError(f"d_model={cfg.d_model} is not divisible by n_heads={cfg.n_heads}")
        self.head_dim = cfg.head_dim
        self.wq = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.wk = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.wv = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.wo = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def forward(self, x):                                   # x: (B, T, D), the full sequence
        B, T, _ = x.shape
        # under TP, wq/wk/wv are column-parallel: (B, T, D/p) = this rank's n_heads/p heads
        q, k, v = (w(x).view(B, T, -1, self.head_dim).transpose(1, 2)   # (B, h, T, hd)
                   for w in (self.wq, self.wk, self.wv))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)       # (B, h, T, T)
        causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        att = att.masked_fill(~causal, float("-inf")).softmax(dim=-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, -1)                  # (B, T, h·hd)
        return self.wo(y)                                   # row-parallel under TP: (B, T, D)


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.w1 = nn.Linear(cfg.d_model, cfg.d_ff)          # column-parallel under TP
        self.w2 = nn.Linear(cfg.d_ff, cfg.d_model)          # row-parallel under TP

    def forward(self, x):
        return self.w2(F.gelu(self.w1(x)))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln1, self.attn = nn.LayerNorm(cfg.d_model), Attention(cfg)
        self.ln2, self.mlp = nn.LayerNorm(cfg.d_model), MLP(cfg)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class TinyGPT(nn.Module):
    """Embedding, ``n_layers`` pre-norm blocks, final LayerNorm, output head (untied)."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)

    def forward(self, ids):                                 # ids: (B, T) token ids
        x = self.tok_emb(ids)                               # (B, T, D); (B, T/p, D) per rank under SP
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))                      # (B, T, V); (B, T, V/p) per rank under TP


# ------------------------------------------------------------------------------ checks
def check_tp_config(cfg: GPTConfig, p: int) -> None:
    """Refuse a model that cannot be split over ``p`` ranks (head count, vocabulary, d_ff)."""
    check_divisible("n_heads", cfg.n_heads, p)
    check_divisible("vocab_size", cfg.vocab_size, p)
    check_divisible("d_ff", cfg.d_ff, p)


def check_ids(ids, vocab_size: int, p: int = 1, sequence_parallel: bool = False) -> None:
    """Token ids inside the vocabulary, and a sequence length SP can split, before any collective."""
    if not isinstance(ids, torch.Tensor) or ids.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"token ids must be an integer tensor (B, T), got "
                        f"{getattr(ids, 'dtype', type(ids).__name__)}")
    if ids.dim() != 2:
        raise ValueError(f"token ids must have shape (B, T), got {tuple(ids.shape)}")
    if ids.numel():
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= vocab_size:
            bad = lo if lo < 0 else hi
            raise ValueError(f"token id {bad} is outside the vocabulary 0..{vocab_size - 1} "
                             f"(vocab_size={vocab_size}); check the tokenizer")
    if sequence_parallel and ids.shape[1] % p:
        T = ids.shape[1]
        raise ValueError(f"sequence length T={T} is not divisible by tp degree {p}: sequence "
                         f"parallelism gives every rank T/p positions; use T={T - T % p} or "
                         f"T={T + p - T % p}")


# ------------------------------------------------------------------------------ the TP plan
def block_plan(sequence_parallel: bool = True) -> dict:
    """The plan for one Block, keyed by submodule name (Megatron's column → row per sub-layer).

    With SP the residual stream between blocks is sharded on the sequence (Shard(1)): the
    norms run on T/p positions; before attention and MLP an all-gather rebuilds the full
    sequence; the row-parallel layers end in a reduce-scatter back to Shard(1) instead of an
    all-reduce. Without SP the residual stream is replicated and wo/w2 end in an all-reduce.
    """
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        PrepareModuleInput,
        RowwiseParallel,
        SequenceParallel,
    )

    if not sequence_parallel:
        # the input of attn/mlp as one Replicate DTensor: the backward then sums dL/dx of q, k and v
        # locally and all-reduces once (Megatron's f), instead of once per projection
        replicate = dict(input_layouts=(Replicate(),), desired_input_layouts=(Replicate(),))
        return {
            "attn": PrepareModuleInput(**replicate),
            "attn.wq": ColwiseParallel(), "attn.wk": ColwiseParallel(), "attn.wv": ColwiseParallel(),
            "attn.wo": RowwiseParallel(),                              # all-reduce: (B, T, D)
            "mlp": PrepareModuleInput(**replicate),
            "mlp.w1": ColwiseParallel(),
            "mlp.w2": RowwiseParallel(),
        }
    gather = dict(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),))
    plan = {
        "ln1": SequenceParallel(),                                 # (B, T/p, D) in and out
        "attn": PrepareModuleInput(**gather),                      # all-gather: (B, T, D)
        "attn.wq": ColwiseParallel(), "attn.wk": ColwiseParallel(), "attn.wv": ColwiseParallel(),
        "attn.wo": RowwiseParallel(output_layouts=Shard(1)),       # reduce-scatter: (B, T/p, D)
        "ln2": SequenceParallel(),
        "mlp": PrepareModuleInput(**gather),
        "mlp.w1": ColwiseParallel(),
        "mlp.w2": RowwiseParallel(output_layouts=Shard(1)),
    }
    return plan


def model_plan(sequence_parallel: bool = True, loss_parallel: bool = True) -> dict:
    """The plan for the top level: embedding, final norm, head."""
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, SequenceParallel

    seq = Shard(1) if sequence_parallel else Replicate()
    plan = {
        # vocab-parallel embedding: rows = vocab; the partial sums are reduce-scattered to Shard(1)
        "tok_emb": RowwiseParallel(input_layouts=Replicate(), output_layouts=seq),
        # head: column-parallel on the vocab; logits stay sharded on it for loss_parallel
        "head": ColwiseParallel(input_layouts=seq,
                                output_layouts=Shard(-1) if loss_parallel else Replicate(),
                                use_local_output=not loss_parallel),
    }
    if sequence_parallel:
        plan["norm"] = SequenceParallel()
    return plan


def parallelize_tiny_gpt(model: TinyGPT, mesh, sequence_parallel: bool = True,
                         loss_parallel: bool = True) -> TinyGPT:
    """Apply :func:`block_plan` to every block and :func:`model_plan` to the top, in place.

    Refuses (before any collective) a head count / vocabulary / d_ff not divisible by the mesh
    size; a forward pre-hook refuses token ids outside the vocabulary and, under SP, a
    sequence length not divisible by the mesh size.
    """
    from torch.distributed.tensor.parallel import parallelize_module

    p = mesh.size()
    check_tp_config(model.cfg, p)
    for block in model.blocks:
        parallelize_module(block, mesh, block_plan(sequence_parallel))
    parallelize_module(model, mesh, model_plan(sequence_parallel, loss_parallel))
    vocab = model.cfg.vocab_size

    def _check(module, args):
        check_ids(args[0], vocab, p, sequence_parallel)

    model.register_forward_pre_hook(_check)
    return model


# ------------------------------------------------------------------------------ loss, sampling
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


# ------------------------------------------------------------------------------ looking inside
def to_local(t):
    """A DTensor's local shard (autograd-tracked); any other tensor as it is."""
    return t.to_local() if hasattr(t, "to_local") else t


def layout_of(t) -> str:
    """helpers.reference's layout string for a DTensor on a 1D mesh ('Shard(0)', 'Replicate()')."""
    placements = getattr(t, "placements", None)
    if not placements:
        return "Replicate()"
    pl = placements[0]
    if pl.is_shard():
        return f"Shard({pl.dim})"
    return "Replicate()"


def local_grads(model) -> dict:
    """{parameter name: (this rank's gradient on the CPU, layout)} for checking against dense.

    A gradient that DTensor left as a pending sum (``Partial``: the norms' weights under SP, whose
    reduction waits for the optimizer) is reduced here (an all-reduce: call on every rank).
    """
    out = {}
    for name, prm in model.named_parameters():
        g = prm.grad
        if g is None:
            continue
        if hasattr(g, "placements") and any(pl.is_partial() for pl in g.placements):
            from torch.distributed.tensor import Replicate
            g = g.redistribute(placements=[Replicate()] * len(g.placements))
        out[name] = (to_local(g).detach().cpu(), layout_of(g))
    return out


def block_activation_bytes(B: int, T: int, cfg: GPTConfig, p: int = 1, mode: str = "dense",
                           bytes_per_el: int = 4) -> int:
    """What one Block saves for its backward, counted tensor by tensor (LayerNorm statistics and
    the causal mask, a few KB, left out). N = B·T·D elements, A = B·heads·T² (attention scores).

        saved:  ln1 in, ln1 out (= q/k/v input), q, k, v, attention probs (A), attn out (= wo input),
                ln2 in, ln2 out (= w1 input), w1 out, gelu out (= w2 input)
        dense   16 N + A                                   (d_ff = 4 D: w1 out and gelu out are 4 N each)
        TP      4 N + 12 N/p + A/p                          norms' inputs/outputs replicated, the rest split
        TP+SP   2 N + 14 N/p + A/p                          norms on T/p; the all-gathered inputs of
                                                            q/k/v and w1 are still saved whole
    Megatron-LM goes further (Korthikanti et al. 2022, Sec. 4.2.2): it saves the (T/p) shard and
    all-gathers again in the backward, so every term is divided by p.
    """
    N = B * T * cfg.d_model
    A = B * cfg.n_heads * T * T
    ff = 2 * B * T * cfg.d_ff                           # w1 out and gelu out
    if mode == "dense":
        n = 8 * N + ff + A
    elif mode == "tp":
        n = 4 * N + (4 * N + ff + A) / p
    elif mode == "tp+sp":
        n = 2 * N + (6 * N + ff + A) / p
    else:
        raise ValueError(f"mode must be 'dense', 'tp' or 'tp+sp', got {mode!r}")
    return int(n * bytes_per_el)
