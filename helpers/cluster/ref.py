"""One object for one cluster's identity: :class:`ClusterRef`, and the files it owns.

A cluster is known by its id and its ipyparallel profile dir; every path the course
writes for it (state, ipyparallel's cluster and connection files, PBS job script and id)
derives from those two, here and nowhere else.
"""

from __future__ import annotations

import getpass
import json
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ClusterRef:
    """Which cluster: ``cluster_id`` and the absolute ``profile_dir`` it lives in.

    >>> ref = ClusterRef("tp-ada", "/home/ada/.ipython/profile_tp")
    >>> ref.state_file
    '/home/ada/.ipython/profile_tp/security/tp-tp-ada.json'
    """

    cluster_id: str
    profile_dir: str

    def __post_init__(self):
        if not self.cluster_id or not isinstance(self.cluster_id, str):
            raise ValueError(f"cluster id must be a non-empty string, got {self.cluster_id!r}")
        object.__setattr__(self, "profile_dir", os.path.abspath(str(self.profile_dir)))

    @classmethod
    def of(cls, cluster_id: str | None = None, profile_dir: str | None = None) -> ClusterRef:
        """The given id / profile dir, or the learner's defaults: ``$TP_CLUSTER_ID`` or
        ``tp-<user>`` (one cluster per learner on a shared node), ``$TP_PROFILE_DIR`` or
        ``~/.ipython/profile_tp``."""
        return cls(cluster_id or os.environ.get("TP_CLUSTER_ID") or f"tp-{getpass.getuser()}",
                   profile_dir or os.environ.get("TP_PROFILE_DIR")
                   or os.path.join(os.path.expanduser("~"), ".ipython", "profile_tp"))

    def __str__(self) -> str:
        return repr(self.cluster_id)

    # ---- paths
    @property
    def security_dir(self) -> str:
        return os.path.join(self.profile_dir, "security")

    @property
    def log_dir(self) -> str:
        return os.path.join(self.profile_dir, "log")

    @property
    def state_file(self) -> str:
        """The course's own record: host, mode, n, owner pid, PBS job."""
        return os.path.join(self.security_dir, f"tp-{self.cluster_id}.json")

    @property
    def cluster_file(self) -> str:
        """ipyparallel's record of the cluster (controller and engine pids)."""
        return os.path.join(self.security_dir, f"cluster-{self.cluster_id}.json")

    @property
    def job_file(self) -> str:
        """The PBS job id of a cluster started with ``--pbs``."""
        return os.path.join(self.security_dir, f"tp-{self.cluster_id}.job")

    @property
    def pbs_script(self) -> str:
        return os.path.join(self.security_dir, f"tp-{self.cluster_id}.pbs")

    @property
    def pbs_log(self) -> str:
        return os.path.join(self.log_dir, f"tp-{self.cluster_id}.pbs.log")

    @property
    def driver_file(self) -> str:
        """Which notebook drives the cluster now (``connect()`` writes it, ``%%px`` reads it)."""
        return os.path.join(self.security_dir, f"tp-{self.cluster_id}.driver.json")

    def _write_json(self, path: str, data: dict) -> None:
        """Replace ``path`` at once (a reader never sees half of it), readable by its owner only."""
        os.makedirs(self.security_dir, mode=0o700, exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w", opener=lambda p, flags: os.open(p, flags, 0o600)) as f:
            json.dump(data, f)
        os.replace(tmp, path)

    @staticmethod
    def _read_json(path: str) -> dict:
        try:
            return json.loads(Path(path).read_text())
        except (OSError, ValueError):
            return {}

    # ---- the state file
    def write_state(self, **info) -> None:
        self._write_json(self.state_file, info)

    def read_state(self) -> dict:
        """The state file's contents; ``{}`` when there is none."""
        return self._read_json(self.state_file)

    # ---- the driver record: one small file, read before every %%px cell (no round trip)
    def write_driver(self, record: dict) -> None:
        self._write_json(self.driver_file, record)

    def read_driver(self) -> dict:
        """The driver record; ``{}`` when none (no notebook drives it, or no shared files)."""
        return self._read_json(self.driver_file)

    def clear_driver(self, driver_id: str) -> None:
        """Remove the record if ``driver_id`` still holds it (a notebook that is done)."""
        if self.read_driver().get("id") == driver_id:
            Path(self.driver_file).unlink(missing_ok=True)

    def has_files(self) -> bool:
        return os.path.exists(self.cluster_file) or os.path.exists(self.state_file)

    def remove_files(self) -> None:
        """The state file, the driver record, and ipyparallel's cluster and connection files."""
        connection = [os.path.join(self.security_dir, f"ipcontroller-{self.cluster_id}-{side}.json")
                      for side in ("engine", "client")]
        for path in [self.cluster_file, self.state_file, self.driver_file, *connection]:
            Path(path).unlink(missing_ok=True)
