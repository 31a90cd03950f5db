"""Topology, pure: who is rank r, on which host, node and device, over which backend; which
ranks form each group of a device mesh, and which TP groups would leave a node.

Pure functions of what the engines reported (:func:`helpers.engine.pg.probe`) or of a mesh
shape: no process, no torch, no network, so every branch (several hosts, MPI ranks, NCCL
refused) is unit-tested on one machine, and all is decided before any rank enters a collective.

Ranks fill a mesh in row-major order, as ``init_device_mesh`` lays them out: for a mesh of
shape (2, 2) with dim names ("dp", "tp"), the tp groups are the rows [0, 1] and [2, 3] and the
dp groups are the columns [0, 2] and [1, 3].
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

from .numbers import divisors

DEFAULT_CPU_ENGINES = 4  # the embedded default: a stand-in for one Derecho node (4 GPUs)
BACKENDS = ("gloo", "nccl")


@dataclass(frozen=True)
class EngineInfo:
    """One engine as the course sees it."""

    rank: int
    engine_id: int
    host: str
    pid: int
    device: str
    local_rank: int
    local_world_size: int = 1
    node: str = ""  # the node this rank belongs to: its host, or a simulated node ("node0", ...)


def default_n(gpus: int) -> int:
    """One engine per GPU on a machine with 4 or more; else 4 engines (sharing 1-3 GPUs, or CPU).

    A course about splitting layers needs more than one rank: on a one-GPU laptop or
    JupyterHub slot, 4 ranks share the GPU.

    >>> default_n(0), default_n(1), default_n(4), default_n(8)
    (4, 4, 4, 8)
    """
    return max(gpus, DEFAULT_CPU_ENGINES)


def device_for(backend: str, host_local_rank: int, gpus: int) -> str:
    """The device of a rank: its own GPU under NCCL; under gloo GPUs are shared round-robin
    (``cuda:(local_rank % gpus)``); CPU where there is none.

    >>> [device_for("gloo", r, 1) for r in range(4)]
    ['cuda:0', 'cuda:0', 'cuda:0', 'cuda:0']
    >>> device_for("nccl", 2, 4), device_for("gloo", 3, 2), device_for("gloo", 3, 0)
    ('cuda:2', 'cuda:1', 'cpu')
    """
    if backend == "nccl":
        return f"cuda:{host_local_rank}"
    return f"cuda:{host_local_rank % gpus}" if gpus > 0 else "cpu"


def layout_note(backend: str, engines: list[EngineInfo]) -> str:
    """One plain sentence on how the ranks map onto devices (shown by connect() and status).

    >>> e = [EngineInfo(r, r, "laptop", 0, "cuda:0", r) for r in range(4)]
    >>> layout_note("gloo", e)
    '4 ranks share 1 GPU over gloo: right for learning, slower than NCCL'
    """
    n = len(engines)
    gpus = {(e.host, e.device) for e in engines if e.device.startswith("cuda")}
    ranks = f"{n} rank{'s' if n != 1 else ''}"
    if not gpus:
        return f"{ranks} on CPU engines over gloo"
    if len(gpus) < n:
        return (f"{ranks} share {len(gpus)} GPU{'s' if len(gpus) != 1 else ''} over gloo: "
                "right for learning, slower than NCCL")
    return f"{ranks}, one GPU each, over {'NCCL' if backend == 'nccl' else backend}"


def check_min_ranks(world_size: int, min_ranks: int | None, note: str = "") -> None:
    """Refuse a cluster too small for a notebook, with the fix, before any cell runs.

    >>> check_min_ranks(1, 2, "one GPU, NCCL")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ValueError: this notebook needs at least 2 ranks, but the cluster has 1 (one GPU, NCCL); use connect(n=4) ...
    """
    if min_ranks is not None and world_size < min_ranks:
        k = max(min_ranks, DEFAULT_CPU_ENGINES)
        raise ValueError(
            f"this notebook needs at least {min_ranks} ranks, but the cluster has {world_size}"
            + (f" ({note})" if note else "")
            + f"; use connect(n={k}) ({k} ranks; where there are fewer GPUs they share them over gloo)")


def check_backend(backend) -> None:
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def check_n(n, *, backend: str | None = None, gpus: int = 0) -> int:
    """Refuse a bad engine count with a message that says what to do.

    >>> check_n("4")
    4
    >>> check_n(4, backend="nccl", gpus=2)
    Traceback (most recent call last):
    ValueError: NCCL needs one GPU per engine: asked for 4 engines but this node sees 2 GPU(s); use -n 2 or the gloo backend
    """
    if isinstance(n, bool) or not isinstance(n, int):
        try:
            n = int(str(n), 10)
        except ValueError:
            raise ValueError(
                f"number of engines must be a whole number, got {n!r}; e.g. -n 4"
            ) from None
    if n < 1:
        raise ValueError(f"number of engines must be at least 1, got {n}; e.g. -n 4")
    if backend == "nccl" and n > gpus:
        raise ValueError(
            f"NCCL needs one GPU per engine: asked for {n} engines but this node "
            f"sees {gpus} GPU(s); use -n {gpus} or the gloo backend"
            if gpus else
            "NCCL needs GPUs but this node sees none; use the gloo backend (CPU engines)"
        )
    return n


def rank_order(infos: list[dict]) -> list[dict]:
    """The probed engines in rank order: by MPI rank when every engine has a distinct one
    covering 0..N-1, else by engine id."""
    infos = sorted(infos, key=lambda i: i["engine_id"])
    mpi = [i.get("mpi_rank") for i in infos]
    if None not in mpi and sorted(mpi) == list(range(len(infos))):
        infos.sort(key=lambda i: i["mpi_rank"])
    return infos


def check_nodes(nodes, hosts: list[str]) -> None:
    """Refuse a simulated-node count that does not fit the engines (before anything starts).

    >>> check_nodes(3, ["vm"] * 4)
    Traceback (most recent call last):
    ValueError: nodes=3 does not divide the 4 engines; pick nodes in {1, 2, 4}
    """
    n = len(hosts)
    if isinstance(nodes, bool) or not isinstance(nodes, int) or nodes < 1:
        raise ValueError(f"nodes must be a whole number of nodes to simulate, got {nodes!r}; e.g. nodes=2")
    if len(set(hosts)) > 1:
        raise ValueError(f"this cluster already spans {len(set(hosts))} real hosts "
                         f"({', '.join(sorted(set(hosts)))}); nodes= simulates nodes on one host only: "
                         "drop it")
    if n % nodes:
        fits = ", ".join(map(str, divisors(n)))
        raise ValueError(f"nodes={nodes} does not divide the {n} engines; pick nodes in {{{fits}}}")


def node_names(hosts: list[str], nodes: int | None) -> list[str]:
    """The node of each rank: its host, or ``node0, node1, ...`` in blocks of n/nodes ranks.

    >>> node_names(["vm"] * 4, 2)
    ['node0', 'node0', 'node1', 'node1']
    """
    if nodes is None:
        return list(hosts)
    check_nodes(nodes, hosts)
    per_node = len(hosts) // nodes
    return [f"node{r // per_node}" for r in range(len(hosts))]


def plan_ranks(infos: list[dict], backend: str | None = None,
               nodes: int | None = None) -> tuple[str, list[EngineInfo]]:
    """Ranks, local ranks, backend and devices for the probed engines.

    ``infos``: one dict per engine with ``engine_id``, ``host``, ``pid``, ``cuda_count`` and
    (optionally) ``mpi_rank``.  NCCL is chosen when every engine can own a GPU of its host,
    and refused, with the host and counts, when asked for where it cannot (NCCL refuses two
    ranks on one GPU).  Otherwise gloo, with GPUs shared round-robin where a host has any.
    ``nodes``: simulate that many nodes on one host (ranks in contiguous blocks); local
    ranks then count within a simulated node, as torchrun's would on a real one.
    """
    check_backend(backend)
    infos = rank_order(infos)
    hosts = [i["host"] for i in infos]
    node = node_names(hosts, nodes)
    local_rank = [hosts[:r].count(h) for r, h in enumerate(hosts)]
    per_host = {h: hosts.count(h) for h in hosts}
    node_rank = [node[:r].count(x) for r, x in enumerate(node)]
    gpus_ok = bool(infos) and all(i["cuda_count"] >= per_host[i["host"]] for i in infos)
    if backend is None:
        backend = "nccl" if gpus_ok else "gloo"
    if backend == "nccl" and not gpus_ok:
        worst = min(infos, key=lambda i: i["cuda_count"] - per_host[i["host"]])
        raise ValueError(
            f"backend='nccl' needs one GPU per engine, but host {worst['host']} runs "
            f"{per_host[worst['host']]} engines and sees {worst['cuda_count']} GPU(s); "
            "use backend='gloo' or start one engine per GPU"
        )
    engines = [
        EngineInfo(
            rank=r, engine_id=i["engine_id"], host=i["host"], pid=i["pid"],
            device=device_for(backend, local_rank[r], i["cuda_count"]),
            local_rank=node_rank[r], local_world_size=node.count(node[r]), node=node[r],
        )
        for r, i in enumerate(infos)
    ]
    return backend, engines


def threads_per_engine(cpus: int, engines_on_host: int) -> int:
    """torch threads per engine so that N engines do not oversubscribe the host's cores.

    >>> threads_per_engine(2, 4), threads_per_engine(64, 4)
    (1, 16)
    """
    return max(1, cpus // max(1, engines_on_host))


# ------------------------------------------------------------------------------ mesh groups
def mesh_dims(shape, example: str = "(4,) or (2, 2)") -> tuple[int, ...]:
    """A mesh shape as a tuple of positive ints, refused (naming ``example``) otherwise."""
    try:
        dims = tuple(int(d) for d in shape)
    except (TypeError, ValueError):
        raise TypeError(f"mesh shape must be a tuple of ints, got {shape!r}") from None
    if not dims or any(d <= 0 for d in dims):
        raise ValueError(f"mesh shape {dims} must have positive sizes, e.g. {example}")
    return dims


def check_mesh(shape, dim_names) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """A mesh shape and its dim names as tuples, refused with the fix when they do not fit."""
    dims = mesh_dims(shape)
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
    dims, names = check_mesh(shape, dim_names)
    coords = list(itertools.product(*map(range, dims)))  # coords[r]: rank r's coordinate (row-major)
    # a group along dim d: the ranks whose coordinate agrees with `rest` in every other dim
    return {name: [[r for r, c in enumerate(coords) if c[:d] + c[d + 1:] == rest]
                   for rest in itertools.product(*map(range, dims[:d] + dims[d + 1:]))]
            for d, name in enumerate(names)}


def tp_groups_across_hosts(shape, dim_names, hosts, tp_dim: str = "tp") -> list[dict]:
    """The groups along ``tp_dim`` whose ranks sit on more than one host (or node).

    hosts: each rank's host (or node) name, a list indexed by rank (``cluster.nodes``).
    Returns ``[{"ranks": [0, 2], "hosts": ["node0", "node1"]}, ...]``; empty when every TP group
    stays inside one host.

    >>> tp_groups_across_hosts((2, 2), ("tp", "dp"), ["n0", "n0", "n1", "n1"])
    [{'ranks': [0, 2], 'hosts': ['n0', 'n1']}, {'ranks': [1, 3], 'hosts': ['n0', 'n1']}]
    """
    dims, names = check_mesh(shape, dim_names)
    hosts = [str(h) for h in hosts]
    if len(hosts) != math.prod(dims):
        raise ValueError(f"mesh shape {dims} has {math.prod(dims)} ranks but {len(hosts)} host names "
                         "were given; give one host name per rank, rank 0 first")
    if tp_dim not in names:
        raise ValueError(f"mesh has no dim named {tp_dim!r}; its dims are {names}")
    groups = mesh_groups(dims, names)[tp_dim]
    spans = [list(dict.fromkeys(hosts[r] for r in group)) for group in groups]  # each group's hosts, in rank order
    return [{"ranks": group, "hosts": on} for group, on in zip(groups, spans) if len(on) > 1]
