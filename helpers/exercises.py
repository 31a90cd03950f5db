"""Checkers for the notebooks' exercises, run in the learner's notebook kernel.

Each checker pulls the learner's result from every rank, compares it with the dense reference
the notebook computed, and prints one line:

    ✅ correct: ...            the TP result matches dense on every rank
    ❌ not yet: <hint>         what is wrong, and what to try

It returns ``True`` / ``False`` and never raises (an unfinished exercise -- ``Y_ex1 = None`` --
is a normal state, not an error), so a notebook runs headless with no error output either way.

The engines' values are moved to the CPU *on the engine* (``.detach().cpu()``) before they are
pulled, so the checkers work the same on gloo/CPU and NCCL/GPU engines. Comparisons are done in
float64 with the tolerances of :func:`helpers.reference.compare`.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["fetch", "check_row_forward", "check_mlp_backward", "ATOL", "RTOL"]

ATOL = 1e-5
RTOL = 1e-4

OK = "✅ correct"
NOT_YET = "❌ not yet"


# --------------------------------------------------------------------------------- plumbing
def _engine_fetch(names):
    """Runs on an engine: the named values of its namespace, tensors detached to the CPU.

    Names that are not defined are left out of the returned dict (never an error).
    """
    from IPython import get_ipython

    ip = get_ipython()
    ns = ip.user_ns if ip is not None else {}
    out = {}
    for name in names:
        if name not in ns:
            continue
        value = ns[name]
        try:
            import torch as _torch

            if isinstance(value, _torch.Tensor):
                value = value.detach().cpu()
        except Exception:  # pragma: no cover - torch is always there on an engine
            pass
        out[name] = value
    return out


def fetch(cluster, *names: str) -> list[dict]:
    """``[{name: value}, ...]`` by rank; tensors arrive on the CPU; undefined names are absent."""
    return cluster.apply(_engine_fetch, list(names))


def _f64(t) -> torch.Tensor:
    return t.detach().to(device="cpu", dtype=torch.float64)


def _close(a, b) -> bool:
    a, b = _f64(a), _f64(b)
    return a.shape == b.shape and bool(torch.allclose(a, b, atol=ATOL, rtol=RTOL))


def _max_abs(a, b) -> float:
    a, b = _f64(a), _f64(b)
    if a.shape != b.shape:
        return float("inf")
    d = (a - b).abs()
    return float(d.max()) if d.numel() else 0.0


def _say(ok: bool, text: str) -> bool:
    print(f"{OK if ok else NOT_YET}: {text}")
    return ok


def _shape(t) -> str:
    return str(tuple(int(s) for s in t.shape))


def _per_rank(values: list[dict], name: str, shape, what: str):
    """The tensor ``name`` from every rank, or (None, hint) when one is missing or malformed."""
    tensors = []
    for r, vals in enumerate(values):
        v = vals.get(name)
        if v is None:
            state = "is still None" if name in vals else "is not defined"
            return None, f"{name} {state} on rank {r}. {what}"
        if not isinstance(v, torch.Tensor):
            return None, (f"{name} on rank {r} is a {type(v).__name__}, expected a tensor of "
                          f"shape {tuple(shape)}. {what}")
        if tuple(v.shape) != tuple(shape):
            return None, (f"{name} on rank {r} has shape {_shape(v)}, expected {tuple(shape)} "
                          f"on every rank. {what}")
        tensors.append(v)
    return tensors, ""


def _run(check, *args) -> bool:
    """Call ``check`` and turn any unexpected problem into a ❌ line instead of an error."""
    try:
        return check(*args)
    except Exception as e:  # the checker must never raise in the learner's notebook
        return _say(False, f"could not check your result ({type(e).__name__}: {e}). Re-run the "
                           "cells above this exercise, then your exercise cell, then this one.")


# ------------------------------------------------------------ exercise 1: row-parallel forward
def check_row_forward(cluster, A, fc2, name: str = "Y_ex1") -> bool:
    """Exercise 1: ``name`` on every rank must equal the dense ``fc2(A)``.

    A:   the full input (B, H) the notebook built with the same seed as the engines;
    fc2: the dense ``nn.Linear(H, D)`` the row-parallel layer was cut from.
    Recognises the usual slips: no all-reduce, the bias added on every rank (p times), no bias.
    """
    return _run(_check_row_forward, cluster, A, fc2, name)


def _check_row_forward(cluster, A, fc2, name) -> bool:
    with torch.no_grad():
        dense = _f64(fc2(A.to(fc2.weight.device)))                 # Y: (B, D)
        bias = _f64(fc2.bias) if fc2.bias is not None else torch.zeros(dense.shape[-1],
                                                                        dtype=torch.float64)
    p = cluster.world_size
    what = ("Compute partial = A_i @ W2_i.T, sum it over the ranks with dist.all_reduce(partial), "
            f"then set {name} = partial + b2.")
    ys, hint = _per_rank(fetch(cluster, name), name, dense.shape, what)
    if ys is None:
        return _say(False, hint)
    ys = [_f64(y) for y in ys]
    if all(_close(y, dense) for y in ys):
        return _say(True, f"{name} matches dense fc2(A) on all {p} ranks "
                          f"(max|Δ| {max(_max_abs(y, dense) for y in ys):.1e}).")
    total = torch.stack(ys).sum(0)
    if p > 1 and _close(total, dense + (p - 1) * bias):
        return _say(False, f"each rank holds only its own partial sum (plus b2): the ranks' {name} "
                           "add up to dense. The all-reduce is missing: dist.all_reduce(partial) "
                           "sums the partial sums over the ranks, in place, before the bias.")
    if p > 1 and _close(total, dense - bias):
        return _say(False, "each rank holds only its own partial sum, and no bias: all-reduce "
                           "the partial sums with dist.all_reduce(partial), then add b2 once.")
    if p > 1 and all(_close(y, dense + (p - 1) * bias) for y in ys):
        return _say(False, f"the bias was counted {p} times: add b2 after the all-reduce, once "
                           "(adding it to every rank's partial sum lets the all-reduce sum it p times).")
    if all(_close(y, dense - bias) for y in ys):
        return _say(False, f"almost: the sum is right but the bias is missing; {name} = partial + b2.")
    ref = ys[0]
    for r, y in enumerate(ys[1:], start=1):
        if not _close(y, ref):
            return _say(False, f"the ranks disagree (rank {r} differs from rank 0 by up to "
                               f"{_max_abs(y, ref):.1e}); after the all-reduce every rank must "
                               "hold the same full result.")
    return _say(False, f"{name} differs from dense fc2(A) by up to {_max_abs(ys[0], dense):.1e}. "
                       + what)


# -------------------------------------------------------- exercise 2: the MLP's f and g
def check_mlp_backward(cluster, dense_mlp, X, y_name: str = "Y_ex2",
                       dx_name: str = "dX_ex2") -> bool:
    """Exercise 2: with f and g in place, output and dL/dX match the dense MLP on every rank.

    dense_mlp: the dense ``DenseMLP`` (fc1, act, fc2) the engines' shards came from;
    X: the input (B, D). The loss is ``Y.pow(2).sum()``, as in the exercise cell.
    """
    return _run(_check_mlp_backward, cluster, dense_mlp, X, y_name, dx_name)


def _check_mlp_backward(cluster, dense_mlp, X, y_name, dx_name) -> bool:
    x = X.detach().clone().to(next(dense_mlp.parameters()).device).requires_grad_()
    # The reference must not leave gradients in the learner's dense model: use a functional copy.
    with torch.enable_grad():
        fc1, fc2 = dense_mlp.fc1, dense_mlp.fc2
        z = dense_mlp.act(torch.nn.functional.linear(x, fc1.weight.detach(), _d(fc1.bias)))
        y = torch.nn.functional.linear(z, fc2.weight.detach(), _d(fc2.bias))
        (dx,) = torch.autograd.grad(y.pow(2).sum(), x)
    y_dense, dx_dense = _f64(y), _f64(dx)
    b2 = _f64(fc2.bias) if fc2.bias is not None else torch.zeros_like(y_dense[0])
    p = cluster.world_size
    values = fetch(cluster, y_name, dx_name)

    ys, hint = _per_rank(values, y_name, y_dense.shape,
                         "Keep the lines below the two blanks as they are and re-run the cell.")
    if ys is None:
        return _say(False, hint)
    ys = [_f64(t) for t in ys]
    if not all(_close(t, y_dense) for t in ys):
        if p > 1 and _close(torch.stack(ys).sum(0), y_dense + (p - 1) * b2):
            return _say(False, f"{y_name} on each rank is only that rank's partial sum: the row "
                               "layer's output needs g = reduce_from_tp_region (all-reduce forward, "
                               "identity backward).")
        return _say(False, f"the forward differs from dense (max|Δ| "
                           f"{max(_max_abs(t, y_dense) for t in ys):.1e}). f = copy_to_tp_region "
                           "goes on the input (identity forward: every rank needs the same X); "
                           "g = reduce_from_tp_region goes on the row layer's output. g on the "
                           "input would sum p copies of X.")

    dxs, hint = _per_rank(values, dx_name, dx_dense.shape,
                          "Did the backward run? Keep the lines below the two blanks as they are.")
    if dxs is None:
        return _say(False, f"the forward is right. {hint}")
    dxs = [_f64(t) for t in dxs]
    if all(_close(t, dx_dense) for t in dxs):
        return _say(True, f"{y_name} and dL/dX match the dense MLP on all {p} ranks "
                          f"(max|Δ| {max(_max_abs(t, dx_dense) for t in dxs):.1e}).")
    if p > 1 and _close(torch.stack(dxs).sum(0), dx_dense):
        return _say(False, "the forward is right, but dL/dX on each rank is only its own share: "
                           "the ranks' dL/dX add up to dense. The input needs f = "
                           "copy_to_tp_region, whose backward all-reduces dL/dX.")
    if p > 1 and all(_close(t, p * dx_dense) for t in dxs):
        return _say(False, f"dL/dX is {p}× too large: it was summed over the ranks twice "
                           "(f used twice?). Use f once, on the input.")
    return _say(False, f"the forward is right, but dL/dX differs from dense (max|Δ| "
                       f"{max(_max_abs(t, dx_dense) for t in dxs):.1e}). f = copy_to_tp_region "
                       "on the input, g = reduce_from_tp_region on the row layer's output.")


def _d(t: Any):
    return None if t is None else t.detach()
