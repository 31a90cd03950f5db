"""Device-mesh checks: a TP group that crosses hosts is warned about, placements that cannot
describe a tensor are refused -- before any rank waits on a peer.

The groups themselves (which ranks form each group, which cross hosts) are pure topology:
:mod:`helpers.common.topology` (``mesh_groups``, ``tp_groups_across_hosts``).
"""

from __future__ import annotations

import warnings

from ..common.topology import check_mesh, mesh_groups, tp_groups_across_hosts

__all__ = ["TPLayoutWarning", "mesh_groups", "tp_groups_across_hosts", "warn_if_tp_crosses_hosts",
           "check_placements"]


class TPLayoutWarning(UserWarning):
    """A tensor-parallel group spans several hosts: its collectives leave the fast in-node links."""


def warn_if_tp_crosses_hosts(shape, dim_names, hosts, tp_dim: str = "tp") -> list[dict]:
    """Warn (``TPLayoutWarning``) about every TP group that spans hosts; returns those groups.

    The usual cause is the order of the mesh dims: ``init_device_mesh`` fills the *last* dim with
    neighbouring ranks (the same node), so the TP dim belongs last: ("dp", "tp"), not ("tp", "dp").
    """
    crossing = tp_groups_across_hosts(shape, dim_names, hosts, tp_dim)
    if crossing:
        dims, names = check_mesh(shape, dim_names)
        groups = "; ".join(f"ranks {g['ranks']} span {', '.join(g['hosts'])}" for g in crossing)
        fix = ""
        if names[-1] != tp_dim:
            order = [i for i, n in enumerate(names) if n != tp_dim] + [names.index(tp_dim)]
            fix = (f" Put {tp_dim!r} last: mesh shape {tuple(dims[i] for i in order)} with dim names "
                   f"{tuple(names[i] for i in order)}.")
        warnings.warn(f"{len(crossing)} of the mesh's {tp_dim!r} groups cross hosts ({groups}): "
                      f"every TP all-reduce would leave the node.{fix}", TPLayoutWarning, stacklevel=2)
    return crossing


def check_placements(shape, placements, mesh_ndim: int) -> None:
    """Refuse placements that cannot describe a tensor of ``shape`` on a mesh of ``mesh_ndim`` dims.

    One placement per mesh dim; ``Shard(d)`` needs a dim d the tensor has. Raises ``ValueError``
    with the numbers, before ``distribute_tensor`` runs any collective.
    """
    shape = tuple(int(s) for s in shape)
    placements = tuple(placements)
    if len(placements) != mesh_ndim:
        raise ValueError(f"{len(placements)} placement(s) {_fmt(placements)} for a {mesh_ndim}-d mesh: give "
                         f"exactly one placement per mesh dim, e.g. "
                         f"{_fmt(('Shard(0)',) + ('Replicate()',) * (mesh_ndim - 1))}")
    nd = len(shape)
    for i, p in enumerate(placements):
        dim = getattr(p, "dim", None)
        if type(p).__name__ == "Shard" and dim is not None and not -nd <= dim < nd:
            ok = ", ".join(f"Shard({d})" for d in range(nd)) or "none"
            raise ValueError(f"placement {i} is Shard({dim}) but the tensor has shape {shape} "
                             f"with {nd} dim(s); shardable dims: {ok} (or Replicate())")


def _fmt(placements) -> str:
    return "(" + ", ".join(str(p) for p in placements) + ("," if len(placements) == 1 else "") + ")"
