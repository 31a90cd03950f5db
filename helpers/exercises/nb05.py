"""Checkers for notebook 05's exercises (the vocab-parallel masking, the TP + SP plan of a block)."""

from __future__ import annotations

import torch

from ..reference.compare import reassemble
from .common import ATOL, RTOL, NotYet, all_close, checker, close, dense_grads, f64, fetch, max_abs, per_rank, say, worst

__all__ = ["check_vocab_masking", "check_sp_block_plan"]


# ------------------------------------------------------- exercise 1: vocab-parallel masking
@checker
def check_vocab_masking(cluster, dense_emb, ids, name: str = "E_ex", part_name: str = "part") -> bool:
    """Exercise 1: ``name`` on every rank must equal the dense ``dense_emb(ids)``.

    dense_emb: the dense ``nn.Embedding`` the shards were cut from; ids: the (B, T) ids the
    engines used. Recognises: the all-reduce missing, the out-of-range rows not zeroed.
    """
    with torch.no_grad():
        dense = f64(dense_emb(ids))                                   # (B, T, D)
    p = cluster.world_size
    values = fetch(cluster, name, part_name)
    what = ("mask = ids outside [start, stop); part = the rows of W_i for the local ids, zeroed "
            f"where masked; {name} = reduce_from_tp_region(part).")
    es = per_rank(values, name, dense.shape, what)
    if all_close(es, dense):
        return say(True, f"{name} matches the dense embedding on all {p} ranks, shard boundaries "
                          f"included (max|Δ| {worst(es, dense):.1e}).")
    if p > 1 and close(torch.stack(es).sum(0), dense):
        return say(False, f"each rank holds only the rows of its own vocabulary range: the ranks' "
                           f"{name} add up to dense. Sum them over the ranks with "
                           "reduce_from_tp_region(part) (Megatron's g).")
    parts = [v.get(part_name) for v in values]
    if all(isinstance(t, torch.Tensor) and t.shape == dense.shape for t in parts):
        leaked = sum(int((f64(t).abs().sum(-1) > 0).sum()) for t in parts)
        tokens = dense.shape[0] * dense.shape[1]
        if leaked > tokens:
            return say(False, f"{leaked} rows are non-zero across the ranks' parts for {tokens} tokens: "
                               "every token must come from exactly one rank. Zero the rows of masked "
                               "ids: part.masked_fill(mask.unsqueeze(-1), 0.0).")
    return say(False, f"{name} differs from the dense embedding by up to "
                       f"{worst(es, dense):.1e}. " + what)


# ------------------------------------------------------- exercise 2: the TP + SP block plan
@checker
def check_sp_block_plan(cluster, dense_block, x) -> bool:
    """Exercise 2: the block, parallelized with the learner's plan and fed this rank's slice of the
    sequence, must give this rank's slice of ``dense_block(x)`` (and of dL/dx for L = sum), with
    all-gathers and reduce-scatters in the forward and no all-reduce; and every parameter's
    gradient (``grads_ex``: ``local_grads``' ``{name: (grad, layout)}``, the ``Partial`` norm
    weights reduced) must equal dense. ``norm_partial_ex``: ``{name: this rank's own, unreduced
    gradient}`` of the norms, to show that each alone is NOT dense's (the classic SP bug: a
    missing all-reduce of the LayerNorm weights' gradients).

    dense_block: the dense ``Block``; x: the full input (B, T, D).
    """
    y, dx, want = dense_grads(dense_block, x, squared=False)
    values = fetch(cluster, "y_ex", "dx_ex", "comm_ex", "grads_ex", "norm_partial_ex")
    io = _check_sp_block_io(values, y, dx)
    got = [v.get("grads_ex") for v in values]
    if any(not isinstance(g, dict) for g in got):
        return say(False, "grads_ex is missing: keep the lines below the plan as they are and re-run the cell.")
    full = {n: reassemble([g[n][0] for g in got], got[0][n][1], atol=ATOL, rtol=RTOL) for n in want if n in got[0]}
    bad = [f"{n} (max|Δ| {max_abs(full[n], want[n]):.1e})" if n in full else f"{n} (no gradient)"
           for n in want if n not in full or not close(full[n], want[n])]
    if bad:
        return say(False, f"the output and dL/dx are right, but these parameter gradients differ from dense: "
                           f"{', '.join(bad)}.")
    partial = values[0].get("norm_partial_ex") or {}
    note = ""
    if partial:
        n = min(partial)   # the first norm weight by name
        note = (f" Each rank's own gradient of the norms' weights is only the sum over its T/p positions "
                f"(rank 0's {n} is {max_abs(partial[n], want[n]):.1e} off dense): DTensor keeps it Partial() and "
                "reduces it when it is read; a hand-written SP must all-reduce it, or the ranks' norm weights "
                "drift apart.")
    return say(True, f"every rank's slice of the block output and of dL/dx, and all {len(want)} parameter "
                      f"gradients, match dense {io}{note}")


def _check_sp_block_io(values, y, dx) -> str:
    """The verdict on the output, dL/dx (dense: ``y``, ``dx``) and the collectives in ``values``
    (by rank); :class:`NotYet` when one is wrong."""
    p = len(values)
    B, T, D = y.shape
    if T % p:
        raise NotYet(f"T={T} is not divisible by {p} ranks; sequence parallelism needs T % p == 0.")
    n = T // p
    want, want_dx = y.split(n, dim=1), dx.split(n, dim=1)                 # rank r: positions r·n … (B, T/p, D)
    ys = [v.get("y_ex") for v in values]
    if any(t is None for t in ys):
        raise NotYet("y_ex is missing on some rank: run the exercise cell as it is, after your plan.")
    ys = [f64(t) for t in ys]
    comm = values[0].get("comm_ex") or {}
    if ys[0].shape == (B, T, D):
        raise NotYet(f"y_ex is the full sequence {tuple(ys[0].shape)} on every rank; under SP a "
                     f"block hands on this rank's slice (B, T/p, D) = {(B, n, D)}: end attn.wo and "
                     "mlp.w2 with RowwiseParallel(output_layouts=Shard(1)) (a reduce-scatter).")
    if ys[0].shape != (B, n, D):
        raise NotYet(f"y_ex has shape {tuple(ys[0].shape)} on rank 0, expected {(B, n, D)}.")
    if not comm:
        raise NotYet("no collective ran: every rank computed the block on its own T/p positions "
                     "(rank 0 is right by luck of the causal mask; the others are not). Fill in "
                     "the plan: SequenceParallel on the norms, PrepareModuleInput to all-gather "
                     "before attn and mlp, Colwise for wq/wk/wv/w1, Rowwise(output_layouts=Shard(1)) "
                     "for wo/w2.")
    if comm.get("all_reduce", 0):
        raise NotYet(f"the forward ran {comm['all_reduce']} all-reduce(s) {dict(comm)}: with SP the "
                     "row-parallel layers end in a reduce-scatter, RowwiseParallel(output_layouts=Shard(1)).")
    if not all_close(ys, want):
        bad = [r for r, (a, b) in enumerate(zip(ys, want)) if not close(a, b)]
        raise NotYet(f"ranks {bad} differ from their slice of the dense block (max|Δ| "
                     f"{worst(ys, want):.1e}); collectives {dict(comm)}. "
                     "Attention needs the whole sequence: PrepareModuleInput(input_layouts=(Shard(1),), "
                     "desired_input_layouts=(Replicate(),)) on attn and on mlp.")
    dxs = [v.get("dx_ex") for v in values]
    if any(t is None for t in dxs) or not all_close(dxs, want_dx):
        raise NotYet("the forward is right but dL/dx is not this rank's slice of the dense gradient; "
                     "keep the lines below the plan as they are and re-run the cell.")
    kinds = ", ".join(f"{v} {k}" for k, v in sorted(comm.items()))
    extra = (" It works, with more all-gathers than needed: PrepareModuleInput on attn and mlp "
             "gathers the sequence once for wq, wk and wv together instead of once per projection."
             if comm.get("all_gather", 0) > comm.get("reduce_scatter", 0) else "")
    return f"(max|Δ| {worst(ys, want):.1e}); forward collectives: {kinds}.{extra}"
