"""Helpers for the hands-on tensor-parallelism course.

The notebook kernel imports :func:`connect` from here; the engines import
:mod:`helpers.tp` and :mod:`helpers.engine`, which need nothing but torch (and IPython),
so they run under torchrun too.  Map of the package: helpers/README.md.
"""

import sys

__all__ = ["connect"]


def connect(n=None, **kwargs):
    """The notebook's cluster (a :class:`helpers.common.api.ClusterAPI`).

    In a notebook: :func:`helpers.cluster.tpcluster.connect` (attach to the cluster that
    ``launch_cluster.sh`` started, or start the local default; its arguments are documented
    there).  In a batch job written by ``launch_cluster.sh export``: that job's cluster
    (:class:`helpers.engine.batch.BatchCluster`), and ipyparallel is never imported.
    """
    batch = sys.modules.get("helpers.engine.batch")  # loaded only where a batch job runs
    job = batch.active_job() if batch is not None else None
    if job is not None:
        return job.connect(n, **kwargs)
    from .cluster.tpcluster import connect as connect_live  # lazy: no ipyparallel on an engine

    return connect_live(n, **kwargs)
