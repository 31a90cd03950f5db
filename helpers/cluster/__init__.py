"""The notebook side of the course's ipyparallel cluster (never imported on an engine).

* :mod:`.ref` -- :class:`ClusterRef`, one cluster's identity and the files it owns;
* :mod:`.planning` -- pure rank planning: ranks, local ranks, backend, devices;
* :mod:`.lifecycle` -- starting, finding and stopping processes; the reaper (:mod:`.reaper`);
* :mod:`.session` -- :class:`TPCluster` and :func:`connect`;
* :mod:`.magics` -- ``%%px`` with clear errors, interrupts and the recovery protocol;
* :mod:`.cli` -- the command line behind ``launch_cluster.sh``.
"""

from .lifecycle import (
    DEFAULT_START_TIMEOUT,
    ENGINE_CMD,
    StopReport,
    clean_stale,
    cluster_processes,
    is_running,
    kill_processes,
    start_cluster,
    stop_cluster,
    visible_gpus,
)
from .magics import CollectiveError, CourseError, DeadRankError, ProcessGroupError
from .planning import BACKENDS, DEFAULT_CPU_ENGINES, EngineInfo, check_n, default_n, plan_ranks
from .ref import ClusterRef
from .session import DEFAULT_PG_TIMEOUT, TPCluster, connect, probe_engines

__all__ = [
    "ClusterRef", "connect", "TPCluster", "probe_engines", "start_cluster", "stop_cluster",
    "StopReport", "is_running", "clean_stale", "cluster_processes", "kill_processes",
    "visible_gpus", "check_n", "default_n", "plan_ranks", "EngineInfo", "CollectiveError",
    "DeadRankError", "ProcessGroupError", "CourseError", "BACKENDS", "DEFAULT_CPU_ENGINES",
    "DEFAULT_PG_TIMEOUT", "DEFAULT_START_TIMEOUT", "ENGINE_CMD",
]
