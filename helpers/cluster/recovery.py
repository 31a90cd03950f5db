"""The recovery protocol: a fast way back from a broken process group or a dead engine.

:class:`Recovery` (one per cluster: ``cluster.recovery``) is used by the ``%%px`` magics through
its methods only.  Every message ends with the one call that recovers: ``cluster.recover()``.
"""

from __future__ import annotations

import secrets
import socket
import time
from contextlib import suppress

from ..common.topology import EngineInfo
from ..engine import namespace as engine_ns
from ..engine import pg as engine_pg
from ..engine import watchdog as engine_watchdog
from .lifecycle import DEFAULT_START_TIMEOUT, on_this_host, wait_until

RECOVER = "cluster.recover()"


class CourseError(RuntimeError):
    """An error the course explains itself: shown as its message alone, no traceback."""

    def _render_traceback_(self) -> list[str]:  # IPython shows this instead of a traceback
        return [f"{type(self).__name__}: {self}"]


class DeadRankError(CourseError):
    """An engine (a rank) has died."""


class ClusterTakenError(CourseError):
    """Another notebook's ``connect()`` took the cluster over; this one's cell did not run."""


def busy_engines(client, targets="all") -> list[int]:
    """Engines running or queueing a task (asked of the controller: answers while they work)."""
    with suppress(Exception):
        status = client.queue_status(targets=targets, verbose=False)
        return [eid for eid, st in status.items() if isinstance(st, dict)
                and st.get("tasks", 0) + st.get("queue", 0) > 0]
    return []


class Recovery:
    """A cluster's way back: watchdogs to abort blocked collectives, dead ranks named, the
    process group rebuilt (variables kept) or every engine restarted (cells to re-run named).

    ``tpc``: the cluster it serves (its client, engines, ``init_distributed``, ``restart_engines``).
    """

    def __init__(self, tpc):
        self.tpc = tpc
        self.token = secrets.token_hex(16)              # proves an abort comes from this notebook
        self.watchdogs: dict[int, tuple[str, int]] = {}  # rank -> (address, port)
        self.px_cells: dict[int, None] = {}              # In[n] of the %%px cells run, in order

    def note_px_cell(self, execution_count: int) -> None:
        """A ``%%px`` cell ran (to name it if the engines must be rebuilt)."""
        self.px_cells[execution_count] = None  # a dict: each cell once, where it first ran

    def start_watchdogs(self, multi_host: bool) -> None:
        """One watchdog thread per engine (see helpers.engine.watchdog); it outlives groups."""
        tpc = self.tpc
        addrs = (tpc.view.apply_sync(engine_pg.host_address) if multi_host
                 else ["127.0.0.1"] * tpc.world_size)
        # a second notebook attaching reuses the first one's token
        known = tpc.client[tpc.engine_ids[0]].apply_sync(engine_ns.fetch_values, ["_tp_token"])
        self.token = known.get("_tp_token", self.token)
        tpc.view.push({"_tp_token": self.token}, block=True)
        futures = [tpc.client[e.engine_id].apply_async(engine_watchdog.start_watchdog, addr, self.token)
                   for e, addr in zip(tpc.engines, addrs)]
        self.watchdogs = {e.rank: (addr, f.get(timeout=30)) for e, addr, f in zip(tpc.engines, addrs, futures)}

    # ---- what is wrong
    def dead_ranks(self) -> list[EngineInfo]:
        """Engines of this cluster that are no longer registered (died, were killed)."""
        alive = set(self.tpc.client.ids)
        return [e for e in self.tpc.engines if e.engine_id not in alive]

    def check_alive(self) -> None:
        """Raise DeadRankError naming the dead ranks (called before every %%px cell)."""
        dead = self.dead_ranks()
        if dead:
            who = "; ".join(f"rank {e.rank} (engine {e.engine_id}, pid {e.pid} on {e.host})"
                            for e in dead)
            raise DeadRankError(
                f"{who} died (killed, out of memory, or crashed). Bring the cluster back to "
                f"{self.tpc.world_size} ranks with:  {RECOVER}   (engine variables are lost; "
                "it tells you which cells to re-run)"
            )

    def busy_ranks(self) -> list[int]:
        """Ranks whose engine is still running a task."""
        busy = busy_engines(self.tpc.client, self.tpc.engine_ids)
        return [e.rank for e in self.tpc.engines if e.engine_id in busy]

    # ---- the way back
    def abort_collectives(self, timeout: float = 2.0) -> None:
        """Shut down every rank's process-group sockets: blocked collectives fail at once."""
        for addr, port in self.watchdogs.values():
            with suppress(OSError), socket.create_connection((addr, port), timeout=timeout) as s:
                s.sendall(f"{self.token} abort\n".encode())
                s.recv(64)  # the watchdog answers once it has closed them (how many)

    def recover(self, timeout: float = DEFAULT_START_TIMEOUT) -> str:
        """:meth:`TPCluster.recover`; what is still blocked is aborted first, the group rebuilt
        on a fresh port.  Returns (and prints) what it did."""
        t0 = time.monotonic()
        dead = self.dead_ranks()
        msg = self._rebuild_group(t0) if not dead else self._restart_engines(dead, timeout, t0)
        self.tpc.activate()
        print(msg)
        return msg

    def _rebuild_group(self, t0: float) -> str:
        if self.busy_ranks():
            self.abort_collectives()
            wait_until(lambda: not self.busy_ranks(), 5)
        self.tpc.init_distributed(force=True)
        return (f"Process group rebuilt on all {self.tpc.world_size} ranks in {time.monotonic() - t0:.1f} s; "
                "every engine variable was kept.")

    def _restart_engines(self, dead: list[EngineInfo], timeout: float, t0: float) -> str:
        tpc = self.tpc
        lost = []
        with suppress(Exception):  # no survivor, or it cannot answer: the variables go unnamed
            survivor = next(e for e in tpc.engines if e not in dead)
            lost = tpc.client[survivor.engine_id].apply_sync(engine_ns.user_names)
        if tpc.cluster is None and not on_this_host(tpc.ref):
            raise DeadRankError(
                "an engine of a cluster on another node died; restart it there: "
                "./launch_cluster.sh stop && ./launch_cluster.sh start --pbs ..."
            )
        tpc.restart_engines(timeout=timeout)
        cells, self.px_cells = self.px_cells, {}  # kept if the restart failed
        ranks = ", ".join(str(e.rank) for e in dead)
        rerun = (f"Rebuild them by re-running the %%px cells In[{'], In['.join(map(str, cells))}] "
                 "in that order." if cells else
                 "Rebuild them by re-running the %%px cells after connect().")
        return (f"Rank(s) {ranks} had died: all {tpc.world_size} engines were restarted "
                f"(ranks 0..{tpc.world_size - 1}, engine ids {tpc.engine_ids}) with a new "
                f"process group in {time.monotonic() - t0:.1f} s.\n"
                f"Lost on the engines: {', '.join(lost) if lost else 'their variables'}.\n"
                + rerun)
