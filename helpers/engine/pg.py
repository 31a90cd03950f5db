"""The process group on an engine, set up so that a ``%%px`` cell runs like a torchrun script:
after :func:`init` an engine has what a torchrun worker has (README.md lists it, after ``connect()``).
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import os
import socket
import sys
import threading
from datetime import timedelta

from .namespace import reset_namespace, user_ns
from .watchdog import record_pg_sockets, socket_inodes, stop_watchdog

# Environment variables that carry the MPI rank, by launcher:
# MPICH/hydra and Cray PALS (Derecho) set PMI_RANK / PALS_RANKID, Open MPI its own.
_MPI_RANK_VARS = ("PMI_RANK", "PALS_RANKID", "OMPI_COMM_WORLD_RANK")


class ProcessGroupMismatch(ValueError):
    """A pasted ``init_process_group`` asks for another backend or world size than the course's."""


def probe() -> dict:
    """Describe this engine: host, pid, MPI rank, GPUs, process-group state."""
    import torch
    import torch.distributed as dist

    ns = user_ns()
    initialized = dist.is_available() and dist.is_initialized()
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "mpi_rank": next((int(os.environ[v]) for v in _MPI_RANK_VARS if v in os.environ), None),
        "cuda_count": torch.cuda.device_count() if torch.cuda.is_available() else 0,
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1,
        "initialized": initialized,
        "rank": dist.get_rank() if initialized else None,
        "world_size": dist.get_world_size() if initialized else None,
        "backend": dist.get_backend() if initialized else None,
        "device": str(ns.get("device")) if initialized and "device" in ns else None,
        # the layout the group was made for (simulated nodes change it, not the group)
        "local_rank": ns.get("local_rank") if initialized else None,
        "local_world_size": int(os.environ.get("LOCAL_WORLD_SIZE", 0)) if initialized else None,
        # a str, not TorchVersion: unpickling it must not import torch in the notebook
        "torch": str(torch.__version__),
    }


def host_address() -> str:
    """An address of this host that other hosts of the job can reach."""
    host = socket.gethostname()
    with contextlib.suppress(OSError):
        return socket.gethostbyname(host)
    return host


def open_store(addr: str, world_size: int, timeout_s: float) -> int:
    """Rank 0 only: open the rendezvous TCPStore on ``addr``, a port the OS picks (no race).

    The store object stays in the engine namespace as ``_tp_store`` so it lives
    as long as the process group; returns its port for the other ranks.
    """
    import torch.distributed as dist

    # Bind the listening socket ourselves: TCPStore alone listens on every interface.
    srv = socket.create_server((addr, 0), backlog=128)
    store = dist.TCPStore(
        addr, srv.getsockname()[1], world_size, is_master=True,
        timeout=timedelta(seconds=timeout_s), wait_for_workers=False,
        master_listen_fd=srv.detach(),  # the store owns the socket from now on
    )
    user_ns()["_tp_store"] = store
    return store.port


# --------------------------------------------------------------------- the real torch calls
# Kept before the course replaces them on torch.distributed (see install_script_hooks).
_REAL: dict = {}


def _real(name: str):
    if not _REAL:
        from torch.distributed import distributed_c10d as c10d

        _REAL.update(init_process_group=c10d.init_process_group,
                     destroy_process_group=c10d.destroy_process_group)
    return _REAL[name]


def destroy() -> None:
    """Tear down this engine's process group, if any (keeps every other variable)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        with contextlib.suppress(Exception):  # a group killed by a timeout may refuse a clean exit
            _real("destroy_process_group")()
    user_ns().pop("_tp_store", None)


def init(rank: int, world_size: int, local_rank: int, local_world_size: int, addr: str,
         port: int, backend: str, device: str, timeout_s: float, threads: int,
         script: str | None = None) -> None:
    """Join the process group and make this engine look like a torchrun worker."""
    import torch
    import torch.distributed as dist

    torch.set_num_threads(max(1, threads))
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    timeout = timedelta(seconds=timeout_s)
    ns = user_ns()
    store = ns.get("_tp_store") if rank == 0 else None
    if store is None:
        store = dist.TCPStore(addr, port, world_size, is_master=False, timeout=timeout)
        ns["_tp_store"] = store
    # torchrun exports these; code that reads them behaves the same here.
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(local_rank),
        LOCAL_WORLD_SIZE=str(local_world_size), MASTER_ADDR=addr, MASTER_PORT=str(port),
    )
    sys.argv = [script or "px_cell.py"]  # not ipengine's own flags: argparse sees a bare script
    before = socket_inodes()
    _real("init_process_group")(backend, store=store, rank=rank, world_size=world_size,
                                timeout=timeout)
    _forget_mesh_caches()
    dist.barrier()  # every pair connected now, so its sockets are known
    record_pg_sockets(before)
    install_script_hooks()
    ns.update(
        torch=torch, dist=dist, rank=rank, world_size=world_size,
        local_rank=local_rank, device=device, backend=backend,
    )


# What torch keeps beyond a script's own names that holds DeviceMeshes (and through them their
# process groups), read from torch 2.13's source, by module: the meshes entered with
# ``with mesh:``, the mesh-topology cache, the redistribute planners and plans, DTensor's RNG
# tracker, DCP's cached save plans, and DTensor's sharding decisions.  Caches keyed by a mesh's
# *value* (ranks, dim names) matter most: after a new process group a new mesh equals an old one,
# so a hit would hand back the old mesh and its dead groups ("Could not resolve the process group
# registered under the name 19").  A new group starts with all of them empty (init, fresh_script).
_MESH_CACHES = (
    ("torch.distributed.device_mesh", lambda m: m._mesh_resources.mesh_stack.clear()),
    ("torch.distributed.tensor._collective_utils", lambda m: m.MeshTopoInfo.build_from_mesh.cache_clear()),
    ("torch.distributed.tensor._redistribute", lambda m: m.clear_redistribute_planner_cache()),
    ("torch.distributed.tensor._redistribute", lambda m: m._gen_transform_infos.cache_clear()),
    ("torch.distributed.tensor._random", lambda m: setattr(m, "_rng_tracker", None)),
    ("torch.distributed.checkpoint.planner", lambda m: _clear_save_plans(m.SavePlanner)),
    ("torch.distributed.tensor",
     lambda m: importlib.import_module("torch.distributed.tensor.debug")._clear_sharding_prop_cache()),
)


def _clear_save_plans(planner) -> None:
    for name, value in vars(planner).items():
        if name.startswith("_cached") and isinstance(value, dict):
            value.clear()


def _forget_mesh_caches() -> None:
    """Drop the caches of :data:`_MESH_CACHES`, in the modules already imported only (importing
    DTensor costs seconds per engine at start-up)."""
    for module, drop in _MESH_CACHES:
        if module in sys.modules:
            with contextlib.suppress(Exception):  # another torch version may lack one of them: the rest still goes
                drop(sys.modules[module])


def _unhook_stranded_meshes() -> None:
    """DeviceMeshes that outlive the namespace: DTensor's autograd nodes keep their input's mesh
    (``_FromTorchTensorBackward``'s ``forward_input_device_mesh``), and a graph held from C++
    is not collected by ``gc``; such a mesh would keep its process groups, and their sockets and
    threads, alive (a gloo group's are freed when it is deleted, not when it is destroyed).
    Their group registries are emptied, so the destroyed groups go."""
    mesh_type = getattr(sys.modules.get("torch.distributed.device_mesh"), "DeviceMesh", None)
    if mesh_type is None:  # DeviceMesh never imported: no mesh to unhook
        return
    stranded = [o for o in gc.get_objects() if type(o) is mesh_type]
    for mesh in stranded:
        registry = getattr(mesh, "_pg_registry", None)
        if isinstance(registry, dict):
            registry.clear()
    if stranded:
        gc.collect()


def destroy_subgroups() -> int:
    """Destroy every process group but the default (world) one, with torch's REAL destroy
    (the course's ``destroy_process_group`` keeps groups); how many were destroyed.

    Every rank destroys the same groups in the same order (creation order), as all ranks
    created them."""
    from torch.distributed import distributed_c10d as c10d

    # creation order; no group at all before init_process_group (group.WORLD is None then)
    groups = [pg for pg in list(c10d._world.pg_map) if pg is not c10d.group.WORLD]
    for pg in groups:
        with contextlib.suppress(Exception):  # a group broken by a timeout may refuse a clean shutdown
            _real("destroy_process_group")(pg)
    return len(groups)


def fresh_script() -> dict:
    """This engine as a new torchrun script finds it, keeping the course's process group:
    the ``%%px`` namespace back to ``connect()``'s names, every other process group destroyed,
    DeviceMesh and DTensor caches dropped, a running profiler stopped, memory returned as far
    as Python allows (``gc.collect()``, and CUDA's cache).  What it dropped, as counts."""
    import torch

    names = reset_namespace()
    with contextlib.suppress(Exception):  # a profiler a cell started and never stopped (prof.start())
        if torch.autograd._profiler_enabled():
            torch.autograd._disable_profiler()
    groups = destroy_subgroups()
    _forget_mesh_caches()
    gc.collect()
    _unhook_stranded_meshes()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    return {"names": len(names), "groups": groups}


#: the engine-namespace name of the record of the notebook that drives this engine
DRIVER = "_tp_driver"


def claim(driver: dict) -> dict:
    """``driver`` (``{"id", "notebook", ...}``) now drives this engine.  When another driver
    did before, the engine starts fresh (:func:`fresh_script`).  Returns ``{"previous": the
    record before, "reset": counts or None}``."""
    ns = user_ns()
    previous = ns.get(DRIVER)
    reset = None
    if previous is not None and previous.get("id") != driver.get("id"):
        reset = fresh_script()
    ns[DRIVER] = dict(driver)
    return {"previous": previous, "reset": reset}


def release(driver_id: str) -> None:
    """The notebook ``driver_id`` is done (``cluster.shutdown()``, its kernel exits): if it
    still drives this engine, what it made is released and no one drives it."""
    ns = user_ns()
    if (ns.get(DRIVER) or {}).get("id") == driver_id:
        fresh_script()
        ns.pop(DRIVER, None)


def follow_cwd(folder: str, previous: str | None = None) -> bool:
    """Work in the notebook's ``folder`` and import from it first, as a script beside it would.

    ``previous`` (the folder followed before) leaves ``sys.path``.  False when ``folder``
    does not exist on this host (an engine on another node without a shared file system).
    """
    if not os.path.isdir(folder):
        return False
    os.chdir(folder)
    for old in (previous, folder):
        if old in sys.path:
            sys.path.remove(old)
    sys.path.insert(0, folder)
    return True


# ------------------------------------------------------------ a pasted script's own set-up
def _backend_names(backend) -> set[str]:
    """``"cpu:gloo,cuda:nccl"`` -> {"gloo", "nccl"}; ``Backend.GLOO`` -> {"gloo"}."""
    return {part.split(":")[-1].strip() for part in str(backend).lower().split(",")}


def adopting_init_process_group(backend=None, init_method=None, timeout=None, world_size=-1,
                                rank=-1, *args, **kwargs):
    """``dist.init_process_group`` as a pasted script calls it, on the course's engines.

    The course's group already exists (``connect()`` built it).  A call asking for the same
    backend and world size adopts it; any other is refused with both values, on every rank
    at once, before any collective.
    """
    import torch.distributed as dist

    if not dist.is_initialized():  # after a real destroy: behave exactly like torch
        return _real("init_process_group")(backend, init_method, timeout, world_size, rank, *args, **kwargs)
    have_backend, have_size = dist.get_backend(), dist.get_world_size()
    if backend is not None and have_backend not in _backend_names(backend):
        raise ProcessGroupMismatch(
            f"init_process_group(backend={str(backend)!r}) but the course's process group "
            f"is already {have_backend!r} ({_why_backend(have_backend)}); "
            f"pass backend={have_backend!r}, or drop the call: the group exists")
    if world_size not in (-1, None) and int(world_size) != have_size:
        raise ProcessGroupMismatch(
            f"init_process_group(world_size={world_size}) but this cluster has "
            f"{have_size} ranks; use world_size={have_size} (or int(os.environ['WORLD_SIZE'])), "
            f"or connect(n={world_size}) for a cluster of that size")
    if rank not in (-1, None) and int(rank) != dist.get_rank():
        raise ProcessGroupMismatch(
            f"init_process_group(rank={rank}) on the engine that is rank {dist.get_rank()}; "
            "use rank=int(os.environ['RANK'])")
    return None  # adopted: the course's group is the default group


def _why_backend(backend: str) -> str:
    import torch

    if backend != "gloo":
        return "one GPU per engine"
    return "engines share GPUs, which NCCL refuses" if torch.cuda.is_available() else "CPU engines, no GPU"


def keeping_destroy_process_group(group=None):
    """``dist.destroy_process_group`` from a pasted script: the course's group is kept.

    A torchrun script ends right after it; a notebook goes on, so the default group stays
    for the next cell.  Sub-groups (``new_group``, a DeviceMesh's) are destroyed as asked.
    """
    import torch.distributed as dist

    if group is None or group is dist.group.WORLD:
        return None
    return _real("destroy_process_group")(group)


def install_script_hooks() -> None:
    """Put the two functions above where a pasted script finds ``init``/``destroy``
    (after :func:`init`, and in a batch job: :mod:`helpers.engine.batch`)."""
    import torch.distributed as dist
    from torch.distributed import distributed_c10d as c10d

    _real("init_process_group")  # remember the real ones first
    for mod in (dist, c10d):
        mod.init_process_group = adopting_init_process_group
        mod.destroy_process_group = keeping_destroy_process_group


def exit_process() -> None:
    """Leave cleanly on request: drop the process group (for at most 1 s), then exit with
    status 0 (:func:`exit_now`) 0.2 s later, after this call's reply has gone back."""
    # a long day's groups (or a broken one) may take a while to shut down: not past the exit
    leaving = threading.Thread(target=destroy, daemon=True)
    leaving.start()
    leaving.join(1.0)
    stop_watchdog()
    threading.Timer(0.2, exit_now, (0,)).start()


def exit_now(status: int) -> None:
    """Flush stdout and stderr, then leave without the interpreter's teardown, where a live gloo
    group can hang.  Measured in a batch job too: with torch 2.13 and gloo, a rank whose notebook
    built DeviceMeshes or DTensors sometimes aborted *after* the last cell ("terminate called
    without an active exception", status -6), in the teardown of threads that torch leaves
    behind; the job's outcome is decided, so its status must be the one given."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(status)
