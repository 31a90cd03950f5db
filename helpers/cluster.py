"""Find or start the course's ipyparallel cluster and set up torch.distributed on it.

The first code cell of every notebook is::

    from helpers import connect
    cluster = connect()   # attach to the cluster launch_cluster.sh started, or start the local default

``connect()`` returns a :class:`TPCluster`.  After it, every engine's namespace
holds ``torch``, ``dist``, ``rank``, ``world_size``, ``local_rank``, ``device``
and ``backend`` — the names a torchrun script has — and ``%%px`` runs a cell on
every engine at once.

Conventions (see DESIGN.md):

* rank is not engine id: ranks are 0..N-1 in the order of the *sorted* engine
  ids (ids change after a restart, ranks do not); under MPI, rank = MPI rank;
* the learner's kernel never joins the process group;
* one cluster per (profile dir, cluster id): two learners on one node each
  get their own (``tp-$USER`` by default), and the process-group rendezvous
  port is picked by the OS on rank 0, so two clusters never race for a port.
"""

from __future__ import annotations

import getpass
import secrets
import json
import os
import socket
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

import ipyparallel as ipp

from . import _engine

DEFAULT_CPU_ENGINES = 4  # the embedded default: a stand-in for one Derecho node (4 GPUs)
DEFAULT_PG_TIMEOUT = 30.0  # seconds a collective may wait before it fails (teaching-sized)
DEFAULT_START_TIMEOUT = 120.0  # seconds to wait for engines to register
BACKENDS = ("gloo", "nccl")

ENGINE_CMD = [sys.executable, "-m", "helpers.engine_main"]


# --------------------------------------------------------------------------- naming

def default_cluster_id() -> str:
    """``$TP_CLUSTER_ID`` or ``tp-<user>``: one cluster per learner on a shared node."""
    return os.environ.get("TP_CLUSTER_ID") or f"tp-{getpass.getuser()}"


def default_profile_dir() -> str:
    """``$TP_PROFILE_DIR`` or ``~/.ipython/profile_tp``."""
    return os.path.abspath(
        os.environ.get("TP_PROFILE_DIR")
        or os.path.join(os.path.expanduser("~"), ".ipython", "profile_tp")
    )


def visible_gpus() -> int:
    """Number of CUDA devices this process sees (0 without torch.cuda)."""
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:
        return 0


def default_n() -> int:
    """One engine per visible GPU; 4 CPU engines where there is none."""
    return visible_gpus() or DEFAULT_CPU_ENGINES


def check_n(n, *, backend=None) -> int:
    """Refuse a bad engine count with a message that says what to do."""
    if isinstance(n, bool) or not isinstance(n, int):
        try:
            n = int(str(n), 10)
        except ValueError:
            raise ValueError(
                f"number of engines must be a whole number, got {n!r}; e.g. -n 4"
            ) from None
    if n < 1:
        raise ValueError(f"number of engines must be at least 1, got {n}; e.g. -n 4")
    if backend == "nccl":
        gpus = visible_gpus()
        if n > gpus:
            raise ValueError(
                f"NCCL needs one GPU per engine: asked for {n} engines but this node "
                f"sees {gpus} GPU(s); use -n {gpus} or the gloo backend"
                if gpus else
                "NCCL needs GPUs but this node sees none; use the gloo backend (CPU engines)"
            )
    return n


def _state_file(profile_dir: str, cluster_id: str) -> str:
    return os.path.join(profile_dir, "security", f"tp-{cluster_id}.json")


def _write_state(profile_dir: str, cluster_id: str, **info) -> None:
    path = _state_file(profile_dir, cluster_id)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(info, f)


def read_state(profile_dir: str, cluster_id: str) -> dict | None:
    try:
        with open(_state_file(profile_dir, cluster_id)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _cluster_file(profile_dir: str, cluster_id: str) -> str:
    return os.path.join(profile_dir, "security", f"cluster-{cluster_id}.json")


# --------------------------------------------------------------------------- processes

def _pids_in_cluster_file(path: str) -> list[int]:
    """Every pid an ipyparallel cluster file records (controller, engines, mpiexec)."""
    try:
        with open(path) as f:
            d = json.load(f)
    except (OSError, ValueError):
        return []
    pids = []

    def walk(x):
        if isinstance(x, dict):
            for k, v in x.items():
                if k == "pid" and isinstance(v, int) and v > 0:
                    pids.append(v)
                else:
                    walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)

    walk(d)
    return pids


def _is_ours(pid: int, cluster_id: str) -> bool:
    """True if pid is a live process of this cluster (guards against reused pids)."""
    import psutil

    try:
        p = psutil.Process(pid)
        if p.status() == psutil.STATUS_ZOMBIE:
            return False
        env_id = p.environ().get("IPP_CLUSTER_ID")
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False
    return env_id == cluster_id


def _pid_alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _process_tree(pids: list[int]) -> list:
    import psutil

    procs = []
    for pid in pids:
        try:
            p = psutil.Process(pid)
            procs.append(p)
            procs.extend(p.children(recursive=True))
        except psutil.NoSuchProcess:
            pass
    return procs


def kill_processes(procs: list, grace: float = 3.0) -> None:
    """Terminate the given psutil processes, wait ``grace`` s, then kill what is left."""
    import psutil

    for p in procs:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=grace)


def cluster_processes(cluster_id: str, profile_dir: str | None = None) -> list:
    """Live processes (on this host) that belong to the cluster ``cluster_id``."""
    import psutil

    found = []
    for p in psutil.process_iter(["pid"]):
        if p.pid != os.getpid() and _is_ours(p.pid, cluster_id):
            if profile_dir is None:
                found.append(p)
                continue
            try:
                if p.environ().get("IPP_PROFILE_DIR") == profile_dir:
                    found.append(p)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
    return found


def _remove_files(profile_dir: str, cluster_id: str) -> None:
    sec = os.path.join(profile_dir, "security")
    for name in (
        f"cluster-{cluster_id}.json",
        f"tp-{cluster_id}.json",
        f"ipcontroller-{cluster_id}-engine.json",
        f"ipcontroller-{cluster_id}-client.json",
    ):
        try:
            os.remove(os.path.join(sec, name))
        except FileNotFoundError:
            pass


def _controller_alive(profile_dir: str, cluster_id: str) -> bool:
    """Is the controller recorded for this cluster running (and reachable)?"""
    state = read_state(profile_dir, cluster_id) or {}
    if state.get("host") not in (None, socket.gethostname()):
        # Started on another node (a PBS job): ask it over the network.
        return _ping(profile_dir, cluster_id)
    owner = state.get("owner_pid")
    if owner and not _pid_alive(owner):
        return False  # its notebook kernel or lab session crashed: stale
    try:
        with open(_cluster_file(profile_dir, cluster_id)) as f:
            d = json.load(f)
        pid = d["controller"]["state"]["pid"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return _is_ours(pid, cluster_id)


def _ping(profile_dir: str, cluster_id: str, timeout: float = 5.0) -> bool:
    try:
        client = ipp.Client(profile_dir=profile_dir, cluster_id=cluster_id, timeout=timeout)
    except Exception:
        return False
    client.close()
    return True


def clean_stale(profile_dir: str, cluster_id: str) -> bool:
    """Remove what a crashed cluster left behind; True if there was something."""
    has_files = os.path.exists(_cluster_file(profile_dir, cluster_id)) or read_state(
        profile_dir, cluster_id
    )
    leftovers = cluster_processes(cluster_id, profile_dir)
    if not has_files and not leftovers:
        return False
    kill_processes(_process_tree([p.pid for p in leftovers]))
    _remove_files(profile_dir, cluster_id)
    return True


def is_running(cluster_id: str | None = None, profile_dir: str | None = None) -> bool:
    cluster_id = cluster_id or default_cluster_id()
    profile_dir = os.path.abspath(profile_dir or default_profile_dir())
    return _controller_alive(profile_dir, cluster_id)


def start_cluster(
    n: int | None = None,
    *,
    mode: str = "local",
    cluster_id: str | None = None,
    profile_dir: str | None = None,
    controller_ip: str | None = None,
    mpi_args: list[str] | None = None,  # mode='mpi': [mpiexec, args...]
    daemon: bool = True,
    wait: bool = True,
    timeout: float = DEFAULT_START_TIMEOUT,
    owner_pid: int | None = None,
) -> ipp.Cluster:
    """Start a controller and ``n`` engines (``mode='local'`` or ``'mpi'``).

    ``daemon=True`` leaves them running after this process exits (what
    ``launch_cluster.sh start`` wants); ``daemon=False`` stops them at exit.
    A stale cluster of the same id (left by a crash) is cleaned first; a running
    one is an error (``RuntimeError``), so nothing is started twice.
    ``owner_pid``: the process whose death makes the cluster stale (the notebook
    kernel that started it, a ``lab`` session), so a crash leaves nothing behind
    for long: the next start or connect() cleans it up.
    """
    cluster_id = cluster_id or default_cluster_id()
    profile_dir = os.path.abspath(profile_dir or default_profile_dir())
    n = check_n(default_n() if n is None else n)
    if mode not in ("local", "mpi"):
        raise ValueError(f"mode must be 'local' or 'mpi', got {mode!r}")
    if _controller_alive(profile_dir, cluster_id):
        raise RuntimeError(
            f"cluster {cluster_id!r} is already running; "
            "stop it first with ./launch_cluster.sh stop"
        )
    clean_stale(profile_dir, cluster_id)
    os.makedirs(os.path.join(profile_dir, "security"), mode=0o700, exist_ok=True)

    from traitlets.config import Config

    config = Config()
    # torch is imported by the engines while the controller starts (engine_main).
    config.EngineLauncher.engine_cmd = list(ENGINE_CMD)
    # engines stop after this many missed pings: 50 s at 100 ms, as 50 x 1 s before
    config.EngineLauncher.engine_args = ["--IPEngine.max_heartbeat_misses=500"]
    if mode == "mpi":
        # mpi_args: [mpiexec, arg, ...] as chosen by helpers.launch.mpi_launch_args
        mpi_cmd, *rest = list(mpi_args or ["mpiexec"])
        config.MPILauncher.mpi_cmd = [mpi_cmd]
        config.MPILauncher.mpi_args = rest
    cluster = ipp.Cluster(
        n=n,
        cluster_id=cluster_id,
        profile_dir=profile_dir,
        engines="mpi" if mode == "mpi" else "local",
        controller_ip=controller_ip or "127.0.0.1",
        # An engine is registered on the 2nd heartbeat after it connects: beat every
        # 100 ms (not 1 s), with the same tolerance in seconds as before (10 s).
        controller_args=["--ping=100", "--HeartMonitor.max_heartmonitor_misses=100"],
        shutdown_atexit=not daemon,
        delay=0,
        # engines start at once and wait for the controller's connection file
        send_engines_connection_env=False,
        engine_timeout=int(timeout),
        config=config,
        log_level=30,
    )
    cluster.start_controller_sync()
    cluster.start_engines_sync(n)
    _write_state(
        profile_dir, cluster_id, host=socket.gethostname(), mode=mode, n=n,
        started=time.time(), job_id=os.environ.get("PBS_JOBID"), owner_pid=owner_pid,
    )
    if wait:
        client = cluster.connect_client_sync()
        try:
            client.wait_for_engines(n, timeout=timeout, interactive=False)
        except TimeoutError:
            got = len(client.ids)
            client.close()
            log = _engine_log_tail(cluster)
            cluster.stop_cluster_sync()
            clean_stale(profile_dir, cluster_id)
            raise RuntimeError(
                f"only {got} of {n} engines registered within {timeout:.0f} s; "
                f"nothing was left running.{log}"
            ) from None
        client.close()
    return cluster


def _engine_log_tail(cluster) -> str:
    try:
        out = "".join(es.get_output() for es in cluster.engines.values())
    except Exception:
        return ""
    lines = out.strip().splitlines()[-8:]
    return ("\nlast engine output:\n  " + "\n  ".join(lines)) if lines else ""


def stop_cluster(cluster_id: str | None = None, profile_dir: str | None = None) -> bool:
    """Stop every process of the cluster and remove its files. True if one was running."""
    cluster_id = cluster_id or default_cluster_id()
    profile_dir = os.path.abspath(profile_dir or default_profile_dir())
    state = read_state(profile_dir, cluster_id) or {}
    was_running = _controller_alive(profile_dir, cluster_id)
    if was_running and state.get("host") not in (None, socket.gethostname()):
        # On another node (a PBS job): ask engines and controller to exit.
        try:
            client = ipp.Client(profile_dir=profile_dir, cluster_id=cluster_id, timeout=10)
            client.shutdown(hub=True, block=True)
            client.close()
        except Exception:
            pass
    pids = [p for p in _pids_in_cluster_file(_cluster_file(profile_dir, cluster_id))
            if _is_ours(p, cluster_id)]
    procs = _process_tree(pids) + cluster_processes(cluster_id, profile_dir)
    kill_processes(list({p.pid: p for p in procs}.values()))
    _remove_files(profile_dir, cluster_id)
    return was_running or bool(procs)


# --------------------------------------------------------------------------- the object

@dataclass
class EngineInfo:
    """One engine as the course sees it."""

    rank: int
    engine_id: int
    host: str
    pid: int
    device: str
    local_rank: int


def probe_engines(client) -> list[dict]:
    """``_engine.probe()`` of every registered engine, with its engine id."""
    ids = sorted(client.ids)
    infos = client[ids].apply_sync(_engine.probe) if ids else []
    for eid, info in zip(ids, infos):
        info["engine_id"] = eid
    return infos


def plan_ranks(infos: list[dict], backend: str | None = None) -> tuple[str, list[EngineInfo]]:
    """Ranks, local ranks, backend and devices for the probed engines.

    Decided on the notebook side, before any rank enters a collective: rank =
    MPI rank when every engine has one, else position in the sorted engine ids.
    """
    n = len(infos)
    infos = sorted(infos, key=lambda i: i["engine_id"])
    mpi = [i["mpi_rank"] for i in infos]
    if None not in mpi and sorted(mpi) == list(range(n)):
        infos.sort(key=lambda i: i["mpi_rank"])
    hosts = [i["host"] for i in infos]
    local_rank = [hosts[:r].count(h) for r, h in enumerate(hosts)]
    per_host = {h: hosts.count(h) for h in hosts}
    gpus_ok = n > 0 and all(i["cuda_count"] >= per_host[i["host"]] for i in infos)
    if backend is None:
        backend = "nccl" if gpus_ok else "gloo"
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "nccl" and not gpus_ok:
        worst = min(infos, key=lambda i: i["cuda_count"] - per_host[i["host"]])
        raise ValueError(
            f"backend='nccl' needs one GPU per engine, but host {worst['host']} runs "
            f"{per_host[worst['host']]} engines and sees {worst['cuda_count']} GPU(s); "
            "use backend='gloo' or start one engine per GPU"
        )
    engines = [
        EngineInfo(
            rank=r, engine_id=i["engine_id"], host=i["host"], pid=i["pid"],
            device=(f"cuda:{local_rank[r]}" if backend == "nccl" else "cpu"),
            local_rank=local_rank[r],
        )
        for r, i in enumerate(infos)
    ]
    return backend, engines


def _by_engine(infos: list[dict], engines: list[EngineInfo]) -> list[dict]:
    by_id = {i["engine_id"]: i for i in infos}
    return [by_id[e.engine_id] for e in engines]


@dataclass
class TPCluster:
    """A connected cluster with torch.distributed initialized on every engine.

    ``view`` is a blocking DirectView over all engines in rank order; ``%%px``
    runs on it.  ``pull(name)`` returns that engine variable from every rank, as
    a list ordered by rank: the basis of every dense-reference check.
    """

    cluster: ipp.Cluster | None  # set when connect() started it
    client: ipp.Client
    cluster_id: str
    profile_dir: str
    owned: bool = False
    timeout: float = DEFAULT_PG_TIMEOUT
    backend: str = "gloo"
    engines: list[EngineInfo] = field(default_factory=list)
    _px_cells: list[int] = field(default_factory=list, repr=False)  # In[n] of %%px cells run
    _watchdogs: dict[int, tuple[str, int]] = field(default_factory=dict, repr=False)
    _token: str = field(default_factory=lambda: secrets.token_hex(16), repr=False)

    # ---- facts
    @property
    def world_size(self) -> int:
        return len(self.engines)

    @property
    def engine_ids(self) -> list[int]:
        """Engine ids in rank order (``engine_ids[r]`` runs rank r)."""
        return [e.engine_id for e in self.engines]

    @property
    def devices(self) -> list[str]:
        return [e.device for e in self.engines]

    @property
    def view(self):
        self.check_alive()  # a dead rank is named, not a bare KeyError
        view = self.client[self.engine_ids]
        view.block = True
        return view

    def info(self) -> list[dict]:
        """One dict per rank: rank, engine id, host, pid, device, backend."""
        return [dict(vars(e), backend=self.backend) for e in self.engines]

    def __repr__(self) -> str:
        hosts = sorted({e.host for e in self.engines})
        return (
            f"<TPCluster {self.cluster_id!r}: {self.world_size} ranks, backend "
            f"{self.backend}, devices {self.devices}, hosts {hosts}>"
        )

    # ---- data in and out, by rank
    def pull(self, name: str) -> list:
        """The engine variable ``name`` from every rank, as a list ordered by rank."""
        self.check_alive()
        futures = [self.client[eid].pull(name, block=False) for eid in self.engine_ids]
        return [f.get() for f in futures]

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
        self.check_alive()
        futures = [
            self.client[eid].push({name: v}, block=False)
            for eid, v in zip(self.engine_ids, values)
        ]
        for f in futures:
            f.get()

    def run(self, code: str) -> None:
        """Run ``code`` on every rank (what a ``%%px`` cell does), raising on error."""
        self.view.execute(code, block=True)

    def apply(self, func, *args, **kwargs) -> list:
        """Call ``func(*args, **kwargs)`` on every rank; results ordered by rank."""
        return self.view.apply_sync(func, *args, **kwargs)

    def activate(self) -> None:
        """Make ``%%px`` / ``%px`` run on this cluster's engines (inside IPython)."""
        try:
            from IPython import get_ipython
        except ImportError:
            return
        if get_ipython() is not None:
            from .faults import install_magics

            install_magics(self)

    # ---- the process group
    def init_distributed(self, backend: str | None = None, timeout: float | None = None,
                         threads: int | None = None, force: bool = False) -> None:
        """Initialize (or adopt) torch.distributed on every engine.

        Ranks follow the sorted engine ids (the MPI rank under mpiexec).  An
        already-initialized group of the right size is adopted, unless ``force``.
        """
        if timeout is not None:
            if not timeout > 0:
                raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
            self.timeout = float(timeout)
        infos = probe_engines(self.client)
        n = len(infos)
        if n == 0:
            raise RuntimeError(
                f"cluster {self.cluster_id!r} has no engines; restart it with "
                "./launch_cluster.sh stop && ./launch_cluster.sh start"
            )
        backend, self.engines = plan_ranks(infos, backend)
        self.backend = backend
        per_host = Counter(e.host for e in self.engines)
        adopt = (
            not force
            and all(i["initialized"] for i in infos)
            and all(i["world_size"] == n for i in infos)
            and all(i["rank"] == e.rank for i, e in zip(_by_engine(infos, self.engines), self.engines))
            and all(i["backend"] == backend for i in infos)
        )
        if adopt:
            self._start_watchdogs(per_host)
            return
        if threads is None:
            threads = max(1, min(i["cpus"] for i in infos) // max(per_host.values()))
        self.view.apply_sync(_engine.destroy)
        rank0 = self.client[self.engine_ids[0]]
        addr = "127.0.0.1" if len(per_host) == 1 else rank0.apply_sync(_engine.host_address)
        port = rank0.apply_sync(_engine.open_store, addr, n, self.timeout)
        futures = [
            self.client[e.engine_id].apply_async(
                _engine.init, e.rank, n, e.local_rank, addr, port, backend,
                self.timeout, threads,
            )
            for e in self.engines
        ]
        deadline = time.monotonic() + self.timeout + 30
        for e, f in zip(self.engines, futures):
            try:
                f.get(timeout=max(1.0, deadline - time.monotonic()))
            except ipp.error.TimeoutError:
                raise RuntimeError(
                    f"rank {e.rank} (engine {e.engine_id} on {e.host}) did not join the "
                    f"process group within {self.timeout:.0f} s"
                ) from None
        self._start_watchdogs(per_host)

    def _start_watchdogs(self, per_host) -> None:
        """One watchdog thread per engine (see faults.py); it outlives process groups."""
        addrs = self.view.apply_sync(_engine.host_address) if len(per_host) > 1 else None
        try:  # a second notebook attaching reuses the first one's token
            self._token = self.client[self.engine_ids[0]].pull("_tp_token", block=True)
        except Exception:
            pass
        self.view.push({"_tp_token": self._token}, block=True)
        futures = []
        for i, e in enumerate(self.engines):
            addr = addrs[i] if addrs else "127.0.0.1"
            futures.append((e.rank, addr, self.client[e.engine_id].apply_async(
                _engine.start_watchdog, addr, self._token)))
        self._watchdogs = {r: (addr, f.get(timeout=30)) for r, addr, f in futures}

    # ---- faults (see helpers/faults.py)
    def dead_ranks(self) -> list[EngineInfo]:
        """Engines of this cluster that are no longer registered (died, were killed)."""
        alive = set(self.client.ids)
        return [e for e in self.engines if e.engine_id not in alive]

    def check_alive(self) -> None:
        """Raise DeadRankError naming the dead ranks (called before every %%px cell)."""
        from .faults import RECOVER, DeadRankError

        dead = self.dead_ranks()
        if dead:
            who = "; ".join(f"rank {e.rank} (engine {e.engine_id}, pid {e.pid} on {e.host})"
                            for e in dead)
            raise DeadRankError(
                f"{who} died (killed, out of memory, or crashed). Bring the cluster back to "
                f"{self.world_size} ranks with:  {RECOVER}   (engine variables are lost; "
                "it tells you which cells to re-run)"
            )

    def busy_ranks(self) -> list[int]:
        """Ranks whose engine is still running a task."""
        try:
            status = self.client.queue_status(targets=self.engine_ids, verbose=False)
        except Exception:
            return []
        return [e.rank for e in self.engines
                if isinstance(status.get(e.engine_id), dict) and status[e.engine_id].get("tasks", 0) +
                status[e.engine_id].get("queue", 0) > 0]

    def abort_collectives(self, timeout: float = 2.0) -> dict[int, int]:
        """Shut down every rank's process-group sockets: blocked collectives fail at once."""
        import socket as _socket

        closed = {}
        for rank, (addr, port) in self._watchdogs.items():
            try:
                with _socket.create_connection((addr, port), timeout=timeout) as s:
                    s.sendall(f"{self._token} abort\n".encode())
                    closed[rank] = int(s.recv(64).decode().strip() or 0)
            except (OSError, ValueError):
                closed[rank] = -1
        return closed

    def recover(self, timeout: float = DEFAULT_START_TIMEOUT) -> str:
        """Get back to a working cluster, never touching this notebook's own variables.

        * every engine alive (after a timeout or an interrupted collective): abort
          what is still blocked, then rebuild only the process group on a fresh
          port; every engine variable is kept;
        * an engine died: restart all N engines (ranks 0..N-1, new engine ids) and
          rebuild the process group; says which engine variables were lost and which
          ``%%px`` cells to re-run.
        Returns (and prints) what it did.
        """
        from .faults import DeadRankError

        t0 = time.monotonic()
        dead = self.dead_ranks()
        if not dead:
            if self.busy_ranks():
                self.abort_collectives()
                deadline = time.monotonic() + 5
                while self.busy_ranks() and time.monotonic() < deadline:
                    time.sleep(0.05)
            self.init_distributed(force=True)
            msg = (f"Process group rebuilt on all {self.world_size} ranks in "
                   f"{time.monotonic() - t0:.1f} s; every engine variable was kept.")
        else:
            survivors = [e for e in self.engines if e not in dead]
            lost = []
            if survivors:
                try:
                    lost = self.client[survivors[0].engine_id].apply_sync(_engine.user_names)
                except Exception:
                    lost = []
            cells = list(self._px_cells)
            if self.cluster is None and (read_state(self.profile_dir, self.cluster_id) or {}).get(
                    "host") not in (None, socket.gethostname()):
                raise DeadRankError(
                    "an engine of a cluster on another node died; restart it there: "
                    "./launch_cluster.sh stop && ./launch_cluster.sh start --pbs ..."
                )
            self.restart_engines(timeout=timeout)
            self._px_cells.clear()
            ranks = ", ".join(str(e.rank) for e in dead)
            msg = (f"Rank(s) {ranks} had died: all {self.world_size} engines were restarted "
                   f"(ranks 0..{self.world_size - 1}, engine ids {self.engine_ids}) with a new "
                   f"process group in {time.monotonic() - t0:.1f} s.\n"
                   f"Lost on the engines: {', '.join(lost) if lost else 'their variables'}.\n"
                   + (f"Rebuild them by re-running the %%px cells In[{'], In['.join(map(str, cells))}] "
                      "in that order." if cells else
                      "Rebuild them by re-running the %%px cells after connect()."))
        self.activate()
        print(msg)
        return msg

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
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            new = [i for i in self.client.ids if i not in old]
            if len(new) >= n:
                break
            time.sleep(0.2)
        else:
            raise RuntimeError(
                f"only {len(new)} of {n} engines came back within {timeout:.0f} s; "
                "./launch_cluster.sh stop && ./launch_cluster.sh start"
            )
        # forget the dead ones so sorted(client.ids) is the new set
        deadline = time.monotonic() + 15
        while set(self.client.ids) & old and time.monotonic() < deadline:
            time.sleep(0.2)
        self.init_distributed(force=True)
        return self.engine_ids

    # ---- teardown
    def shutdown(self) -> None:
        """Stop the cluster if ``connect()`` started it; otherwise just disconnect."""
        _CONNECTIONS.pop((self.profile_dir, self.cluster_id), None)
        try:
            self.client.close()
        except Exception:
            pass
        if self.owned:
            if self.cluster is not None:
                try:
                    self.cluster.stop_cluster_sync()
                except Exception:
                    pass  # whatever survives is swept up below
                from ipyparallel.cluster import cluster as ipp_cluster

                ipp_cluster._atexit_clusters.discard(self.cluster)  # already stopped
            stop_cluster(self.cluster_id, self.profile_dir)


_CONNECTIONS: dict[tuple[str, str], TPCluster] = {}


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
) -> TPCluster:
    """Attach to the cluster ``launch_cluster.sh`` started, or start the local default.

    n:        engines wanted (default: the running cluster's size, or one per
              visible GPU, or 4 CPU engines).
    timeout:  seconds any collective may wait before it fails with an error
              (the process-group timeout); short, so a wrong collective ends fast.
    backend:  'nccl' when every engine owns a GPU, else 'gloo' (default: chosen).
    threads:  torch threads per engine (default: this host's cores / engines).

    Calling it again returns the same cluster.  A cluster that ``connect()``
    started itself is stopped by ``cluster.shutdown()`` or when this kernel exits.
    """
    cluster_id = cluster_id or default_cluster_id()
    profile_dir = os.path.abspath(profile_dir or default_profile_dir())
    if n is not None:
        n = check_n(n, backend=backend)
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")

    key = (profile_dir, cluster_id)
    existing = _CONNECTIONS.get(key)
    if existing is not None:
        if n is not None and n != existing.world_size:
            raise ValueError(
                f"this notebook is already connected to {existing.world_size} engines; "
                f"connect(n={n}) would need a new cluster: call cluster.shutdown() first"
            )
        if activate:
            existing.activate()
        return existing

    owned = False
    if _controller_alive(profile_dir, cluster_id):
        # Started by launch_cluster.sh (maybe in a PBS job on another node).
        cluster = None
        client = ipp.Client(profile_dir=profile_dir, cluster_id=cluster_id, timeout=30)
        expected = n or (read_state(profile_dir, cluster_id) or {}).get("n")
    else:
        try:
            cluster = start_cluster(
                n, cluster_id=cluster_id, profile_dir=profile_dir, daemon=False,
                wait=False, timeout=start_timeout, owner_pid=os.getpid(),
            )
        except Exception as e:
            raise RuntimeError(
                f"no cluster {cluster_id!r} is running and one could not be started: {e}\n"
                "Start one in a terminal with ./launch_cluster.sh start, then connect() again."
            ) from e
        owned = True
        client = cluster.connect_client_sync()
        expected = n or default_n()
    if expected:
        try:
            client.wait_for_engines(expected, timeout=start_timeout, interactive=False)
        except TimeoutError:
            got = len(client.ids)
            client.close()
            if owned:
                stop_cluster(cluster_id, profile_dir)
            raise RuntimeError(
                f"cluster {cluster_id!r}: only {got} of {expected} engines came up within "
                f"{start_timeout:.0f} s; check ./launch_cluster.sh status"
            ) from None
    if n is not None and len(client.ids) != n:
        got = len(client.ids)
        client.close()
        raise ValueError(
            f"cluster {cluster_id!r} runs {got} engines, not n={n}; call connect() "
            "without n, or restart it: ./launch_cluster.sh stop && "
            f"./launch_cluster.sh start -n {n}"
        )
    tc = TPCluster(cluster=cluster, client=client, cluster_id=cluster_id,
                   profile_dir=profile_dir, owned=owned, timeout=float(timeout))
    try:
        tc.init_distributed(backend=backend, timeout=timeout, threads=threads)
    except BaseException:
        tc.shutdown()
        raise
    _CONNECTIONS[key] = tc
    if owned:
        import atexit

        atexit.register(tc.shutdown)
    if activate:
        tc.activate()
    return tc
