"""The notebook's handle on its cluster: :class:`TPCluster` and :func:`connect`.

The first code cell of every notebook is::

    from helpers import connect
    cluster = connect()   # attach to the cluster launch_cluster.sh started, or start the local default

After it every engine has what a torchrun worker has (README.md lists it; :mod:`helpers.engine.pg`
sets it up), and ``%%px`` runs a cell on every engine at once.  The learner's kernel never joins
the process group.
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import time
import uuid
from collections import Counter
from contextlib import suppress
from dataclasses import dataclass, field

import ipyparallel as ipp
from IPython import get_ipython

from ..common.api import RankFacts
from ..common.topology import (
    EngineInfo,
    check_backend,
    check_min_ranks,
    check_n,
    check_nodes,
    layout_note,
    plan_ranks,
    threads_per_engine,
)
from ..engine import namespace as engine_ns
from ..engine import pg as engine_pg
from . import magics
from .lifecycle import (
    DEFAULT_START_TIMEOUT,
    client_of,
    is_running,
    start_cluster,
    stop_cluster,
    visible_gpus,
    wait_until,
)
from .recovery import ClusterTakenError, Recovery, busy_engines
from .ref import ClusterRef

DEFAULT_PG_TIMEOUT = 30.0  # seconds a collective may wait before it fails (teaching-sized)

#: this kernel process, as a driver of the cluster: a new notebook or a restarted kernel is a
#: new process, so a new driver, and its engines start as a fresh torchrun script would
DRIVER_ID = uuid.uuid4().hex
RELEASE_TIMEOUT = 3.0  # seconds a leaving notebook waits for the engines to drop its state


def probe_engines(client) -> list[dict]:
    """``helpers.engine.pg.probe()`` of every registered engine, with its engine id."""
    ids = sorted(client.ids)
    infos = client[ids].apply_sync(engine_pg.probe) if ids else []
    return [dict(info, engine_id=eid) for eid, info in zip(ids, infos)]


def _script_name() -> str | None:
    """The notebook's file name, when Jupyter tells the kernel (``sys.argv[0]`` on engines)."""
    path = os.environ.get("JPY_SESSION_NAME")
    return os.path.basename(path) if path else None


def _who(record: dict, me: str | None = None) -> str:
    """A driver record in words: ``notebook '03_tp_and_fsdp.ipynb'``, or ``another notebook``."""
    name = record.get("notebook")
    if name and name == me:
        return f"an earlier kernel of {name!r}"
    return f"notebook {name!r}" if name else "another notebook"


@dataclass(eq=False)
class TPCluster(RankFacts):
    """A connected cluster with torch.distributed initialized on every engine.

    One :class:`helpers.common.api.ClusterAPI`.  ``view`` is a blocking DirectView over all
    engines in rank order; ``%%px`` runs on it.  ``recovery``
    (:class:`helpers.cluster.recovery.Recovery`) gets it back from a fault.
    """

    ref: ClusterRef
    client: ipp.Client
    cluster: ipp.Cluster | None = None  # set when connect() started it
    owned: bool = False
    timeout: float = DEFAULT_PG_TIMEOUT
    backend: str = "gloo"
    engines: list[EngineInfo] = field(default_factory=list)
    recovery: Recovery = field(init=False, repr=False)
    _cwd: str | None = field(default=None, repr=False)  # the folder the engines follow
    _driver_seen: tuple = field(default=(), repr=False)  # (inode, mtime) of the record checked
    simulated_nodes: int | None = None  # connect(nodes=2): 2 nodes simulated on one host

    def __post_init__(self) -> None:
        self.recovery = Recovery(self)

    # ---- facts
    @property
    def cluster_id(self) -> str:
        return self.ref.cluster_id

    @property
    def profile_dir(self) -> str:
        return self.ref.profile_dir

    @property
    def layout_note(self) -> str:
        """How the ranks map onto devices, in one sentence ("4 ranks share 1 GPU over gloo: ...")."""
        return layout_note(self.backend, self.engines)

    @property
    def shares_gpus(self) -> bool:
        gpus = {(e.host, e.device) for e in self.engines if e.device.startswith("cuda")}
        return 0 < len(gpus) < self.world_size

    @property
    def view(self):
        self.recovery.check_alive()  # a dead rank is named, not a bare KeyError
        return self.client.direct_view(self.engine_ids, block=True)

    def __repr__(self) -> str:
        hosts = sorted({e.host for e in self.engines})
        sim = (f", {self.simulated_nodes} simulated nodes of {self.world_size // self.simulated_nodes}"
               if self.simulated_nodes else "")
        return (
            f"<TPCluster {self.cluster_id!r}: {self.layout_note}; devices {self.devices}, "
            f"hosts {hosts}{sim}>"
        )

    # ---- data in and out, by rank
    def pull(self, name: str) -> list:
        """As :class:`helpers.common.api.ClusterAPI` says, fetched from each engine at once."""
        self.recovery.check_alive()
        futures = [self.client[eid].apply_async(engine_ns.fetch_values, [name]) for eid in self.engine_ids]
        return engine_ns.pulled(name, [f.get() for f in futures])

    def push(self, **values) -> None:
        """Send the same values to every rank (``cluster.push(x=x)``)."""
        self.view.push(values, block=True)

    def push_by_rank(self, name: str, values: list) -> None:
        """Send ``values[r]`` to rank r as ``name``."""
        if len(values) != self.world_size:
            raise ValueError(
                f"push_by_rank needs one value per rank: got {len(values)} for "
                f"{self.world_size} ranks"
            )
        self.recovery.check_alive()
        self.view.scatter(name, values, flatten=True, block=False).get()  # values[r] alone to rank r's engine

    def pull_dtensor(self, name: str):
        """As :class:`helpers.common.api.ClusterAPI` says (:func:`helpers.reference.dtensor.pull_dtensor`)."""
        from ..reference.dtensor import pull_dtensor  # torch: loaded when first used, not by connect()

        return pull_dtensor(self, name)

    def run(self, code: str) -> None:
        """Run ``code`` on every rank (what a ``%%px`` cell does), raising on error."""
        self.follow_cwd()
        self.view.execute(code, block=True)

    def apply(self, func, *args, **kwargs) -> list:
        """Call ``func(*args, **kwargs)`` on every rank; results ordered by rank."""
        return self.view.apply_sync(func, *args, **kwargs)

    def activate(self) -> None:
        """Make ``%%px`` / ``%px`` (with the course's fault handling) run on this cluster's engines
        (inside IPython)."""
        shell = get_ipython()
        if shell is not None:
            shell.magics_manager.register(magics.TPParallelMagics(shell, self.view, self))

    def follow_cwd(self, folder: str | None = None) -> None:
        """Engines work in this notebook's folder (``os.getcwd()``) and import from it first.

        Called by ``connect()`` and before every ``%%px`` cell; costs a round trip only
        when the folder changed (``%cd``).
        """
        folder = os.path.abspath(folder or os.getcwd())
        if folder == self._cwd:
            return
        ok = self.view.apply_sync(engine_pg.follow_cwd, folder, self._cwd)
        self._cwd = folder
        missing = [e.rank for e, good in zip(self.engines, ok) if not good]
        if missing:
            print(f"note: {folder} does not exist on the host(s) of rank(s) "
                  f"{', '.join(map(str, missing))}; they keep their working directory")

    # ---- one notebook drives the cluster at a time
    def take_over(self, quiet: bool = False) -> None:
        """This notebook drives the cluster from now on (``connect()`` calls it).

        When another notebook (or an earlier kernel of this one) drove the engines, they start
        as a fresh script: ``%%px`` names back to ``connect()``'s, its process groups, meshes and
        caches released (:func:`helpers.engine.pg.claim`); says so in one line unless ``quiet``.
        """
        record = {"id": DRIVER_ID, "notebook": _script_name(), "pid": os.getpid(),
                  "host": socket.gethostname(), "since": time.time()}  # who drives it from here
        results = self.view.apply_sync(engine_pg.claim, record)
        self.ref.write_driver(record)
        self._driver_seen = ()
        resets = [r["reset"] for r in results if r["reset"] is not None]
        if resets and not quiet:
            previous = next((r["previous"] for r in results if r["previous"]), {})
            groups = max(r["groups"] for r in resets)
            print(f"connect(): reset the engines' state left by {_who(previous, record['notebook'])}"
                  f" ({max(r['names'] for r in resets)} names, {groups} process group"
                  f"{'' if groups == 1 else 's'}): this notebook starts as a fresh script")

    def check_driver(self) -> None:
        """Raise ``ClusterTakenError`` (one line) when another notebook has taken the cluster
        over since this one connected; nothing is sent to the engines.  Before every ``%%px``
        cell: a stat of the driver record, read only when it changed (microseconds)."""
        try:
            st = os.stat(self.ref.driver_file)
        except OSError:
            return  # no record (a cluster on a node whose files we do not share): no rule
        seen = (st.st_ino, st.st_mtime_ns, st.st_size)
        if seen == self._driver_seen:
            return
        record = self.ref.read_driver()
        if record.get("id", DRIVER_ID) == DRIVER_ID:
            self._driver_seen = seen
            return
        raise ClusterTakenError(
            f"{_who(record)} took this cluster over (its connect() reset the engines), so this "
            "cell did not run; to take the cluster back, run  cluster = connect()  here again")

    def _stop_other_cell(self) -> bool:
        """Another notebook's cell still running on the engines is interrupted (SIGINT), so
        that taking over does not wait for it.  True if a rank stayed busy (blocked in a
        collective, which SIGINT cannot stop): the group must then be rebuilt."""
        other = self.ref.read_driver()
        if not other or other.get("id") == DRIVER_ID or not busy_engines(self.client):
            return False
        with suppress(Exception):
            self.client.send_signal(signal.SIGINT, targets=list(self.client.ids), block=True)
        if wait_until(lambda: not busy_engines(self.client), 1.0):
            return False
        print(f"connect(): {_who(other)} has a cell blocked in a collective on the engines; "
              f"it ends at its process-group timeout, then the group is rebuilt")
        return True

    def _release(self) -> None:
        """This notebook is done: if it still drives the engines, what it made there is
        released (:func:`helpers.engine.pg.release`), and so is the driver record."""
        with suppress(Exception):  # engines busy or gone: the next connect() resets them
            if self.ref.read_driver().get("id", DRIVER_ID) != DRIVER_ID:
                return  # another notebook drives them now: its state is not ours to drop
            ids = [e for e in self.engine_ids if e in set(self.client.ids)]
            if ids:
                self.client[ids].apply_async(engine_pg.release, DRIVER_ID).get(timeout=RELEASE_TIMEOUT)
        self.ref.clear_driver(DRIVER_ID)

    # ---- the process group
    def init_distributed(self, backend: str | None = None, timeout: float | None = None,
                         threads: int | None = None, force: bool = False) -> None:
        """Initialize (or adopt) torch.distributed on every engine.

        Ranks follow the sorted engine ids (the MPI rank under mpiexec).  An
        already-initialized group of the right size is adopted, unless ``force``.
        """
        if timeout is not None:
            self.timeout = _check_timeout(timeout)
        infos = probe_engines(self.client)
        n = len(infos)
        if n == 0:
            raise RuntimeError(
                f"cluster {self.cluster_id!r} has no engines; restart it with "
                "./launch_cluster.sh stop && ./launch_cluster.sh start"
            )
        self.backend, self.engines = plan_ranks(infos, backend, nodes=self.simulated_nodes)
        per_host = Counter(e.host for e in self.engines)
        # the group is kept when it was made for this very layout (simulated nodes included):
        # a rebuilt world group costs a second, and a destroyed one lives on while an autograd
        # graph from a notebook still holds it (its sockets and threads with it)
        layout = {e.engine_id: (True, n, e.rank, self.backend, e.local_rank, e.local_world_size, e.device)
                  for e in self.engines}
        if force or not all((bool(i["initialized"]), i["world_size"], i["rank"], i["backend"], i.get("local_rank"),
                             i.get("local_world_size"), i.get("device")) == layout[i["engine_id"]] for i in infos):
            if threads is None:
                threads = threads_per_engine(min(i["cpus"] for i in infos), max(per_host.values()))
            self.view.apply_sync(engine_pg.destroy)
            rank0 = self.client[self.engine_ids[0]]
            addr = "127.0.0.1" if len(per_host) == 1 else rank0.apply_sync(engine_pg.host_address)
            port = rank0.apply_sync(engine_pg.open_store, addr, n, self.timeout)
            futures = [self.client[e.engine_id].apply_async(engine_pg.init, e.rank, n, e.local_rank, e.local_world_size,
                                                            addr, port, self.backend, e.device, self.timeout, threads,
                                                            _script_name())
                       for e in self.engines]
            deadline = time.monotonic() + self.timeout + 30
            for e, f in zip(self.engines, futures):
                try:
                    f.get(timeout=max(1.0, deadline - time.monotonic()))
                except ipp.error.TimeoutError:
                    raise RuntimeError(
                        f"rank {e.rank} (engine {e.engine_id} on {e.host}) did not join the "
                        f"process group within {self.timeout:.0f} s"
                    ) from None
        self.recovery.start_watchdogs(multi_host=len(per_host) > 1)

    # ---- faults (helpers.cluster.recovery)
    def recover(self, timeout: float = DEFAULT_START_TIMEOUT) -> str:
        """Get back to a working cluster, never touching this notebook's own variables.

        Every engine alive: the process group is rebuilt and every engine variable kept.
        An engine died: all N engines restart (ranks 0..N-1) and you are told which
        variables were lost and which ``%%px`` cells to re-run.  Returns what it did.
        """
        return self.recovery.recover(timeout)

    def restart_engines(self, timeout: float = DEFAULT_START_TIMEOUT) -> list[int]:
        """Replace every engine by a fresh one; ranks stay 0..N-1 (engine ids change).

        Engine variables are lost; the process group is rebuilt.  Returns the
        new engine ids in rank order.
        """
        n = self.world_size
        old = set(self.client.ids)
        if self.cluster is None:
            self.cluster = ipp.Cluster.from_file(
                profile_dir=self.profile_dir, cluster_id=self.cluster_id
            )
        self.cluster.restart_engines_sync()
        if not wait_until(lambda: len(set(self.client.ids) - old) >= n, timeout, poll=0.2):
            raise RuntimeError(
                f"only {len(set(self.client.ids) - old)} of {n} engines came back within {timeout:.0f} s; "
                "./launch_cluster.sh stop && ./launch_cluster.sh start"
            )
        # forget the dead ones so sorted(client.ids) is the new set
        wait_until(lambda: not set(self.client.ids) & old, 15, poll=0.2)
        self._cwd = None
        self.init_distributed(force=True)
        self.take_over(quiet=True)  # the new engines know who drives them
        self.follow_cwd()
        return self.engine_ids

    # ---- teardown
    def shutdown(self, quiet: bool = False) -> None:
        """Stop the cluster if ``connect()`` started it; otherwise just disconnect.

        Prints one line (none with ``quiet``); engine output is shown only when an engine
        had to be ended because it would not exit.
        """
        if _CONNECTIONS.get(self.ref) is self:
            del _CONNECTIONS[self.ref]
        atexit.unregister(self.shutdown)
        if self.owned:
            line = stop_cluster(self.ref, client=self.client, cluster=self.cluster).line(self.ref)
            self.owned = False
        else:
            self._release()
            line = f"disconnected from cluster {self.ref} (it keeps running: ./launch_cluster.sh stop ends it)"
        with suppress(Exception):
            self.client.close()
        if not quiet:
            print(line)


_CONNECTIONS: dict[ClusterRef, TPCluster] = {}


def connect(
    n: int | None = None,
    *,
    timeout: float = DEFAULT_PG_TIMEOUT,
    backend: str | None = None,
    threads: int | None = None,
    cluster_id: str | None = None,
    profile_dir: str | None = None,
    start_timeout: float = DEFAULT_START_TIMEOUT,
    activate: bool = True,
    nodes: int | None = None,
    min_ranks: int | None = None,
) -> TPCluster:
    """Attach to the cluster ``launch_cluster.sh`` started, or start the local default.

    n:        engines wanted (default: the running cluster's size, or one per
              visible GPU, or 4 CPU engines).
    timeout:  seconds any collective may wait before it fails with an error
              (the process-group timeout); short, so a wrong collective ends fast.
    backend:  'nccl' when every engine owns a GPU, else 'gloo' (default: chosen).
    threads:  torch threads per engine (default: this host's cores / engines).
    nodes:    simulate this many nodes on one host (``connect(n=4, nodes=2)``: 2 nodes x
              2 ranks); ``cluster.nodes`` and each engine's LOCAL_RANK follow them.
    min_ranks: the fewest ranks the notebook needs; a smaller cluster is refused with the
              fix (``connect(n=4)``) before any cell runs.

    With fewer GPUs than engines (a one-GPU laptop), the engines share the GPUs over gloo
    (``cuda:(local_rank % gpus)``), and connect() says so in one line.

    One notebook drives the cluster at a time: the last ``connect()`` takes it over.  When
    another notebook (or an earlier kernel of this one) drove the engines, they start as a
    fresh script (names, process groups and meshes it made are released), and the other
    notebook's next ``%%px`` cell refuses to run, in one line.

    Calling it again returns the same cluster, its engine state kept.  A cluster that ``connect()``
    started itself is stopped by ``cluster.shutdown()`` or when this kernel exits
    (a crashed kernel's cluster is ended by a reaper within a second).
    """
    ref = ClusterRef.of(cluster_id, profile_dir)
    n = _check_arguments(n, timeout, backend, nodes, min_ranks)
    existing = _CONNECTIONS.get(ref)
    if existing is not None:
        return _reconnect(existing, n, nodes, min_ranks, activate)
    client, cluster, expected = _open_client(ref, n, start_timeout)
    tc = TPCluster(ref=ref, client=client, cluster=cluster, owned=cluster is not None,
                   timeout=float(timeout), simulated_nodes=nodes)
    try:  # the one cleanup path: whatever fails, shutdown() closes the client, stops what we started
        _check_engines(tc, n, expected, start_timeout, min_ranks)
        stuck = tc._stop_other_cell()
        tc.init_distributed(backend=backend, timeout=timeout, threads=threads, force=stuck)
        tc.take_over()
        tc.follow_cwd()
    except BaseException:
        tc.shutdown(quiet=True)
        raise
    _CONNECTIONS[ref] = tc
    atexit.register(tc.shutdown, quiet=True)  # owned: stop it; attached: release what this notebook made
    if tc.shares_gpus:
        print(tc.layout_note)
    if activate:
        tc.activate()
    return tc


def _check_arguments(n, timeout, backend, nodes, min_ranks) -> int | None:
    """Refuse bad arguments before anything starts; ``n`` as an int (or None)."""
    check_backend(backend)
    _check_timeout(timeout)
    if n is None:
        return None
    n = check_n(n, backend=backend, gpus=visible_gpus() if backend == "nccl" else 0)
    if nodes is not None:
        check_nodes(nodes, ["here"] * n)
    check_min_ranks(n, min_ranks)
    return n


def _check_timeout(timeout) -> float:
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    return float(timeout)


def _reconnect(tc: TPCluster, n, nodes, min_ranks, activate: bool) -> TPCluster:
    """``connect()`` again in the same kernel: the same cluster (with new simulated nodes)."""
    if n is not None and n != tc.world_size:
        raise ValueError(
            f"this notebook is already connected to {tc.world_size} engines; "
            f"connect(n={n}) would need a new cluster: call cluster.shutdown() first"
        )
    stuck = tc._stop_other_cell()
    if stuck or (nodes != tc.simulated_nodes and (nodes or tc.simulated_nodes)):
        tc.simulated_nodes = nodes
        tc.init_distributed(force=True)  # the new layout (new local ranks), or a stuck group
    tc.take_over()  # the same kernel again: its state is kept, unless another took over since
    check_min_ranks(tc.world_size, min_ranks, tc.layout_note)
    if activate:
        tc.activate()
    tc.follow_cwd()
    return tc


def _open_client(ref: ClusterRef, n, start_timeout: float):
    """(client, the cluster started here or None, how many engines to wait for).

    A running cluster (``launch_cluster.sh start``, maybe in a PBS job on another node) is
    attached to; otherwise one is started for this kernel, ended with it.
    """
    if is_running(ref):
        return client_of(ref, timeout=30), None, n or ref.read_state().get("n")
    try:
        cluster = start_cluster(ref, n, daemon=False, wait=False, timeout=start_timeout,
                                owner_pid=os.getpid())
    except Exception as e:
        raise RuntimeError(
            f"no cluster {ref} is running and one could not be started: {e}\n"
            "Start one in a terminal with ./launch_cluster.sh start, then connect() again."
        ) from e
    try:
        return cluster.connect_client_sync(), cluster, cluster.n
    except BaseException:
        stop_cluster(ref, cluster=cluster)
        raise


def _check_engines(tc: TPCluster, n, expected, start_timeout: float, min_ranks) -> None:
    """Wait for the engines; refuse a cluster of the wrong size, with the fix."""
    if expected:
        try:
            tc.client.wait_for_engines(expected, timeout=start_timeout, interactive=False)
        except TimeoutError:
            raise RuntimeError(
                f"cluster {tc.ref}: only {len(tc.client.ids)} of {expected} engines came up within "
                f"{start_timeout:.0f} s; check ./launch_cluster.sh status"
            ) from None
    got = len(tc.client.ids)
    check_min_ranks(got, min_ranks, f"cluster {tc.ref}")
    if n is not None and got != n:
        raise ValueError(
            f"cluster {tc.ref} runs {got} engines, not n={n}; call connect() "
            "without n, or restart it: ./launch_cluster.sh stop && "
            f"./launch_cluster.sh start -n {n}"
        )
