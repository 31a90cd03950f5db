"""What every exercise checker shares: fetching by rank, comparing, one line of verdict.

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

import copy
import functools

import torch

from ..engine.namespace import fetch_values

__all__ = ["fetch", "ATOL", "RTOL", "NotYet", "checker", "f64", "close", "max_abs", "all_close", "worst", "say",
           "per_rank", "dense_grads"]

ATOL = 1e-5
RTOL = 1e-4


class NotYet(Exception):
    """Raised anywhere inside a :func:`checker` with the hint: the checker prints it as its ❌ line."""


# --------------------------------------------------------------------------------- plumbing
def fetch(cluster, *names: str) -> list[dict]:
    """``[{name: value}, ...]`` by rank; tensors arrive on the CPU; undefined names are absent."""
    return cluster.apply(fetch_values, list(names))


def f64(t) -> torch.Tensor:
    return t.detach().to(device="cpu", dtype=torch.float64)


def close(a, b) -> bool:
    a, b = f64(a), f64(b)
    return a.shape == b.shape and bool(torch.allclose(a, b, atol=ATOL, rtol=RTOL))


def max_abs(a, b) -> float:
    a, b = f64(a), f64(b)
    if a.shape != b.shape:
        return float("inf")
    return float((a - b).abs().max()) if a.numel() else 0.0


def _per_rank(dense, n: int) -> list:
    return list(dense) if isinstance(dense, (list, tuple)) else [dense] * n


def all_close(ys, dense) -> bool:
    """Every rank's value close to ``dense`` (one tensor, or one per rank)."""
    return all(close(y, d) for y, d in zip(ys, _per_rank(dense, len(ys))))


def worst(ys, dense) -> float:
    """The largest max|Δ| over the ranks (``dense``: one tensor, or one per rank)."""
    return max(max_abs(y, d) for y, d in zip(ys, _per_rank(dense, len(ys))))


def say(ok: bool, text: str) -> bool:
    print(f"{'✅ correct' if ok else '❌ not yet'}: {text}")
    return ok


def per_rank(values: list[dict], name: str, shape, what: str) -> list[torch.Tensor]:
    """The tensor ``name`` from every rank in float64; :class:`NotYet` when one is missing or malformed."""
    for r, vals in enumerate(values):
        v = vals.get(name)
        if v is None:
            state = "is still None" if name in vals else "is not defined"
            raise NotYet(f"{name} {state} on rank {r}. {what}")
        if not isinstance(v, torch.Tensor):
            raise NotYet(f"{name} on rank {r} is a {type(v).__name__}, expected a tensor of "
                         f"shape {tuple(shape)}. {what}")
        if tuple(v.shape) != tuple(shape):
            raise NotYet(f"{name} on rank {r} has shape {tuple(v.shape)}, expected {tuple(shape)} "
                         f"on every rank. {what}")
    return [f64(vals[name]) for vals in values]


def dense_grads(module, x, squared: bool = True):
    """The dense reference in float64: (Y, dL/dX, {parameter name: dL/dW}) for the loss
    ``Y.pow(2).sum()`` (``squared=False``: ``Y.sum()``), on a copy: the learner's module is left alone."""
    ref = copy.deepcopy(module).to(torch.float64)
    ref.zero_grad(set_to_none=True)
    x = x.detach().to(next(ref.parameters()).device, torch.float64).requires_grad_()
    with torch.enable_grad():
        y = ref(x)
        (y.pow(2) if squared else y).sum().backward()
    return f64(y), f64(x.grad), {n: f64(p.grad) for n, p in ref.named_parameters()}


def checker(check):
    """Make ``check`` a checker: a :class:`NotYet` becomes its ❌ line, and so does any unexpected
    problem (with what to re-run) instead of an error in the learner's notebook."""
    @functools.wraps(check)
    def run(*args, **kwargs) -> bool:
        try:
            return check(*args, **kwargs)
        except NotYet as e:
            return say(False, str(e))
        except Exception as e:  # the checker must never raise in the learner's notebook
            return say(False, f"could not check your result ({type(e).__name__}: {e}). Re-run the "
                               "cells above this exercise, then your exercise cell, then this one.")
    return run
