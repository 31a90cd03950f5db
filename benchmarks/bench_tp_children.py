"""The TP MLP step that bench_tp.py times, on the engines and under torchrun: one function, two homes.

    python -m torch.distributed.run --standalone --nproc_per_node=N \\
        benchmarks/bench_tp_children.py serve BACKEND THREADS CTL_DIR

:func:`mlp_step_times` runs a Megatron MLP block (``helpers.tp.ParallelMLP`` over all ranks)
forward + backward and times each step. The engines get it by reference
(``cluster.apply(bench_tp_children.mlp_step_times, ...)`` after ``load_module``); the torchrun
workers (``serve``) run the very same function whenever bench_tp.py asks (CTL_DIR/cmd<k>.json in,
res<k>-rank<r>.json out), so the two sides run identical code with the same torch thread count.
"""

from __future__ import annotations

import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_BUILT: dict = {}   # (d, h, tokens, device) -> (mlp, x): built once per process, reused by every chunk


def _build(d: int, h: int, tokens: int, dev):
    import torch

    from helpers.models import MLP
    from helpers.tp import ParallelMLP

    key = (d, h, tokens, str(dev))
    if key not in _BUILT:
        torch.manual_seed(0)                               # the same dense weights on every rank and side
        dense = MLP(d, h)
        x = torch.randn(tokens, d)                         # X: (tokens, d) on every rank
        mlp = ParallelMLP.from_dense(dense.w1, dense.w2).to(dev)     # w1: (h/p, d), w2: (d, h/p)
        _BUILT[key] = (mlp, x.to(dev).requires_grad_())
    return _BUILT[key]


def mlp_step_times(d: int, h: int, tokens: int, warmup: int, iters: int, dev=None) -> dict:
    """Seconds of each of ``iters`` TP MLP steps (forward + backward, after a barrier; CUDA
    synchronised), after ``warmup`` untimed ones; plus a checksum of the output and the thread count.
    ``dev``: None = on an engine of ``connect()``, the engine's ``device``."""
    import torch
    import torch.distributed as dist

    if dev is None:
        from helpers.engine.namespace import user_ns

        dev = user_ns()["device"]
    dev = torch.device(dev)
    cuda = dev.type == "cuda"
    mlp, x = _build(d, h, tokens, dev)
    times, y = [], None
    for i in range(warmup + iters):
        mlp.zero_grad(set_to_none=True)
        x.grad = None
        dist.barrier()
        if cuda:
            torch.cuda.synchronize(dev)
        t = time.perf_counter()
        y = mlp(x)                                          # one all-reduce (g)
        y.pow(2).sum().backward()                           # one all-reduce (f)
        if cuda:
            torch.cuda.synchronize(dev)
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return {"times": times, "threads": torch.get_num_threads(), "checksum": float(y.detach().double().sum())}


def threads() -> int:
    """torch's intra-op thread count in this process (what connect() set on an engine)."""
    import torch

    return torch.get_num_threads()


def serve(backend: str, nthreads: str, ctl: str) -> None:
    """A torchrun worker: run :func:`mlp_step_times` whenever the benchmark asks, until told to stop."""
    sys.path.insert(0, REPO)
    import torch
    import torch.distributed as dist

    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    # connect()'s device rule: own GPU under NCCL, GPUs shared round-robin under gloo, else CPU
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if backend == "nccl":
        dev = torch.device("cuda", local_rank)
    elif gpus:
        dev = torch.device("cuda", local_rank % gpus)
    else:
        dev = torch.device("cpu")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    torch.set_num_threads(int(nthreads))                   # what connect() gives each engine
    dist.init_process_group(backend)
    k = 0
    while True:
        path = os.path.join(ctl, f"cmd{k}.json")
        while not os.path.exists(path):
            time.sleep(0.01)
        with open(path) as f:
            cmd = json.load(f)
        if cmd.get("stop"):
            break
        res = mlp_step_times(cmd["d"], cmd["h"], cmd["tokens"], cmd["warmup"], cmd["iters"], str(dev))
        tmp = os.path.join(ctl, f".res{k}-rank{rank}.json")
        with open(tmp, "w") as f:
            json.dump(res, f)
        os.replace(tmp, os.path.join(ctl, f"res{k}-rank{rank}.json"))
        k += 1
    dist.destroy_process_group()


if __name__ == "__main__":
    if len(sys.argv) != 5 or sys.argv[1] != "serve":
        raise SystemExit("usage: bench_tp_children.py serve BACKEND THREADS CTL_DIR (under torchrun)")
    serve(*sys.argv[2:])
