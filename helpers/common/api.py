"""The one cluster API: what a notebook may call on ``cluster``, live or in a batch job.

:class:`helpers.cluster.tpcluster.TPCluster` (a live ipyparallel cluster) and
:class:`helpers.engine.batch.BatchCluster` (a notebook run under torchrun, where every rank runs
the notebook's cells) implement it; ``helpers.connect()`` returns the one that fits, and
``tests/cluster/test_cluster_api.py`` runs the same cases against both.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, runtime_checkable

__all__ = ["ClusterAPI", "RankFacts"]


@runtime_checkable
class ClusterAPI(Protocol):
    """``cluster`` in a notebook.  Everything by rank is a list, rank 0 first.

    pull(name):         the variable ``name`` of every rank: CPU, detached, in its own dtype
                        (a DTensor: the rank's local shard), lists, tuples and dicts walked; a
                        name missing on some ranks raises ``NameError`` naming it and those ranks.
    pull_dtensor(name): the DTensor ``name`` as a :class:`helpers.reference.dtensor.DTensorView`;
                        ``.full()`` keeps its dtype, like ``full_tensor()``; something that is not
                        a DTensor on every rank raises ``ValueError`` saying which rank has what.
    push(**values):     the same values on every rank; push_by_rank(name, values): values[r] on r.
    run(code):          run ``code`` on every rank, as a ``%%px`` cell does.
    apply(func, ...):   ``func(*args, **kwargs)`` on every rank; results by rank.
    info():             one dict per rank: rank, engine id, host, pid, device, backend, ...
    """

    backend: str
    timeout: float
    # read-only (properties on both): by rank
    world_size: int
    engine_ids: list[int]
    devices: list[str]
    nodes: list[str]

    def info(self) -> list[dict]: ...

    def pull(self, name: str) -> list: ...

    def pull_dtensor(self, name: str) -> Any: ...

    def push(self, **values) -> None: ...

    def push_by_rank(self, name: str, values: list) -> None: ...

    def run(self, code: str) -> None: ...

    def apply(self, func: Callable, *args, **kwargs) -> list: ...

    def activate(self) -> None: ...

    def follow_cwd(self, folder: str | None = None) -> None: ...

    def shutdown(self, quiet: bool = False) -> None: ...


class RankFacts:
    """What both clusters derive from their ranks: ``engines`` (one
    :class:`helpers.common.topology.EngineInfo` per rank, rank 0 first) and ``backend``."""

    engines: list
    backend: str

    @property
    def world_size(self) -> int:
        return len(self.engines)

    @property
    def engine_ids(self) -> list[int]:
        """Engine ids in rank order (``engine_ids[r]`` runs rank r; in a batch job, the ranks)."""
        return [e.engine_id for e in self.engines]

    @property
    def devices(self) -> list[str]:
        return [e.device for e in self.engines]

    @property
    def nodes(self) -> list[str]:
        """The node of each rank: real host names, or ``node0, node1, ...`` when
        ``connect(nodes=...)`` simulates nodes on one host."""
        return [e.node for e in self.engines]

    def info(self) -> list[dict]:
        return [dict(vars(e), backend=self.backend) for e in self.engines]
