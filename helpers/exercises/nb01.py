"""Checkers for notebook 01's exercises (the row-parallel forward; *f*'s backward in the MLP)."""

from __future__ import annotations

import torch

from ..reference.compare import reassemble
from .common import ATOL, RTOL, all_close, checker, close, dense_grads, f64, fetch, max_abs, per_rank, say, worst

__all__ = ["check_row_forward", "check_f_backward", "GRADS_EX2"]


# ------------------------------------------------------------ exercise 1: row-parallel forward
@checker
def check_row_forward(cluster, A, fc2, name: str = "Y_ex1") -> bool:
    """Exercise 1: ``name`` on every rank must equal the dense ``fc2(A)``.

    A:   the full input (B, H) the notebook built with the same seed as the engines;
    fc2: the dense ``nn.Linear(H, D)`` the row-parallel layer was cut from.
    Recognises the usual slips: no all-reduce, the bias added on every rank (p times), no bias.
    """
    with torch.no_grad():
        dense = f64(fc2(A.to(fc2.weight.device)))                 # Y: (B, D)
        bias = f64(fc2.bias) if fc2.bias is not None else dense.new_zeros(dense.shape[-1])
    p = cluster.world_size
    what = ("Compute partial = A_i @ W2_i.T, sum it over the ranks with dist.all_reduce(partial), "
            f"then set {name} = partial + b2.")
    ys = per_rank(fetch(cluster, name), name, dense.shape, what)
    if all_close(ys, dense):
        return say(True, f"{name} matches dense fc2(A) on all {p} ranks (max|Δ| {worst(ys, dense):.1e}).")
    total = torch.stack(ys).sum(0)
    if p > 1 and close(total, dense + (p - 1) * bias):
        return say(False, f"each rank holds only its own partial sum (plus b2): the ranks' {name} "
                           "add up to dense. The all-reduce is missing: dist.all_reduce(partial) "
                           "sums the partial sums over the ranks, in place, before the bias.")
    if p > 1 and close(total, dense - bias):
        return say(False, "each rank holds only its own partial sum, and no bias: all-reduce "
                           "the partial sums with dist.all_reduce(partial), then add b2 once.")
    if p > 1 and all_close(ys, dense + (p - 1) * bias):
        return say(False, f"the bias was counted {p} times: add b2 after the all-reduce, once "
                           "(adding it to every rank's partial sum lets the all-reduce sum it p times).")
    if all_close(ys, dense - bias):
        return say(False, f"almost: the sum is right but the bias is missing; {name} = partial + b2.")
    r = next((r for r, y in enumerate(ys) if not close(y, ys[0])), None)
    if r is not None:
        return say(False, f"the ranks disagree (rank {r} differs from rank 0 by up to "
                           f"{max_abs(ys[r], ys[0]):.1e}); after the all-reduce every rank must "
                           "hold the same full result.")
    return say(False, f"{name} differs from dense fc2(A) by up to {max_abs(ys[0], dense):.1e}. "
                       + what)


# -------------------------------------------------------- exercise 2: f's backward
#: The gradients exercise 2 leaves in ``grads_ex2`` on every rank besides dL/dX (whole on every rank):
#: the dense parameter each belongs to, and the layout of each rank's piece (W1, b1 by output
#: features; W2 by input features; b2 whole on every rank).
GRADS_EX2 = {"dL/dW1": ("w1.weight", "Shard(0)"), "dL/db1": ("w1.bias", "Shard(0)"),
             "dL/dW2": ("w2.weight", "Shard(1)"), "dL/db2": ("w2.bias", "Replicate()")}


@checker
def check_f_backward(cluster, dense_mlp, X, y_name: str = "Y_ex2", grads_name: str = "grads_ex2") -> bool:
    """Exercise 2: with the learner's *f*, the MLP's output, dL/dX and every dL/dW match dense.

    dense_mlp: the dense ``helpers.models.MLP`` (w1, act, w2) whose shards the engines used;
    X: the input (B, D). The loss is ``Y.pow(2).sum()``, as in the exercise cell. ``grads_name``
    is a dict on every rank with "dL/dX" and the keys of :data:`GRADS_EX2`. Names the usual mistakes: the
    all-reduce missing, put in the forward (the wrong direction), averaged, or done twice.
    """
    p = cluster.world_size
    y_dense, dx, g_dense = dense_grads(dense_mlp, X)
    values = fetch(cluster, y_name, grads_name)
    ys = per_rank(values, y_name, y_dense.shape, "Keep the lines below the class as they are and re-run the cell.")
    if not all_close(ys, y_dense):
        if p > 1 and all_close(ys, dense_grads(dense_mlp, p * X)[0]):
            return say(False, f"an all-reduce in the wrong direction: {y_name} is the MLP of {p}·X. "
                              "f's forward must be the identity (every rank already holds the whole "
                              "X); its all-reduce belongs in the backward, on dL/dX.")
        return say(False, f"the forward differs from dense (max|Δ| {worst(ys, y_dense):.1e}): f's forward is "
                          "the identity, return x.view_as(x).")
    grads = [v.get(grads_name) for v in values]
    if not all(isinstance(g, dict) and all(isinstance(g.get(n), torch.Tensor) for n in ("dL/dX", *GRADS_EX2))
               for g in grads):
        return say(False, f"the forward is right, but {grads_name} is missing a gradient on some rank: "
                          "did the backward run? Keep the lines below the class as they are.")
    dxs = [f64(g["dL/dX"]) for g in grads]
    if not all_close(dxs, dx):
        if any(t.shape != dx.shape for t in dxs):
            return say(False, f"dL/dX has shape {tuple(dxs[0].shape)} on rank 0, expected "
                              f"{tuple(dx.shape)}: f's backward returns a gradient shaped like X.")
        if p > 1 and all_close([t * p for t in dxs], dx):
            return say(False, f"dL/dX is 1/{p} of dense on every rank: the shares were averaged "
                              "(all-reduce then / world_size, or ReduceOp.AVG). f's backward sums them.")
        if p > 1 and all_close(dxs, p * dx):
            return say(False, f"dL/dX is {p}× dense on every rank: it was summed twice (two "
                              "all-reduces, or an all-reduce of an already complete gradient). Sum once.")
        if p > 1 and close(torch.stack(dxs).sum(0), dx):
            return say(False, "the all-reduce is missing: each rank returns only its own share of "
                              "dL/dX (the gradient through its W1_r), and the shares add up to dense. "
                              "Sum them over the ranks: dist.all_reduce on a copy of dx, then return it.")
        if p > 1 and not all_close(dxs[1:], dxs[0]):
            return say(False, "the ranks' dL/dX differ: after f's backward every rank must hold the "
                              "same, complete gradient (an all-reduce of the shares).")
        return say(False, f"dL/dX differs from dense by up to {worst(dxs, dx):.1e}: "
                          "f's backward returns the sum over the ranks of their dx.")
    for name, (param, layout) in GRADS_EX2.items():
        got = reassemble([g[name] for g in grads], layout, atol=ATOL, rtol=RTOL)
        if not close(got, g_dense[param]):
            return say(False, f"dL/dX is right, but {name} (each rank's piece, {layout}) differs from "
                              f"dense by up to {max_abs(got, g_dense[param]):.1e}. Keep the lines below "
                              "the class as they are: the weight gradients need no collective.")
    return say(True, f"{y_name}, dL/dX and every dL/dW (W1, b1, W2, b2 from their real shards) match the "
                     f"dense MLP on all {p} ranks (dL/dX max|Δ| {worst(dxs, dx):.1e}): f's backward all-reduces.")
