"""The notebook side of the course's ipyparallel cluster (never imported on an engine).

Its modules are mapped in helpers/README.md.
"""

from __future__ import annotations

from ..common.lazy import lazy_exports

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
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
