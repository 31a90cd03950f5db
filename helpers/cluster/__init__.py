"""The notebook side of the course's ipyparallel cluster (never imported on an engine).

* :mod:`.ref` -- :class:`ClusterRef`, one cluster's identity and the files it owns;
* :mod:`.lifecycle` -- starting, finding and stopping processes; the reaper (:mod:`.reaper`);
* :mod:`.tpcluster` -- :class:`TPCluster` (a :class:`helpers.common.api.ClusterAPI`) and :func:`connect`;
* :mod:`.magics` -- ``%%px`` with clear errors and interrupts;
* :mod:`.recovery` -- :class:`Recovery`, the way back from a broken group or a dead engine;
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
    ".magics": ("CollectiveError", "ProcessGroupError"),
    ".recovery": ("ClusterTakenError", "CourseError", "DeadRankError", "Recovery"),
    ".ref": ("ClusterRef",),
    ".tpcluster": ("DEFAULT_PG_TIMEOUT", "TPCluster", "connect", "probe_engines"),
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
