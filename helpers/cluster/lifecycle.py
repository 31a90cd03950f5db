"""Starting, finding and stopping a cluster's processes: controller, engines, nannies, reaper.

Everything we start, we stop:

* ``stop_cluster`` asks each engine to exit on its own (exit status 0, nothing printed), then
  ends whatever is left, and removes the cluster's files;
* a cluster started for a notebook or a ``lab`` session has an *owner*; a small reaper process
  (:mod:`helpers.cluster.reaper`) ends the cluster within a second of its owner's death, a
  crash included;
* a stale cluster (its owner died before the reaper could act) is cleaned by the next
  ``start`` or ``connect()``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from contextlib import ExitStack, suppress
from dataclasses import astuple, dataclass, field
from pathlib import Path

import psutil

from ..common.topology import check_n, default_n
from .ref import ClusterRef

DEFAULT_START_TIMEOUT = 120.0  # seconds to wait for engines to register
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENGINE_CMD = [sys.executable, "-m", "helpers.engine.main"]
STOP_GRACE = 2.0  # seconds engines get to exit on their own before they are ended
TERM_GRACE = 5.0  # seconds from SIGTERM to SIGKILL at a stop (a loaded controller takes ~3 s)


def visible_gpus() -> int:
    """Number of CUDA devices this process sees (0 without torch.cuda)."""
    with suppress(Exception):
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    return 0


def wait_until(done, seconds: float, poll: float = 0.05) -> bool:
    """Ask ``done()`` every ``poll`` s until it is true (True) or ``seconds`` have passed (False)."""
    deadline = time.monotonic() + seconds
    while not done():
        if time.monotonic() > deadline:
            return False
        time.sleep(poll)
    return True


# --------------------------------------------------------------------------- processes
def _recorded_pids(ref: ClusterRef) -> list[int]:
    """Pids of this cluster's live processes that its ipyparallel cluster file records (controller, engines, mpiexec)."""
    found = []

    def note_pid(obj: dict) -> dict:  # each JSON object's "pid", noted as json.loads builds the object
        found.append(obj.get("pid"))
        return obj

    with suppress(OSError, ValueError):
        json.loads(Path(ref.cluster_file).read_text(), object_hook=note_pid)
        return [p for p in found if isinstance(p, int) and p > 0
                and _belongs(p, ref.cluster_id, ref.profile_dir, unset_ok=True)]
    return []


def _belongs(p, cluster_id: str, profile_dir: str | None, unset_ok: bool = False) -> bool:
    """Is process ``p`` (psutil's, or a pid) alive (not a zombie) and of this cluster (by its
    environment)?  ``profile_dir=None``: of any profile dir; ``unset_ok``: a process without
    IPP_PROFILE_DIR counts too (a pid the cluster file names). Guards against reused pids."""
    try:
        p = p if isinstance(p, psutil.Process) else psutil.Process(p)
        if p.status() == psutil.STATUS_ZOMBIE:
            return False
        env = p.environ()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False
    return env.get("IPP_CLUSTER_ID") == cluster_id and (
        profile_dir is None or env.get("IPP_PROFILE_DIR", profile_dir if unset_ok else None) == profile_dir)


def pid_alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def process_tree(pids: list[int]) -> list:
    procs = []
    for pid in pids:
        with suppress(psutil.NoSuchProcess):
            p = psutil.Process(pid)
            procs += [p, *p.children(recursive=True)]
    return procs


def kill_processes(procs: list, grace: float = 1.0) -> list:
    """Terminate the given psutil processes, wait ``grace`` s, then kill what is left.

    Returns the processes that had to be killed (they ignored SIGTERM).
    """
    for p in procs:
        with suppress(psutil.NoSuchProcess):
            p.terminate()
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for p in alive:
        with suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(alive, timeout=grace)
    return alive


def cluster_processes(ref_or_id) -> list:
    """Live processes (on this host) that belong to a cluster: ``cluster_processes(ref)``, or
    ``cluster_processes(cluster_id)`` for every profile dir."""
    cluster_id, profile_dir = astuple(ref_or_id) if isinstance(ref_or_id, ClusterRef) else (ref_or_id, None)
    return [p for p in psutil.process_iter(["pid"])
            if p.pid != os.getpid() and _belongs(p, cluster_id, profile_dir)]


def client_of(ref: ClusterRef, timeout: float):
    """An ipyparallel client of the cluster (raises when its controller cannot be reached)."""
    import ipyparallel as ipp

    return ipp.Client(profile_dir=ref.profile_dir, cluster_id=ref.cluster_id, timeout=timeout)


def on_this_host(ref: ClusterRef) -> bool:
    """Was the cluster started on this host (not in a PBS job on another node)?"""
    return ref.read_state().get("host") in (None, socket.gethostname())


def is_running(ref: ClusterRef) -> bool:
    """Is the controller recorded for this cluster running (and reachable)?"""
    if not on_this_host(ref):  # started on another node (a PBS job): ask it over the network
        with suppress(Exception), client_of(ref, timeout=5):
            return True
        return False
    owner = ref.read_state().get("owner_pid")
    if owner and not pid_alive(owner):
        return False  # its notebook kernel or lab session crashed: stale
    with suppress(OSError, ValueError, KeyError, TypeError):
        pid = json.loads(Path(ref.cluster_file).read_text())["controller"]["state"]["pid"]
        return _belongs(pid, ref.cluster_id, ref.profile_dir, unset_ok=True)
    return False


def clean_stale(ref: ClusterRef) -> bool:
    """Remove what a crashed cluster left behind; True if there was something."""
    leftovers = cluster_processes(ref)
    if not ref.has_files() and not leftovers:
        return False
    kill_processes(process_tree([p.pid for p in leftovers]))
    ref.remove_files()
    return True


# --------------------------------------------------------------------------- start
def start_cluster(
    ref: ClusterRef,
    n: int | None = None,
    *,
    controller_ip: str | None = None,
    mpi_args: list[str] | None = None,  # MPI engines: [mpiexec, args...] (cli.mpi_launch_args)
    daemon: bool = True,
    wait: bool = True,
    timeout: float = DEFAULT_START_TIMEOUT,
    owner_pid: int | None = None,
):
    """Start a controller and ``n`` engines (local ones, or MPI ones with ``mpi_args``).

    ``daemon=True`` leaves them running after this process exits (what
    ``launch_cluster.sh start`` wants); ``daemon=False`` stops them at exit.
    A stale cluster of the same id (left by a crash) is cleaned first; a running
    one is an error (``RuntimeError``), so nothing is started twice.
    ``owner_pid``: the process whose death ends the cluster (the notebook kernel that
    started it, a ``lab`` session): a reaper watches it.
    Returns the ``ipyparallel.Cluster``.
    """
    import ipyparallel as ipp
    from traitlets.config import Config

    n = check_n(default_n(visible_gpus()) if n is None else n)
    if is_running(ref):
        raise RuntimeError(
            f"cluster {ref} is already running; stop it first with ./launch_cluster.sh stop"
        )
    clean_stale(ref)
    mode = "mpi" if mpi_args else "local"
    os.makedirs(ref.security_dir, mode=0o700, exist_ok=True)

    config = Config()
    # torch is imported by the engines while the controller starts (helpers.engine.main).
    config.EngineLauncher.engine_cmd = list(ENGINE_CMD)
    # engines stop after this many missed pings: 50 s at 100 ms, as 50 x 1 s before
    config.EngineLauncher.engine_args = ["--IPEngine.max_heartbeat_misses=500"]
    if mpi_args:
        config.MPILauncher.mpi_cmd = mpi_args[:1]
        config.MPILauncher.mpi_args = mpi_args[1:]
    cluster = ipp.Cluster(
        n=n,
        cluster_id=ref.cluster_id,
        profile_dir=ref.profile_dir,
        engines=mode,
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
        # ipyparallel logs a stopped process's output as a warning; we show it only
        # when something failed (stop_cluster's report)
        log_level=40,
    )
    cluster.start_controller_sync()
    cluster.start_engines_sync(n)
    ref.write_state(host=socket.gethostname(), mode=mode, n=n, started=time.time(),
                    job_id=os.environ.get("PBS_JOBID"), owner_pid=owner_pid)
    if owner_pid:
        start_reaper(ref, owner_pid)
    if wait:
        with cluster.connect_client_sync() as client:
            try:
                client.wait_for_engines(n, timeout=timeout, interactive=False)
            except TimeoutError:
                got = len(client.ids)
                log = engine_log_tail(cluster)
                stop_cluster(ref, client=client, cluster=cluster)
                raise RuntimeError(
                    f"only {got} of {n} engines registered within {timeout:.0f} s; "
                    f"nothing was left running.{log}"
                ) from None
    return cluster


def start_reaper(ref: ClusterRef, owner_pid: int) -> None:
    """Start the process that ends this cluster when ``owner_pid`` dies (see reaper.py)."""
    subprocess.Popen(  # python -m puts its working directory, REPO, first on sys.path
        [sys.executable, "-m", "helpers.cluster.reaper", str(owner_pid), ref.cluster_id,
         ref.profile_dir],
        env=dict(os.environ, IPP_CLUSTER_ID=ref.cluster_id, IPP_PROFILE_DIR=ref.profile_dir),
        cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True,
    )


def engine_log_tail(cluster, lines: int = 8) -> str:
    """The last lines the engines printed (shown when a start or stop failed)."""
    tail = []
    with suppress(Exception):
        tail = "".join(es.get_output() for es in cluster.engines.values()).strip().splitlines()[-lines:]
    return ("\nlast engine output:\n  " + "\n  ".join(tail)) if tail else ""


# --------------------------------------------------------------------------- stop
@dataclass
class StopReport:
    """What :func:`stop_cluster` found and did."""

    was_running: bool = False
    exited: int = 0  # engines that were asked to exit
    ended: list[int] = field(default_factory=list)  # pids that had to be killed
    exit_codes: list[int] = field(default_factory=list)  # of engines this process started
    log_tail: str = ""  # the engines' last output, kept only when something failed
    why: str = ""  # why processes had to be killed, when some were
    seconds: float = 0.0

    @property
    def failed(self) -> bool:
        return bool(self.ended) or any(code != 0 for code in self.exit_codes)

    def line(self, ref: ClusterRef) -> str:
        """One line for the learner; the engines' log tail follows only when something failed."""
        if not self.was_running and not self.ended:
            return f"no cluster {ref} was running"
        extra = (f"; {len(self.ended)} process(es) did not exit and were killed{self.why}"
                 if self.ended else "")
        return f"cluster {ref} stopped in {self.seconds:.1f} s{extra}{self.log_tail}"


def stop_cluster(ref: ClusterRef, *, client=None, cluster=None) -> StopReport:
    """Stop every process of the cluster and remove its files.

    Engines are asked to exit (``client`` when the caller has one, else a new one); what
    is still running ``STOP_GRACE`` s later is ended.  Never prints; see ``StopReport``.
    """
    t0 = time.monotonic()
    report = StopReport(was_running=is_running(ref))
    remote = report.was_running and not on_this_host(ref)
    with ExitStack() as opened:  # a client opened here is closed here
        if report.was_running and client is None:
            with suppress(Exception):
                client = opened.enter_context(client_of(ref, timeout=5))
        if client is not None:
            from ..engine.pg import exit_process

            ids = list(client.ids)
            report.exited = len(ids)
            with suppress(Exception):  # a dead or stuck engine is ended below
                if ids:  # each drops its process group and exits with status 0
                    client[ids].apply_async(exit_process).get(timeout=STOP_GRACE)
            if remote:  # a PBS job on another node: its controller stops, the job ends
                with suppress(Exception):
                    client.shutdown(hub=True, block=False)
    procs = {p.pid: p for p in process_tree(_recorded_pids(ref)) + cluster_processes(ref)}
    engines = [p for p in procs.values() if any("engine" in part for part in _cmdline(p)[1:4])]
    if engines and report.exited:
        psutil.wait_procs(engines, timeout=STOP_GRACE)
    alive = [p for p in procs.values() if p.is_running() and p.status() != "zombie"]
    # the reaper is ended last: it cleans up if we die mid-stop
    reapers = [p for p in alive if "helpers.cluster.reaper" in _cmdline(p)[1:3]]
    killed = kill_processes([p for p in alive if p not in reapers], grace=TERM_GRACE)
    report.ended = [p.pid for p in killed]
    report.why = _why_killed(killed, engines, report.exited)
    if cluster is not None:
        report.exit_codes = _reap(cluster)
        if report.failed:
            report.log_tail = engine_log_tail(cluster)
        _forget(cluster)
    ref.remove_files()
    report.ended += [p.pid for p in kill_processes(reapers, grace=1.0)]
    report.seconds = time.monotonic() - t0
    return report


def _cmdline(p) -> list[str]:
    with suppress(Exception):
        return p.cmdline()
    return []


def _why_killed(killed: list, engines: list, asked: int) -> str:
    """Why processes had to be killed, in words (empty when none was)."""
    if not killed:
        return ""
    n_eng = sum(p in engines for p in killed)
    if not n_eng:
        return " (not engines: the controller or a nanny ignored SIGTERM)"
    if not asked:
        return f" ({n_eng} engine(s): no client could reach the controller to ask them to exit)"
    return (f" ({n_eng} engine(s) neither exited when asked nor on SIGTERM within "
            f"{STOP_GRACE + TERM_GRACE:.0f} s: busy in a cell or stuck in a collective)")


def _reap(cluster) -> list[int]:
    """Collect the exit status of the engines this process started (no zombies left);
    returns the engines' exit codes.

    ipyparallel waits for each process in a thread of its own, which ends with a non-blocking
    ``Popen.wait(0)``; a second ``wait`` at the same moment holds the Popen's lock, and the
    thread then prints a ``TimeoutExpired`` traceback into the notebook. So each thread is
    joined first; its psutil process keeps the exit code it read.
    """
    def wait(launcher) -> int:
        thread = getattr(launcher, "_wait_thread", None)
        code = None
        if thread is not None:
            thread.join(2)  # the process was asked to exit or ended above: this is quick
            with suppress(Exception):
                code = None if thread.is_alive() else launcher.process.wait(0)
        try:
            return launcher._popen_process.wait(2) if code is None else code
        except Exception:
            return -1

    launchers = [launcher for es in list(cluster.engines.values())
                 for launcher in getattr(es, "launchers", {}).values()]
    codes = [wait(la) for la in launchers if getattr(la, "_popen_process", None)]
    if getattr(cluster.controller, "_popen_process", None) is not None:
        wait(cluster.controller)
    return codes


def _forget(cluster) -> None:
    """The in-process ipyparallel.Cluster object: already stopped, do not stop it at exit."""
    with suppress(Exception):
        from ipyparallel.cluster import cluster as ipp_cluster

        ipp_cluster._atexit_clusters.discard(cluster)
        for launcher in [*cluster.engines.values(), cluster.controller]:
            if launcher is not None:
                launcher.get_output(remove=True)
        cluster.shutdown_atexit = False  # its __del__ would stop it again at interpreter exit
        cluster.engines = {}
        cluster.controller = None
