"""The child processes of bench_cluster.py, and the all-reduce loop it times on the engines.

    python benchmarks/bench_children.py connect CLUSTER_ID PROFILE_DIR N BACKEND BREAKDOWN TS_DIR
    python benchmarks/bench_children.py raw CLUSTER_ID PROFILE_DIR N BACKEND
    python -m torch.distributed.run --standalone --nproc_per_node=N \\
        benchmarks/bench_children.py torchrun startup BACKEND
    python -m torch.distributed.run ... benchmarks/bench_children.py torchrun serve BACKEND THREADS CTL_DIR
    python benchmarks/bench_children.py engine [ipengine args]     # --breakdown's engine command

``connect``, ``raw`` and ``torchrun startup`` print one line ``BENCH {json}`` of wall-clock
timestamps (``t_*``) and the all-reduce's result; bench_cluster.py reads it.  ``engine``
runs the real engine entry point (``python -m helpers.engine.main``) and appends
timestamps of ipengine's steps to ``$BENCH_TS_DIR/<pid>.txt``.

:func:`allreduce_times` is the bandwidth loop: the same function runs on the engines
(``cluster.apply(bench_children.allreduce_times, ...)`` after ``load_module``) and in the
``torchrun serve`` workers.

Imports at the top are light on purpose: ``engine`` logs its start before torch is imported.
"""

from __future__ import annotations

import json
import os
import sys
import time

HERE = os.path.abspath(__file__)


def _bench(record: dict) -> None:
    print("BENCH " + json.dumps(record), flush=True)


# --------------------------------------------------------------------------- the bandwidth loop
def allreduce_times(sizes, warmups, iters, dev=None) -> dict:
    """Per-iteration seconds of ``dist.all_reduce`` on a float32 tensor of each size (bytes).

    ``dev``: the device string; None = on an engine of ``connect()``, the engine's ``device``
    (what a ``%%px`` cell sees).
    """
    import torch
    import torch.distributed as dist

    if dev is None:
        from helpers.engine.namespace import user_ns

        dev = user_ns()["device"]
    dev = torch.device(dev)
    cuda = dev.type == "cuda"
    out = {"threads": torch.get_num_threads(), "times": {}}
    for nbytes, warmup, n in zip(sizes, warmups, iters):
        x = torch.zeros(nbytes // 4, dtype=torch.float32, device=dev)  # zeros: no overflow
        times = []
        for i in range(warmup + n):
            dist.barrier()
            if cuda:
                torch.cuda.synchronize(dev)
            t = time.perf_counter()
            dist.all_reduce(x)
            if cuda:
                torch.cuda.synchronize(dev)
            dt = time.perf_counter() - t
            if i >= warmup:
                times.append(dt)
        out["times"][str(nbytes)] = times
        del x
    return out


def threads() -> int:
    """torch's intra-op thread count in this process (what connect() set on an engine)."""
    import torch

    return torch.get_num_threads()


# --------------------------------------------------------------------------- 1a. connect()
def _timed(owner, name: str, key: str, T: dict) -> None:
    """Replace ``owner.name`` by a wrapper that records when its first call returned."""
    orig = getattr(owner, name)

    def inner(*a, **k):
        r = orig(*a, **k)
        T.setdefault(key, time.time())
        return r

    setattr(owner, name, inner)


def connect_child(cid, prof, n, backend, breakdown, ts_dir) -> None:
    """``connect()`` from a fresh process, then a first all-reduce whose result is pulled back."""
    T = {"t_start": time.time()}
    n = int(n)
    import helpers
    from helpers import cluster as hc

    T["t_imported"] = time.time()
    if breakdown == "1":
        # Instrumented: engines start from `bench_children.py engine` (the real engine entry
        # point, with timestamps), and this process records when each step of connect()
        # returns.  Patched where connect() looks them up: tpcluster.py imported start_cluster
        # from lifecycle; init_distributed calls tpcluster.probe_engines; start_cluster reads
        # lifecycle.ENGINE_CMD.
        import ipyparallel as ipp

        from helpers.cluster import lifecycle, tpcluster

        os.environ["BENCH_TS_DIR"] = ts_dir
        lifecycle.ENGINE_CMD = [sys.executable, HERE, "engine"]
        _timed(tpcluster, "start_cluster", "t_spawned", T)
        _timed(ipp.Client, "wait_for_engines", "t_registered", T)
        _timed(tpcluster, "probe_engines", "t_probed", T)
        _timed(tpcluster.TPCluster, "init_distributed", "t_pg", T)
    c = hc.connect(n=n, cluster_id=cid, profile_dir=prof, backend=(backend or None), activate=False)
    T["t_connected"] = time.time()
    # what a notebook does: a %%px cell, then the result pulled by rank
    c.run("_bench_x = torch.ones(4, device=device); dist.all_reduce(_bench_x); _bench_s = float(_bench_x.sum())")
    s = c.pull("_bench_s")
    T["t_done"] = time.time()
    T.update(result=s[0], helpers=os.path.dirname(helpers.__file__),
             torch_in_client="torch" in sys.modules)
    _bench(T)
    c.shutdown()


# --------------------------------------------------------------------------- 1b / 3. torchrun
def torchrun_child(mode, backend, *rest) -> None:
    """A torchrun worker: ``startup`` (init + one all-reduce) or ``serve`` (the bandwidth loop
    whenever the benchmark asks: CTL_DIR/cmd<k>.json in, res<k>-rank<r>.json out)."""
    T = {"t_start": time.time()}
    import torch
    import torch.distributed as dist

    T["t_imported"] = time.time()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    # the device rule of connect() (helpers.common.topology.device_for): own GPU under NCCL,
    # GPUs shared round-robin under gloo, else CPU; inlined so the child imports only torch
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if backend == "nccl":
        dev = torch.device("cuda", local_rank)
    elif gpus:
        dev = torch.device("cuda", local_rank % gpus)
    else:
        dev = torch.device("cpu")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group(backend)
    T["t_pg"] = time.time()
    if mode == "startup":
        x = torch.ones(4, device=dev)
        dist.all_reduce(x)
        T["t_done"] = time.time()
        T["result"] = float(x.sum())
        if rank == 0:
            _bench(T)
    else:
        nthreads, ctl = rest
        torch.set_num_threads(int(nthreads))  # what connect() gives each engine
        k = 0
        while True:
            path = os.path.join(ctl, f"cmd{k}.json")
            while not os.path.exists(path):
                time.sleep(0.01)
            with open(path) as f:
                cmd = json.load(f)
            if cmd.get("stop"):
                break
            res = allreduce_times(cmd["sizes"], cmd["warmups"], cmd["iters"], str(dev))
            tmp = os.path.join(ctl, f".res{k}-rank{rank}.json")
            with open(tmp, "w") as f:
                json.dump(res, f)
            os.replace(tmp, os.path.join(ctl, f"res{k}-rank{rank}.json"))
            k += 1
    dist.destroy_process_group()


# --------------------------------------------------------------------------- 1c. raw ipyparallel
# Run on the engines of a plain ipyparallel cluster (no helpers there): each function
# imports what it needs.  Shipped with apply; as functions of __main__ they run with the
# engine's namespace as globals, like cells.
def _raw_import() -> None:
    import torch  # noqa: F401
    import torch.distributed  # noqa: F401


def _raw_init(rank: int, n: int, port: int, backend: str) -> None:
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(n),
                      RANK=str(rank), LOCAL_RANK=str(rank))
    dist.init_process_group(backend, init_method="env://")


def _raw_all_reduce(backend: str) -> float:
    import torch
    import torch.distributed as dist

    rank = dist.get_rank()
    dev = torch.device("cuda", rank) if backend == "nccl" else torch.device("cpu")
    x = torch.ones(4, device=dev)
    dist.all_reduce(x)
    return float(x.sum())


def raw_child(cid, prof, n, backend) -> None:
    """Raw ipyparallel, the naive way: start, import torch on the engines, env:// init, all-reduce."""
    import socket

    T = {"t_start": time.time()}
    n = int(n)
    import ipyparallel as ipp

    cluster = ipp.Cluster(n=n, cluster_id=cid, profile_dir=prof, log_level=30)
    rc = cluster.start_and_connect_sync()
    T["t_registered"] = time.time()
    ids = sorted(rc.ids)
    rc[ids].apply_sync(_raw_import)
    T["t_imported"] = time.time()
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    futures = [rc[eid].apply_async(_raw_init, r, n, port, backend) for r, eid in enumerate(ids)]
    for f in futures:
        f.get()
    T["t_pg"] = time.time()
    T["result"] = rc[ids].apply_sync(_raw_all_reduce, backend)[0]  # rank 0's result
    T["t_done"] = time.time()
    _bench(T)
    cluster.stop_cluster_sync()


# --------------------------------------------------------------------------- --breakdown's engines
def engine_child(argv) -> None:
    """The real engine entry point (``helpers.engine.main``) with timestamps around ipengine's
    steps: imports done, registration sent, registration completed, first heartbeat ping."""
    def log(what):
        with open(os.path.join(os.environ["BENCH_TS_DIR"], f"{os.getpid()}.txt"), "a") as f:
            f.write(f"{what} {time.time():.4f}\n")

    log("e_start")
    import runpy

    from ipyparallel.engine import app

    main, reg, done, ping = (app.main, app.IPEngine.register,
                             app.IPEngine.complete_registration, app.IPEngine._report_ping)

    def timed_main(*a, **k):
        log("e_imported")  # helpers.engine.main has done its imports (torch) and starts ipengine
        return main(*a, **k)

    async def register(self):
        log("e_register_sent")
        return await reg(self)

    async def complete_registration(self, *a):
        r = await done(self, *a)
        log("e_register_done")
        return r

    def report_ping(self, msg):
        if not getattr(self, "_bench_pinged", False):
            self._bench_pinged = True
            log("e_first_ping")
        return ping(self, msg)

    app.main = timed_main
    app.IPEngine.register, app.IPEngine.complete_registration = register, complete_registration
    app.IPEngine._report_ping = report_ping
    sys.argv = [sys.argv[0], *argv]  # ipengine parses its own flags only
    runpy.run_module("helpers.engine.main", run_name="__main__", alter_sys=True)


# --------------------------------------------------------------------------- dispatch
COMMANDS = {"connect": connect_child, "torchrun": torchrun_child, "raw": raw_child}


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in {*COMMANDS, "engine"}:
        raise SystemExit(f"usage: bench_children.py {{{','.join([*COMMANDS, 'engine'])}}} ARGS...")
    if argv[0] == "engine":
        engine_child(argv[1:])
    else:
        COMMANDS[argv[0]](*argv[1:])


if __name__ == "__main__":
    main()
