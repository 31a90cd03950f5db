"""Device-mesh layouts as plain data: which ranks form each group, and which groups cross hosts.

Pure functions of a mesh shape, its dim names and (optionally) each rank's host: they build no
process group and run no collective, so a layout can be checked -- in the notebook, on an engine
or in a batch script -- before any rank waits on a peer.

Ranks fill the mesh in row-major order, as ``init_device_mesh`` lays them out: for a mesh of
shape (2, 2) with dim names ("dp", "tp"), the tp groups are the rows [0, 1] and [2, 3] and the
dp groups are the columns [0, 2] and [1, 3].
"""

from __future__ import annotations

import math
import warnings

from ..common.numbers import divisors

__all__ = ["TPLayoutWarning", "mesh_groups", "tp_groups_across_hosts", "warn_if_tp_crosses_hosts",
           "check_tp_in_node", "check_placements"]


class TPLayoutWarning(UserWarning):
    """A tensor-parallel group spans several hosts: its collectives leave the fast in-node links."""


def _check_names(shape, dim_names) -> tuple[tuple[int, ...], tuple[str, ...]]:
    try:
        dims = tuple(int(d) for d in shape)
    except (TypeError, ValueError):
        raise TypeError(f"mesh shape must be a tuple of ints, got {shape!r}") from None
    if not dims or any(d <= 0 for d in dims):
        raise ValueError(f"mesh shape {dims} must have positive sizes, e.g. (4,) or (2, 2)")
    names = tuple(str(n) for n in dim_names)
    if len(names) != len(dims):
        raise ValueError(f"mesh shape {dims} has {len(dims)} dims but {len(names)} dim names "
                         f"{names}; give one name per dim")
    if len(set(names)) != len(names):
        raise ValueError(f"mesh dim names must be different, got {names}")
    return dims, names


def mesh_groups(shape, dim_names) -> dict[str, list[list[int]]]:
    """``{dim name: [ranks of each group along that dim]}`` for a row-major mesh.

    >>> mesh_groups((2, 2), ("dp", "tp"))
    {'dp': [[0, 2], [1, 3]], 'tp': [[0, 1], [2, 3]]}
    """
    dims, names = _check_names(shape, dim_names)
    strides = [math.prod(dims[i + 1:]) for i in range(len(dims))]
    out = {}
    for d, name in enumerate(names):
        others = [i for i in range(len(dims)) if i != d]
        groups = []
        for rest in _coords([dims[i] for i in others]):
            base = sum(c * strides[i] for c, i in zip(rest, others))
            groups.append([base + k * strides[d] for k in range(dims[d])])
        out[name] = groups
    return out


def _coords(sizes):
    if not sizes:
        yield ()
        return
    for c in range(sizes[0]):
        for rest in _coords(sizes[1:]):
            yield (c, *rest)


def tp_groups_across_hosts(shape, dim_names, hosts, tp_dim: str = "tp") -> list[dict]:
    """The groups along ``tp_dim`` whose ranks sit on more than one host.

    hosts: each rank's host name, a list indexed by rank (``[e["host"] for e in cluster.info()]``).
    Returns ``[{"ranks": [0, 2], "hosts": ["node0", "node1"]}, ...]``; empty when every TP group
    stays inside one host.

    >>> tp_groups_across_hosts((2, 2), ("tp", "dp"), ["n0", "n0", "n1", "n1"])
    [{'ranks': [0, 2], 'hosts': ['n0', 'n1']}, {'ranks': [1, 3], 'hosts': ['n0', 'n1']}]
    """
    dims, names = _check_names(shape, dim_names)
    hosts = [str(h) for h in hosts]
    if len(hosts) != math.prod(dims):
        raise ValueError(f"mesh shape {dims} has {math.prod(dims)} ranks but {len(hosts)} host names "
                         "were given; give one host name per rank, rank 0 first")
    if tp_dim not in names:
        raise ValueError(f"mesh has no dim named {tp_dim!r}; its dims are {names}")
    crossing = []
    for group in mesh_groups(dims, names)[tp_dim]:
        on = sorted({hosts[r] for r in group}, key=[hosts[r] for r in group].index)
        if len(on) > 1:
            crossing.append({"ranks": group, "hosts": on})
    return crossing


def warn_if_tp_crosses_hosts(shape, dim_names, hosts, tp_dim: str = "tp") -> list[dict]:
    """Warn (``TPLayoutWarning``) about every TP group that spans hosts; returns those groups.

    The usual cause is the order of the mesh dims: ``init_device_mesh`` fills the *last* dim with
    neighbouring ranks (the same node), so the TP dim belongs last: ("dp", "tp"), not ("tp", "dp").
    """
    crossing = tp_groups_across_hosts(shape, dim_names, hosts, tp_dim)
    if crossing:
        dims, names = _check_names(shape, dim_names)
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
    dims, names = _check_names(shape, dim_names)
    if tp_dim not in names:
        raise ValueError(f"mesh has no dim named {tp_dim!r}; its dims are {names}")
    if not isinstance(ranks_per_node, int) or ranks_per_node < 1:
        raise ValueError(f"ranks_per_node must be a positive whole number, got {ranks_per_node!r}")
    tp = dims[names.index(tp_dim)]
    if ranks_per_node % tp:
        ok = ", ".join(str(k) for k in divisors(ranks_per_node))
        raise ValueError(f"TP degree {tp} does not divide the {ranks_per_node} ranks per node: some TP groups "
                         f"would cross a node boundary; pick a TP degree in {{{ok}}}")
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
