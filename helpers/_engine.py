"""Engine-side plumbing: what :func:`helpers.connect` runs *on* each engine.

Nothing here imports ipyparallel: these functions are shipped to the engines by
reference (``helpers._engine.probe``) and run there.  They set up exactly the
names a torchrun script would have, so a ``%%px`` cell reads like the body of a
torchrun script: ``torch``, ``dist``, ``rank``, ``world_size``, ``local_rank``,
``device``, ``backend``.
"""

from __future__ import annotations

import os
import socket
from datetime import timedelta

# Environment variables that carry the MPI rank, by launcher:
# MPICH/hydra and Cray PALS (Derecho) set PMI_RANK / PALS_RANKID, Open MPI its own.
_MPI_RANK_VARS = ("PMI_RANK", "PALS_RANKID", "OMPI_COMM_WORLD_RANK")


def _user_ns() -> dict:
    """The engine's interactive namespace (what ``%%px`` cells see)."""
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - engines always have IPython
        return {}
    ip = get_ipython()
    return ip.user_ns if ip is not None else {}


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def probe() -> dict:
    """Describe this engine: host, pid, MPI rank, GPUs, process-group state."""
    import torch
    import torch.distributed as dist

    mpi_rank = None
    for var in _MPI_RANK_VARS:
        if var in os.environ:
            mpi_rank = int(os.environ[var])
            break
    ns = _user_ns()
    initialized = dist.is_available() and dist.is_initialized()
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "mpi_rank": mpi_rank,
        "cuda_count": torch.cuda.device_count() if torch.cuda.is_available() else 0,
        "cpus": _cpu_count(),
        "initialized": initialized,
        "rank": dist.get_rank() if initialized else None,
        "world_size": dist.get_world_size() if initialized else None,
        "backend": dist.get_backend() if initialized else None,
        "device": str(ns.get("device")) if initialized and "device" in ns else None,
        # a str, not TorchVersion: unpickling it must not import torch in the notebook
        "torch": str(torch.__version__),
    }


def host_address() -> str:
    """An address of this host that other hosts of the job can reach."""
    host = socket.gethostname()
    try:
        return socket.gethostbyname(host)
    except OSError:
        return host


def open_store(addr: str, world_size: int, timeout_s: float) -> int:
    """Rank 0 only: open the rendezvous TCPStore on ``addr``, a port the OS picks (no race).

    The store object stays in the engine namespace as ``_tp_store`` so it lives
    as long as the process group; returns its port for the other ranks.
    """
    import torch.distributed as dist

    # Bind the listening socket ourselves: TCPStore alone listens on every interface.
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind((addr, 0))
    srv.listen(128)
    store = dist.TCPStore(
        addr, srv.getsockname()[1], world_size, is_master=True,
        timeout=timedelta(seconds=timeout_s), wait_for_workers=False,
        master_listen_fd=srv.detach(),  # the store owns the socket from now on
    )
    _user_ns()["_tp_store"] = store
    return store.port


def destroy() -> bool:
    """Tear down this engine's process group, if any (keeps every other variable)."""
    import torch.distributed as dist

    ns = _user_ns()
    existed = dist.is_available() and dist.is_initialized()
    if existed:
        try:
            dist.destroy_process_group()
        except Exception:  # a group killed by a timeout may refuse a clean exit
            pass
    ns.pop("_tp_store", None)
    return existed


def init(rank: int, world_size: int, local_rank: int, addr: str, port: int,
         backend: str, timeout_s: float, threads: int) -> dict:
    """Join the process group and define the torchrun-style names on this engine."""
    import torch
    import torch.distributed as dist

    torch.set_num_threads(max(1, threads))
    if backend == "nccl":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    timeout = timedelta(seconds=timeout_s)
    ns = _user_ns()
    store = ns.get("_tp_store") if rank == 0 else None
    if store is None:
        store = dist.TCPStore(addr, port, world_size, is_master=False, timeout=timeout)
        ns["_tp_store"] = store
    # torchrun exports these too; code that reads them behaves the same here.
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(local_rank),
        MASTER_ADDR=addr, MASTER_PORT=str(port),
    )
    before = set(_socket_inodes())
    dist.init_process_group(
        backend, store=store, rank=rank, world_size=world_size, timeout=timeout,
    )
    dist.barrier()  # every pair connected now, so its sockets are known
    _PG_SOCKETS.clear()
    _PG_SOCKETS.update((set(_socket_inodes()) - before) & _tcp_inodes())
    ns.update(
        torch=torch, dist=dist, rank=rank, world_size=world_size,
        local_rank=local_rank, device=device, backend=backend,
    )
    return {"rank": rank, "device": str(device), "threads": torch.get_num_threads()}


# --------------------------------------------------------------------------- faults
# A rank blocked inside a gloo collective does not see SIGINT until the collective
# times out (the wait is in C++).  To stop it at once, each engine runs a small
# watchdog thread that, on request, shuts down the sockets of its process group:
# the blocked collective then fails immediately ("Connection closed by peer").
# The group is dead afterwards; cluster.recover() builds a new one.

_PG_SOCKETS: set[int] = set()  # socket inodes opened by init_process_group
_WATCHDOG: dict = {}


def _socket_inodes() -> dict[int, int]:
    """inode -> fd of every socket this process holds."""
    found = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # closed meanwhile
        if link.startswith("socket:["):
            found[int(link[8:-1])] = int(fd)
    return found


def _tcp_inodes() -> set[int]:
    """Inodes of established TCP connections (gloo's pairs are such connections)."""
    found = set()
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    cols = line.split()
                    if cols[3] == "01":  # ESTABLISHED: never a listener (gloo aborts on those)
                        found.add(int(cols[9]))
        except (OSError, StopIteration, IndexError, ValueError):
            pass
    return found


def abort_collectives() -> int:
    """Shut down this rank's process-group sockets; returns how many."""
    n = 0
    for inode, fd in _socket_inodes().items():
        if inode in _PG_SOCKETS:
            try:
                s = socket.socket(fileno=os.dup(fd))
                s.shutdown(socket.SHUT_RDWR)
                s.close()
                n += 1
            except OSError:
                pass
    return n


def start_watchdog(addr: str, token: str) -> int:
    """Start (once per engine) the thread that aborts collectives on request; its port."""
    import threading

    if "sock" in _WATCHDOG:  # already running: a new connect() may bring a new token
        _WATCHDOG["token"] = token
        return _WATCHDOG["port"]
    srv = socket.socket()
    srv.bind((addr, 0))
    srv.listen(8)

    def serve():
        while True:
            conn, _ = srv.accept()
            with conn:
                conn.settimeout(5)
                try:
                    msg = conn.recv(256).decode().strip()
                except OSError:
                    continue
                if msg == f"{_WATCHDOG['token']} abort":
                    conn.sendall(f"{abort_collectives()}\n".encode())

    _WATCHDOG.update(sock=srv, port=srv.getsockname()[1], token=token)
    threading.Thread(target=serve, name="tp-watchdog", daemon=True).start()
    return _WATCHDOG["port"]


# names connect() defines on every engine: not the learner's state
CONNECT_NAMES = {"torch", "dist", "rank", "world_size", "local_rank", "device", "backend"}


def user_names() -> list[str]:
    """The learner's variables on this engine (what a restart would lose)."""
    import builtins
    import types

    ns = _user_ns()
    hidden = {"In", "Out", "exit", "quit", "get_ipython"} | set(vars(builtins))
    return sorted(
        k for k, v in ns.items()
        if not k.startswith("_") and k not in CONNECT_NAMES and k not in hidden
        and not isinstance(v, types.ModuleType)
    )
