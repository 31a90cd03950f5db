"""Checkers for notebook 02's exercises (a TP plan for a Llama MLP; placements for one all-gather)."""

from __future__ import annotations

from ..engine import dtensor as engine_dtensor
from .common import all_close, checker, close, dense_grads, fetch, max_abs, per_rank, say, worst

__all__ = ["check_llama_plan", "check_one_all_gather"]


# ------------------------------------------------------------ exercise 1: the plan of a SwiGLU MLP
_WANT = {"w1.weight": "Shard(0)", "w3.weight": "Shard(0)", "w2.weight": "Shard(1)"}


@checker
def check_llama_plan(cluster, dense_ffn, X) -> bool:
    """Exercise 1: ``ffn_ex1`` was parallelized column-wise on w1 and w3, row-wise on w2; ``Y_ex1``
    (its output on X) equals the dense ``dense_ffn(X)`` on every rank, and so do dL/dX
    (``dX_ex1``) and every parameter gradient (``grads_ex1``: ``{param name: grad DTensor}``),
    reassembled from their real shards, for the loss ``Y.pow(2).sum()``."""
    placed = cluster.apply(engine_dtensor.param_placements, "ffn_ex1")
    if not placed[0]:
        return say(False, "ffn_ex1 is not defined on the engines: run the exercise cell first.")
    got = {k: placed[0].get(k, "?") for k in _WANT}
    if all(v == "dense" for v in got.values()):
        return say(False, "no weight is sharded yet: the plan is empty. Map 'w1', 'w3' and 'w2' to "
                          "ColwiseParallel() or RowwiseParallel().")
    for param, want in _WANT.items():
        if got[param] != want:
            layer = param.split(".")[0]
            style = "ColwiseParallel()" if want == "Shard(0)" else "RowwiseParallel()"
            role = ("its output features feed the element-wise SiLU(w1·x) * w3·x, which must stay local"
                    if want == "Shard(0)" else "it consumes the hidden features each rank already holds "
                    "and ends with the block's one all-reduce")
            return say(False, f"{layer}.weight is {got[param]}, expected {want}: give {layer!r} {style} -- {role}.")
    dense, dx_dense, g_dense = dense_grads(dense_ffn, X)
    values = fetch(cluster, "Y_ex1", "dX_ex1")
    ys = per_rank(values, "Y_ex1", dense.shape, "Run the exercise cell again.")
    if not all_close(ys, dense):
        return say(False, f"the weights are placed right, but Y_ex1 differs from dense by up to "
                          f"{worst(ys, dense):.1e}.")
    dxs = per_rank(values, "dX_ex1", dx_dense.shape, "Run the exercise cell again.")
    if not all_close(dxs, dx_dense):
        return say(False, f"the output is right, but dL/dX differs from dense by up to {worst(dxs, dx_dense):.1e}.")
    try:
        views = cluster.pull_dtensor("grads_ex1")
    except (NameError, ValueError, TypeError) as e:
        return say(False, f"grads_ex1 could not be read as DTensors on every rank ({e}); "
                          "run the exercise cell again.")
    for n, g in g_dense.items():
        if n not in views or not close(views[n].full(), g):
            how = "missing" if n not in views else f"off by up to {max_abs(views[n].full(), g):.1e}"
            return say(False, f"the output is right, but dL/d{n} is {how} (reassembled from its shards).")
    return say(True, f"w1, w3 column-wise, w2 row-wise; Y_ex1, dL/dX and every parameter gradient "
                     f"match the dense MLP on all {cluster.world_size} ranks "
                     f"(output max|Δ| {worst(ys, dense):.1e}).")


# ------------------------------------------------------------ exercise 2: exactly one all-gather
@checker
def check_one_all_gather(cluster, A_dense, name: str = "B_ex2", comm: str = "comm_ex2") -> bool:
    """Exercise 2: ``name`` is ``A`` redistributed so that each tp group holds whole rows of its dp
    shard (tp dim not sharded, dp dim still Shard(0)), at the price of exactly one all-gather."""
    counts = fetch(cluster, comm)[0].get(comm)
    if not isinstance(counts, dict):
        return say(False, f"{comm} is not defined: run the exercise cell first.")
    try:
        view = cluster.pull_dtensor(name)
    except (NameError, ValueError):
        return say(False, f"{name} is not a DTensor on every rank: keep `{name} = A_ex2.redistribute(...)`.")
    placements = view.placements
    if not close(view.full(), A_dense):
        return say(False, f"{name} does not hold the same numbers as A (max|Δ| {max_abs(view.full(), A_dense):.1e}).")
    if placements[0] != "Shard(0)":
        return say(False, f"{name} has placements {placements}: the dp dim (mesh dim 0) must stay Shard(0) "
                          "-- each dp replica keeps only its own rows.")
    if placements[1] != "Replicate()":
        return say(False, f"{name} has placements {placements}: the tp dim (mesh dim 1) is still "
                          f"{placements[1]}; every rank of a tp group should hold the whole rows.")
    if counts != {"all_gather": 1}:
        return say(False, f"the redistribution ran {counts or 'no collective'}; it should cost exactly one all_gather.")
    return say(True, f"{name} is {placements}: one all_gather over the tp dim, the dp shards untouched.")
