"""``python -m helpers.cluster.reaper OWNER_PID CLUSTER_ID PROFILE_DIR``: end a cluster with its owner.

Started by :func:`helpers.cluster.lifecycle.start_reaper` for a cluster that a notebook kernel
(``connect()``) or a ``lab`` session owns.  It checks the owner four times a second; when the
owner is gone -- a normal exit, a restart, a crash, ``kill -9`` -- it ends the cluster's
processes and removes its files, then exits.  When the cluster is stopped normally, the
reaper is ended with it (it carries the cluster's id, like the engines).
"""

from __future__ import annotations

import sys
import time

POLL = 0.25


def main(argv: list[str]) -> int:
    owner, cluster_id, profile_dir = int(argv[0]), argv[1], argv[2]
    from .lifecycle import clean_stale, pid_alive
    from .ref import ClusterRef

    while pid_alive(owner):
        time.sleep(POLL)
    clean_stale(ClusterRef(cluster_id, profile_dir))  # the owner is gone: what it left is stale
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
