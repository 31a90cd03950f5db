"""From a DTensor to what this rank holds: its local shard, its placement as text, its gradients.

Duck-typed (``to_local``, ``placements``), so plain tensors pass through unchanged. Placements are
spelled as DTensor prints them: ``"Shard(0)"``, ``"Replicate()"``, ``"Partial()"``.
"""

from __future__ import annotations

__all__ = ["to_local", "local_grads"]

from ..common.placements import text_of


def to_local(t):
    """A DTensor's local shard (autograd-tracked); any other tensor as it is."""
    return t.to_local() if hasattr(t, "to_local") else t


def local_grads(model) -> dict:
    """{parameter name: (this rank's gradient on the CPU, layout)} for checking against dense.

    A gradient that DTensor left as a pending sum (``Partial``: the norms' weights under SP, whose
    reduction waits for the optimizer) is reduced here (an all-reduce: call on every rank).
    """
    out = {}
    for name, prm in model.named_parameters():
        g = prm.grad
        if g is None:
            continue
        if hasattr(g, "placements") and any(pl.is_partial() for pl in g.placements):
            from torch.distributed.tensor import Replicate
            g = g.redistribute(placements=[Replicate()] * len(g.placements))
        layout = text_of(g.placements[0]) if hasattr(g, "placements") else "Replicate()"   # on a 1-D mesh
        out[name] = (to_local(g).detach().cpu(), layout)
    return out
