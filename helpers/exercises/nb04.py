"""Checker for notebook 04's exercise (the accumulation of one SUMMA step)."""

from __future__ import annotations

import math

from ..tp.summa import cut_block
from .common import all_close, checker, close, f64, fetch, max_abs, per_rank, say, worst

__all__ = ["check_summa_accumulate"]


@checker
def check_summa_accumulate(cluster, X, W, name: str = "Y_ex1") -> bool:
    """Exercise 1: after all s steps, ``name`` on rank (i, j) must be Y_ij = Σ_k X_ik · W_kj.

    X: the full (M, K) input, W: the full (K, N) weight (chapter orientation), both built in the
    notebook from the engines' seed. Ranks sit row-major on the s × s grid. Recognises the usual
    slips: nothing added, the last step's product kept instead of the sum, own blocks used.
    """
    p = cluster.world_size
    s = math.isqrt(p)
    X, W = f64(X), f64(W)
    coords = [divmod(r, s) for r in range(p)]
    xb = {(i, k): cut_block(X, (s, s), (i, k), "X") for i in range(s) for k in range(s)}
    wb = {(k, j): cut_block(W, (s, s), (k, j), "W") for k in range(s) for j in range(s)}
    want = [sum(xb[i, k] @ wb[k, j] for k in range(s)) for i, j in coords]
    what = "Inside the loop, add this step's product of the two received blocks to Y_acc."
    ys = per_rank(fetch(cluster, name), name, want[0].shape, what)
    if all_close(ys, want):
        return say(True, f"{name} = Σ_k X[i,k]·W[k,j] on all {p} ranks: the {s}×{s} blocks of "
                         f"X·W (max|Δ| {worst(ys, want):.1e}).")
    if all(float(y.abs().max()) == 0.0 for y in ys):
        return say(False, f"{name} is still all zeros: nothing was added. {what} "
                          "(a matrix product: X_k @ W_k)")
    last = [xb[i, s - 1] @ wb[s - 1, j] for i, j in coords]
    if all_close(ys, last):
        return say(False, "only the last step's product survived: add it to Y_acc "
                          "(Y_acc = Y_acc + ...), do not replace Y_acc.")
    own = [xb[i, j] @ wb[i, j] for i, j in coords if xb[i, j].shape[1] == wb[i, j].shape[0]]
    if len(own) == p and all_close(ys, own):
        return say(False, "that is each rank's own X_ij·W_ij: use the blocks received in this "
                          "step (X_k, W_k), which change with k.")
    wrong = [r for r, (y, w) in enumerate(zip(ys, want)) if not close(y, w)]
    return say(False, f"{name} differs from Σ_k X[i,k]·W[k,j] on rank(s) {wrong} (max|Δ| "
                      f"{max(max_abs(ys[r], want[r]) for r in wrong):.1e}). {what}")
