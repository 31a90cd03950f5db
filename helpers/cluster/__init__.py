"""The notebook side of the course's ipyparallel cluster (never imported on an engine).

* :mod:`.ref` -- :class:`ClusterRef`, one cluster's identity and the files it owns;
* :mod:`.planning` -- pure rank planning: ranks, local ranks, backend, devices;
* :mod:`.lifecycle` -- starting, finding and stopping processes; the reaper (:mod:`.reaper`);
* :mod:`.session` -- :class:`TPCluster` and :func:`connect`;
* :mod:`.magics` -- ``%%px`` with clear errors, interrupts and the recovery protocol;
* :mod:`.cli` -- the command line behind ``launch_cluster.sh``.
"""

from __future__ import annotations

import importlib

# Loaded on first use (PEP 562): the reaper and the CLI's light commands import one module of
# this package without paying for ipyparallel and IPython.
_EXPORTS = {
    ".lifecycle": ("DEFAULT_START_TIMEOUT", "ENGINE_CMD", "StopReport", "clean_stale",
                   "cluster_processes", "is_running", "kill_processes", "start_cluster",
                   "stop_cluster", "visible_gpus"),
    ".magics": ("CollectiveError", "CourseError", "DeadRankError", "ProcessGroupError"),
    ".planning": ("BACKENDS", "DEFAULT_CPU_ENGINES", "EngineInfo", "check_n", "default_n", "plan_ranks"),
    ".ref": ("ClusterRef",),
    ".session": ("DEFAULT_PG_TIMEOUT", "TPCluster", "connect", "probe_engines"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
