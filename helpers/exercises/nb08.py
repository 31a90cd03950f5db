"""Checker for notebook 08's exercise: a column-parallel layer whose backward overlaps its dX
all-reduce with the dW matmul."""

from __future__ import annotations

from .common import all_close, checker, f64, fetch, per_rank, say, worst

__all__ = ["check_overlapped_backward"]


@checker
def check_overlapped_backward(cluster, x_dense, w_dense, dy_dense) -> bool:
    """On rank r, ``dx_ex`` must be the full dL/dX = dY · W (all-reduced over the ranks) and
    ``dw_ex`` this rank's rows of dL/dW = dYᵀ · X; ``async_used`` (set by the exercise cell) says
    whether the all-reduce was launched with ``async_op=True`` and waited for after dW.

    x_dense: (N, D); w_dense: (H, D); dy_dense: (N, H), the dense upstream gradient.
    """
    p = cluster.world_size
    x, w, dy = f64(x_dense), f64(w_dense), f64(dy_dense)
    h = w.shape[0] // p
    dx_want = dy @ w
    dw_want = [dy_r.t() @ x for dy_r in dy.split(h, dim=1)]          # rank r: dY_r (N, H/p) -> (H/p, D)
    vals = fetch(cluster, "dx_ex", "dw_ex", "async_used")
    what = "Return (dx, dw) from overlapped_backward; dw = dy.t() @ x (this rank's rows of dW)."
    dxs, dws = per_rank(vals, "dx_ex", dx_want.shape, what), per_rank(vals, "dw_ex", dw_want[0].shape, what)
    if not all_close(dws, dw_want):
        return say(False, f"dW differs from the dense rows (max|Δ| {worst(dws, dw_want):.1e}): "
                          "dw = dy.t() @ x, with dy this rank's (N, H/p) slice of the upstream gradient.")
    if not all_close(dxs, dx_want):
        if all_close(dxs, [dy_r @ w_r for dy_r, w_r in zip(dy.split(h, dim=1), w.split(h))]):
            return say(False, "dX is this rank's partial sum dY_r · W_r: all-reduce it over the TP group "
                              "(dist.all_reduce(dx, group=group, async_op=True), then handle.wait()).")
        return say(False, f"dX differs from dense (max|Δ| {worst(dxs, dx_want):.1e}).")
    if not all(bool(v.get("async_used")) for v in vals):
        return say(False, "the gradients are right, but the all-reduce was not overlapped: launch it with "
                          "async_op=True BEFORE computing dW, and call handle.wait() after.")
    return say(True, f"dL/dX and every rank's dL/dW match dense (max|Δ| {worst(dxs, dx_want):.1e}); "
                     "the all-reduce was in flight while dW was computed.")
