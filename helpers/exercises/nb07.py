"""Checker for notebook 07's exercise: one decode step's attention over this rank's slice of the
KV cache."""

from __future__ import annotations

import math

from .common import all_close, checker, close, f64, fetch, per_rank, say, worst

__all__ = ["check_decode_attention"]


def _attention(q, k, v, scale: bool = True, softmax: bool = True):
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    s = q @ k.transpose(-2, -1)
    if scale:
        s = s / math.sqrt(q.shape[-1])
    return (s.softmax(dim=-1) if softmax else s) @ v


@checker
def check_decode_attention(cluster, q_all, k_dense, v_dense, name: str = "y_ex") -> bool:
    """``name`` on rank r must be its query heads' attention output for the new token:
    softmax(q_r · K_rᵀ / √hd) · V_r over its cached kv heads, = the dense attention's heads r·h/p ….

    q_all: (B, h, 1, hd), the new token's queries for every head (the engines sliced their own);
    k_dense, v_dense: (B, n_kv, T, hd), the DENSE model's cache of the same layer and prompt.
    """
    p = cluster.world_size
    q, k, v = f64(q_all), f64(k_dense), f64(v_dense)
    h = q.shape[1]
    if h % p:
        return say(False, f"{h} query heads do not split over {p} ranks.")
    n = h // p
    per = _attention(q, k, v).split(n, dim=1)                         # rank r: (B, h/p, 1, hd), heads r·n …
    what = ("repeat the rank's kv heads to its query heads (repeat_interleave on dim 1), "
            "scores = q_i @ k_iᵀ / √head_dim, then y_ex = scores.softmax(-1) @ v_i.")
    ys = per_rank(fetch(cluster, name), name, per[0].shape, what)
    if all_close(ys, per):
        return say(True, f"every rank's {n} query heads attend over its own cache slice exactly as the dense "
                          f"model's do (max|Δ| {worst(ys, per):.1e}); no collective was needed: the heads "
                          "are independent until wo.")
    if all_close(ys, _attention(q, k, v, scale=False).split(n, dim=1)):
        return say(False, "right but for the scale: divide the scores by √head_dim before the softmax.")
    if all_close(ys, _attention(q, k, v, softmax=False).split(n, dim=1)):
        return say(False, "the scores are not normalised: apply .softmax(dim=-1) over the cached positions.")
    bad = [r for r, (y, w) in enumerate(zip(ys, per)) if not close(y, w)]
    return say(False, f"ranks {bad} differ from the dense heads (max|Δ| {worst(ys, per):.1e}). " + what)
