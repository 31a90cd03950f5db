"""Checkers for notebook 01's exercises (row-parallel forward, the MLP backward)."""

from __future__ import annotations

from typing import Any

import torch

from .common import all_close, close, f64, fetch, max_abs, per_rank, run_checker, say, worst

__all__ = ["check_row_forward", "check_mlp_backward"]


# ------------------------------------------------------------ exercise 1: row-parallel forward
def check_row_forward(cluster, A, fc2, name: str = "Y_ex1") -> bool:
    """Exercise 1: ``name`` on every rank must equal the dense ``fc2(A)``.

    A:   the full input (B, H) the notebook built with the same seed as the engines;
    fc2: the dense ``nn.Linear(H, D)`` the row-parallel layer was cut from.
    Recognises the usual slips: no all-reduce, the bias added on every rank (p times), no bias.
    """
    return run_checker(_check_row_forward, cluster, A, fc2, name)


def _check_row_forward(cluster, A, fc2, name) -> bool:
    with torch.no_grad():
        dense = f64(fc2(A.to(fc2.weight.device)))                 # Y: (B, D)
        bias = f64(fc2.bias) if fc2.bias is not None else torch.zeros(dense.shape[-1],
                                                                        dtype=torch.float64)
    p = cluster.world_size
    what = ("Compute partial = A_i @ W2_i.T, sum it over the ranks with dist.all_reduce(partial), "
            f"then set {name} = partial + b2.")
    ys, hint = per_rank(fetch(cluster, name), name, dense.shape, what)
    if ys is None:
        return say(False, hint)
    if all_close(ys, dense):
        return say(True, f"{name} matches dense fc2(A) on all {p} ranks "
                          f"(max|Δ| {worst(ys, dense):.1e}).")
    total = torch.stack(ys).sum(0)
    if p > 1 and close(total, dense + (p - 1) * bias):
        return say(False, f"each rank holds only its own partial sum (plus b2): the ranks' {name} "
                           "add up to dense. The all-reduce is missing: dist.all_reduce(partial) "
                           "sums the partial sums over the ranks, in place, before the bias.")
    if p > 1 and close(total, dense - bias):
        return say(False, "each rank holds only its own partial sum, and no bias: all-reduce "
                           "the partial sums with dist.all_reduce(partial), then add b2 once.")
    if p > 1 and all(close(y, dense + (p - 1) * bias) for y in ys):
        return say(False, f"the bias was counted {p} times: add b2 after the all-reduce, once "
                           "(adding it to every rank's partial sum lets the all-reduce sum it p times).")
    if all(close(y, dense - bias) for y in ys):
        return say(False, f"almost: the sum is right but the bias is missing; {name} = partial + b2.")
    ref = ys[0]
    for r, y in enumerate(ys[1:], start=1):
        if not close(y, ref):
            return say(False, f"the ranks disagree (rank {r} differs from rank 0 by up to "
                               f"{max_abs(y, ref):.1e}); after the all-reduce every rank must "
                               "hold the same full result.")
    return say(False, f"{name} differs from dense fc2(A) by up to {max_abs(ys[0], dense):.1e}. "
                       + what)


# -------------------------------------------------------- exercise 2: the MLP's f and g
def check_mlp_backward(cluster, dense_mlp, X, y_name: str = "Y_ex2",
                       dx_name: str = "dX_ex2") -> bool:
    """Exercise 2: with f and g in place, output and dL/dX match the dense MLP on every rank.

    dense_mlp: the dense ``helpers.models.MLP`` (w1, act, w2) the engines' shards came from;
    X: the input (B, D). The loss is ``Y.pow(2).sum()``, as in the exercise cell.
    """
    return run_checker(_check_mlp_backward, cluster, dense_mlp, X, y_name, dx_name)


def _check_mlp_backward(cluster, dense_mlp, X, y_name, dx_name) -> bool:
    x = X.detach().clone().to(next(dense_mlp.parameters()).device).requires_grad_()
    # The reference must not leave gradients in the learner's dense model: use a functional copy.
    with torch.enable_grad():
        w1, w2 = dense_mlp.w1, dense_mlp.w2
        z = dense_mlp.act(torch.nn.functional.linear(x, w1.weight.detach(), _d(w1.bias)))
        y = torch.nn.functional.linear(z, w2.weight.detach(), _d(w2.bias))
        (dx,) = torch.autograd.grad(y.pow(2).sum(), x)
    y_dense, dx_dense = f64(y), f64(dx)
    b2 = f64(w2.bias) if w2.bias is not None else torch.zeros_like(y_dense[0])
    p = cluster.world_size
    values = fetch(cluster, y_name, dx_name)

    ys, hint = per_rank(values, y_name, y_dense.shape,
                         "Keep the lines below the two blanks as they are and re-run the cell.")
    if ys is None:
        return say(False, hint)
    if not all_close(ys, y_dense):
        if p > 1 and close(torch.stack(ys).sum(0), y_dense + (p - 1) * b2):
            return say(False, f"{y_name} on each rank is only that rank's partial sum: the row "
                               "layer's output needs g = reduce_from_tp_region (all-reduce forward, "
                               "identity backward).")
        return say(False, f"the forward differs from dense (max|Δ| "
                           f"{worst(ys, y_dense):.1e}). f = copy_to_tp_region "
                           "goes on the input (identity forward: every rank needs the same X); "
                           "g = reduce_from_tp_region goes on the row layer's output. g on the "
                           "input would sum p copies of X.")

    dxs, hint = per_rank(values, dx_name, dx_dense.shape,
                          "Did the backward run? Keep the lines below the two blanks as they are.")
    if dxs is None:
        return say(False, f"the forward is right. {hint}")
    if all_close(dxs, dx_dense):
        return say(True, f"{y_name} and dL/dX match the dense MLP on all {p} ranks "
                          f"(max|Δ| {worst(dxs, dx_dense):.1e}).")
    if p > 1 and close(torch.stack(dxs).sum(0), dx_dense):
        return say(False, "the forward is right, but dL/dX on each rank is only its own share: "
                           "the ranks' dL/dX add up to dense. The input needs f = "
                           "copy_to_tp_region, whose backward all-reduces dL/dX.")
    if p > 1 and all(close(t, p * dx_dense) for t in dxs):
        return say(False, f"dL/dX is {p}× too large: it was summed over the ranks twice "
                           "(f used twice?). Use f once, on the input.")
    return say(False, f"the forward is right, but dL/dX differs from dense (max|Δ| "
                       f"{worst(dxs, dx_dense):.1e}). f = copy_to_tp_region "
                       "on the input, g = reduce_from_tp_region on the row layer's output.")


def _d(t: Any):
    return None if t is None else t.detach()
