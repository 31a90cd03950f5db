"""Device-mesh checks: a TP group that crosses hosts is warned about, placements that cannot
describe a tensor are refused -- before any rank waits on a peer.

The groups themselves (which ranks form each group, which cross hosts) are pure topology:
:mod:`helpers.common.topology` (``mesh_groups``, ``tp_groups_across_hosts``).
"""

from __future__ import annotations

import math
import warnings

from ..common.placements import describe
from ..common.topology import check_mesh, mesh_groups, tp_groups_across_hosts
from .checks import degrees_text

__all__ = ["TPLayoutWarning", "mesh_groups", "tp_groups_across_hosts", "warn_if_tp_crosses_hosts",
           "check_tp_in_node", "check_placements"]


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


def check_tp_in_node(shape, dim_names, ranks_per_node: int, tp_dim: str = "tp") -> None:
    """Refuse a mesh whose TP groups would not fit inside a node, before any rank builds it.

    Ranks fill the nodes in order (rank r on node r // ranks_per_node) and the mesh row-major, so
    the TP groups stay inside the nodes exactly when "tp" is the last dim and its size divides
    the ranks per node. The groups are :func:`tp_groups_across_hosts`'s.

    >>> check_tp_in_node((2, 2), ("fsdp", "tp"), ranks_per_node=2)
    >>> check_tp_in_node((1, 4), ("fsdp", "tp"), ranks_per_node=2)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ValueError: TP degree 4 does not divide the 2 ranks per node: ... pick a TP degree in {1, 2}
    >>> check_tp_in_node((2, 2), ("tp", "fsdp"), ranks_per_node=2)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ValueError: the TP group of ranks [0, 2] would span nodes [0, 1] ... put it last: mesh_dim_names=('fsdp', 'tp')
    """
    dims, names = check_mesh(shape, dim_names)
    if tp_dim not in names:
        raise ValueError(f"mesh has no dim named {tp_dim!r}; its dims are {names}")
    if not isinstance(ranks_per_node, int) or ranks_per_node < 1:
        raise ValueError(f"ranks_per_node must be a positive whole number, got {ranks_per_node!r}")
    tp = dims[names.index(tp_dim)]
    if ranks_per_node % tp:
        raise ValueError(f"TP degree {tp} does not divide the {ranks_per_node} ranks per node: some TP groups "
                         f"would cross a node boundary; pick a TP degree in {degrees_text(ranks_per_node)}")
    nodes = [r // ranks_per_node for r in range(math.prod(dims))]
    crossing = tp_groups_across_hosts(dims, names, nodes, tp_dim)
    if crossing:
        group = crossing[0]["ranks"]
        order = tuple(n for n in names if n != tp_dim) + (tp_dim,)
        raise ValueError(
            f"the TP group of ranks {group} would span nodes {sorted({nodes[r] for r in group})} "
            f"({ranks_per_node} ranks per node): ranks fill the mesh's last dim first, and \"{tp_dim}\" is "
            f"dim {names.index(tp_dim)} of {names}; put it last: mesh_dim_names={order}")


def check_placements(shape, placements, mesh_ndim: int) -> None:
    """Refuse placements that cannot describe a tensor of ``shape`` on a mesh of ``mesh_ndim`` dims.

    One placement per mesh dim; ``Shard(d)`` needs a dim d the tensor has. Raises ``ValueError``
    with the numbers, before ``distribute_tensor`` runs any collective.
    """
    shape = tuple(int(s) for s in shape)
    placements = tuple(placements)
    if len(placements) != mesh_ndim:
        raise ValueError(f"{len(placements)} placement(s) [{describe(placements)}] for a {mesh_ndim}-d mesh: give "
                         f"exactly one placement per mesh dim, e.g. "
                         f"[{', '.join(['Shard(0)'] + ['Replicate()'] * (mesh_ndim - 1))}]")
    nd = len(shape)
    for i, p in enumerate(placements):
        if type(p).__name__ == "Shard" and not -nd <= p.dim < nd:
            ok = ", ".join(f"Shard({d})" for d in range(nd)) or "none"
            raise ValueError(f"placement {i} is Shard({p.dim}) but the tensor has shape {shape} "
                             f"with {nd} dim(s); shardable dims: {ok} (or Replicate())")
