"""The models' tensor-parallel plans: plain dicts ``{submodule name: ParallelStyle}`` (torchtitan
style), applied by small ``apply_*`` / ``parallelize_*`` functions that each do one thing.

Megatron-LM (Shoeybi et al. 2019): wq, wk, wv and w1 (and w3) column-parallel, wo and w2
row-parallel, so each rank keeps whole heads and whole hidden units. Sequence parallelism
(Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer Models",
arXiv:2205.05198) shards the residual stream on the sequence between the sub-layers. Every
refusal (head count, vocabulary, sequence length, token ids) happens before any collective.
"""

from __future__ import annotations

import torch

from ..common.numbers import divisors
from ..tp.checks import check_divisible
from ..tp.vocab import check_token_ids

__all__ = ["block_plan", "model_plan", "tp_plan", "apply_fsdp", "parallelize_tiny_gpt", "check_tp_config",
           "check_ids", "check_heads", "kv_heads_of_rank", "replicate_kv_heads"]


def block_plan(*, sequence_parallel: bool = True, prepare_input: bool = True, gated: bool = False) -> dict:
    """The plan for one :class:`~helpers.models.parts.Block`, keyed by submodule name.

    ``prepare_input`` (without SP): a ``PrepareModuleInput`` makes the input of attn and of mlp one
    Replicate DTensor, so the backward sums dL/dx of q, k and v locally and all-reduces once
    (Megatron's f) instead of once per projection; ``False`` is the bare six-layer plan.
    With SP the residual stream between sub-layers is sharded on the sequence (Shard(1)): the
    norms run on T/p positions; before attention and MLP an all-gather rebuilds the full sequence;
    the row-parallel layers end in a reduce-scatter back to Shard(1) instead of an all-reduce.
    """
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        PrepareModuleInput,
        RowwiseParallel,
        SequenceParallel,
    )

    stream = Shard(1) if sequence_parallel else Replicate()           # the residual stream between sub-layers
    plan = {}
    for sub, columns, row in (("attn", ("wq", "wk", "wv"), "wo"), ("mlp", ("w1", "w3") if gated else ("w1",), "w2")):
        if sequence_parallel:
            plan[f"{sub}_norm"] = SequenceParallel()                  # (B, T/p, D) in and out
        if sequence_parallel or prepare_input:
            plan[sub] = PrepareModuleInput(input_layouts=(stream,), desired_input_layouts=(Replicate(),))
        plan.update({f"{sub}.{name}": ColwiseParallel() for name in columns})
        plan[f"{sub}.{row}"] = RowwiseParallel(output_layouts=stream)
    return plan


def tp_plan(model) -> dict:
    """:func:`block_plan` without SP for every block of ``model.blocks``, keys prefixed ``blocks.i.``
    (notebook 03's :class:`~helpers.models.transformer.TinyTransformer` on its "tp" mesh dim)."""
    return {f"blocks.{i}.{key}": style for i in range(len(model.blocks))
            for key, style in block_plan(sequence_parallel=False).items()}


def model_plan(*, sequence_parallel: bool = True, loss_parallel: bool = True) -> dict:
    """The plan for TinyGPT's top level: embedding, final norm, head."""
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


def apply_fsdp(model, fsdp_mesh):
    """FSDP2 on the "fsdp" mesh: each block is one unit (gathered just before it runs, freed
    after), then the root. Call it after ``parallelize_module``: FSDP then shards each TP shard."""
    from torch.distributed.fsdp import fully_shard

    for block in model.blocks:
        fully_shard(block, mesh=fsdp_mesh)
    fully_shard(model, mesh=fsdp_mesh)
    return model


def _works(n_heads: int, n_kv: int, p: int) -> bool:
    return n_heads % p == 0 and (n_kv % p == 0 or p % n_kv == 0)


def check_heads(n_heads: int, n_kv_heads: int, p: int) -> None:
    """Refuse a TP degree that cannot give every rank whole query heads and whole kv heads.

    Query heads must split evenly (n_heads % p == 0). Key/value heads either split
    (n_kv_heads % p == 0) or are replicated (p % n_kv_heads == 0: each of them on p/n_kv_heads ranks).

    >>> check_heads(8, 2, 4)          # 2 kv heads on 4 ranks: each replicated twice
    >>> check_heads(12, 3, 4)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ValueError: n_kv_heads=3 and tp degree 4 divide neither way: ... pick a tp degree in {1, 3, 6, 12}
    """
    if n_heads % n_kv_heads:
        raise ValueError(f"n_heads={n_heads} is not a multiple of n_kv_heads={n_kv_heads}")
    if _works(n_heads, n_kv_heads, p):
        return
    ok = ", ".join(str(d) for d in divisors(n_heads) if _works(n_heads, n_kv_heads, d))
    if n_heads % p:
        raise ValueError(f"n_heads={n_heads} is not divisible by tp degree {p}: each rank needs whole query "
                         f"heads; pick a tp degree in {{{ok}}}")
    raise ValueError(f"n_kv_heads={n_kv_heads} and tp degree {p} divide neither way: {p} ranks cannot split "
                     f"{n_kv_heads} kv heads, nor share them equally (n_heads={n_heads}); pick a tp degree "
                     f"in {{{ok}}}")


def kv_heads_of_rank(n_heads: int, n_kv_heads: int, p: int, r: int) -> list[int]:
    """The global kv heads rank ``r`` of ``p`` holds: a contiguous block of n_kv/p when p divides
    them; otherwise the ONE head its query heads r·h/p … use (replicated on p/n_kv ranks).

    >>> [kv_heads_of_rank(8, 8, 4, r) for r in range(4)]
    [[0, 1], [2, 3], [4, 5], [6, 7]]
    >>> [kv_heads_of_rank(8, 2, 4, r) for r in range(4)]
    [[0], [0], [1], [1]]
    """
    check_heads(n_heads, n_kv_heads, p)
    if n_kv_heads % p == 0:
        k = n_kv_heads // p
        return list(range(r * k, (r + 1) * k))
    return [r // (p // n_kv_heads)]


def replicate_kv_heads(model, p: int):
    """For n_kv_heads < p (p a multiple of it): give wk and wv one kv head per rank, in place, by
    repeating each kv head's rows p/n_kv_heads times, so that ColwiseParallel hands rank r exactly the
    head its query heads use (vLLM's replication). The model computes the same function. A model
    with n_kv_heads >= p is returned unchanged.
    """
    cfg = model.cfg
    n_kv = cfg.n_kv_heads or cfg.n_heads
    check_heads(cfg.n_heads, n_kv, p)
    if n_kv >= p:
        return model
    rep, hd = p // n_kv, cfg.head_dim
    for blk in model.blocks:
        for name in ("wk", "wv"):
            old = getattr(blk.attn, name)
            new = torch.nn.Linear(old.in_features, p * hd, bias=old.bias is not None)
            with torch.no_grad():                                   # weight (n_kv·hd, D) -> (p·hd, D), bias alike
                for t_new, t_old in zip(new.parameters(), old.parameters()):
                    t_new.copy_(t_old.unflatten(0, (n_kv, hd)).repeat_interleave(rep, 0).flatten(0, 1))
            setattr(blk.attn, name, new.to(old.weight.device))
        blk.attn.n_kv_heads = p
    return model


def check_tp_config(cfg, p: int) -> None:
    """Refuse a GPTConfig that cannot be split over ``p`` ranks (heads, kv heads, vocabulary, d_ff).
    Fewer kv heads than ranks is accepted when p is a multiple of them (they are replicated)."""
    check_heads(cfg.n_heads, cfg.n_kv_heads or cfg.n_heads, p)
    check_divisible("vocab_size", cfg.vocab_size, p)
    check_divisible("d_ff", cfg.d_ff, p)


def check_ids(ids, vocab_size: int, p: int = 1, sequence_parallel: bool = False) -> None:
    """Token ids (B, T) inside the vocabulary, and a sequence length SP can split, before any collective."""
    check_token_ids(ids, vocab_size)
    if ids.dim() != 2:
        raise ValueError(f"token ids must have shape (B, T), got {tuple(ids.shape)}")
    if sequence_parallel and ids.shape[1] % p:
        T = ids.shape[1]
        raise ValueError(f"sequence length T={T} is not divisible by tp degree {p}: sequence "
                         f"parallelism gives every rank T/p positions; use T={T - T % p} or "
                         f"T={T + p - T % p}")


def parallelize_tiny_gpt(model, mesh, sequence_parallel: bool = True, loss_parallel: bool = True):
    """Apply :func:`block_plan` to every block and :func:`model_plan` to the top, in place.

    Refuses (before any collective) a head count / vocabulary / d_ff not divisible by the mesh
    size; a forward pre-hook refuses token ids outside the vocabulary and, under SP, a
    sequence length not divisible by the mesh size.
    """
    from torch.distributed.tensor.parallel import parallelize_module

    p = mesh.size()
    check_tp_config(model.cfg, p)
    replicate_kv_heads(model, p)                                    # n_kv_heads < p: one kv head per rank
    for block in model.blocks:
        parallelize_module(block, mesh, block_plan(sequence_parallel=sequence_parallel))
    parallelize_module(model, mesh, model_plan(sequence_parallel=sequence_parallel, loss_parallel=loss_parallel))

    def _check(module, args):
        check_ids(args[0], module.cfg.vocab_size, p, sequence_parallel)

    model.register_forward_pre_hook(_check)
    return model
