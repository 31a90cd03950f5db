"""A TP MLP training step on the course's engines vs the same code under torchrun, in one run.

    python benchmarks/bench_tp.py [-n 4] [--pairs 10] [--iters 5] [--d 512] [--h 2048] [--tokens 256]

One figure: the step time of a Megatron MLP block (``helpers.tp.ParallelMLP`` over all n ranks,
forward + backward, two all-reduces) on the engines of ``connect()`` against the very same function
(``bench_tp_children.mlp_step_times``) in one long-lived torchrun job with the same ranks and the
same torch thread count. The two take turns chunk by chunk (engines first, then torchrun, then the
reverse); per step the slowest rank's time counts; per chunk the median step; **ratio = the median
of the paired chunk ratios** (engines / torchrun next to it). Target: <= 1.05x. Not a test: it
always exits 0. The output checksums of the two sides must agree (same seed, same code).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import uuid

import bench_tp_children  # benchmarks/ (this script's folder): the step, shipped by reference

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
CHILD = os.path.join(HERE, "bench_tp_children.py")
RUN_ID = f"benchtp{uuid.uuid4().hex[:6]}"
TIMEOUT = 300.0


def load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def slowest_rank_medians(per_rank: list[dict]) -> float:
    steps = [max(col) for col in zip(*[r["times"] for r in per_rank])]   # the slowest rank sets a step
    return statistics.median(steps)


class TorchrunJob:
    """The long-lived torchrun job of bench_tp_children.serve, driven through files in ``ctl``."""

    def __init__(self, n: int, backend: str, threads: int, ctl: str):
        self.n, self.ctl, self.k = n, ctl, 0
        self.log = open(os.path.join(ctl, "torchrun.log"), "w")
        env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
             CHILD, "serve", backend, str(threads), ctl],
            cwd=REPO, env=env, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)

    def _command(self, cmd: dict) -> None:
        tmp = os.path.join(self.ctl, ".cmd")
        with open(tmp, "w") as f:
            json.dump(cmd, f)
        os.replace(tmp, os.path.join(self.ctl, f"cmd{self.k}.json"))

    def run(self, **cmd) -> list[dict]:
        self._command(cmd)
        names = [os.path.join(self.ctl, f"res{self.k}-rank{r}.json") for r in range(self.n)]
        deadline = time.monotonic() + TIMEOUT
        while not all(os.path.exists(f) for f in names):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the torchrun job stopped (rc {self.proc.poll()}); see {self.log.name}")
            time.sleep(0.005)
        out = []
        for name in names:
            with open(name) as f:
                out.append(json.load(f))
        self.k += 1
        return out

    def stop(self) -> None:
        try:
            if self.proc.poll() is None:
                self._command({"stop": True})
                self.proc.wait(timeout=60)
        except Exception:
            pass
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)    # the session this job leads
                self.proc.wait()
            self.log.close()


def leftovers() -> int:
    import psutil

    n = 0
    for p in psutil.process_iter(["pid"]):
        try:
            if p.environ().get("IPP_CLUSTER_ID", "").startswith(RUN_ID):
                n += 1
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return n


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=4, help="ranks on both sides (default 4)")
    ap.add_argument("--backend", choices=("gloo", "nccl"), default="gloo")
    ap.add_argument("--pairs", type=int, default=10, help="alternating chunk pairs (default 10)")
    ap.add_argument("--iters", type=int, default=5, help="timed steps per chunk (default 5)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps per chunk (default 1)")
    ap.add_argument("--d", type=int, default=512, help="model dim (default 512)")
    ap.add_argument("--h", type=int, default=2048, help="hidden dim, divisible by n (default 2048)")
    ap.add_argument("--tokens", type=int, default=256, help="tokens per step (default 256)")
    args = ap.parse_args(argv)
    os.chdir(REPO)
    sys.path.insert(0, REPO)
    from helpers import connect
    from helpers.engine.namespace import load_module

    print(f"bench_tp {RUN_ID}: n={args.n} backend={args.backend} MLP d={args.d} h={args.h} "
          f"tokens={args.tokens}, {args.pairs} pairs x {args.iters} steps (load {load()})", flush=True)
    tmp = tempfile.mkdtemp(prefix=f"{RUN_ID}-")
    tc = job = None
    eng, tr, ratios, notes = [], [], [], []
    thr = {}
    try:
        tc = connect(n=args.n, cluster_id=f"{RUN_ID}-main", profile_dir=os.path.join(tmp, "profile"),
                     backend=args.backend, activate=False)
        tc.apply(load_module, "bench_tp_children", CHILD)
        threads = min(tc.apply(bench_tp_children.threads))
        ctl = os.path.join(tmp, "ctl")
        os.makedirs(ctl)
        job = TorchrunJob(args.n, args.backend, threads, ctl)
        step = dict(d=args.d, h=args.h, tokens=args.tokens, warmup=args.warmup, iters=args.iters)

        def on_engines():
            res = tc.apply(bench_tp_children.mlp_step_times, args.d, args.h, args.tokens,
                           args.warmup, args.iters, None)
            thr["engines"] = [r["threads"] for r in res]
            return res

        def under_torchrun():
            res = job.run(**step)
            thr["torchrun"] = [r["threads"] for r in res]
            return res

        for i in range(args.pairs):
            order = [("engines", on_engines), ("torchrun", under_torchrun)]
            if i % 2:
                order.reverse()
            got = {name: fn() for name, fn in order}
            e, t = slowest_rank_medians(got["engines"]), slowest_rank_medians(got["torchrun"])
            ce, ct = got["engines"][0]["checksum"], got["torchrun"][0]["checksum"]
            if abs(ce - ct) > 1e-6 * max(1.0, abs(ct)):
                notes.append(f"pair {i + 1}: checksums differ: engines {ce!r}, torchrun {ct!r}")
            eng.append(e)
            tr.append(t)
            ratios.append(e / t)
            print(f"  pair {i + 1:2d}: engines {1e3 * e:7.2f} ms, torchrun {1e3 * t:7.2f} ms, "
                  f"ratio {e / t:.3f}  (load {load()})", flush=True)
    except BaseException:  # noqa: BLE001 - a benchmark reports, it does not fail
        notes.append("interrupted by an error:\n" + traceback.format_exc())
    finally:
        if job is not None:
            job.stop()
        if tc is not None:
            try:
                tc.shutdown()
            except Exception:
                pass
    if ratios:
        import torch

        r = statistics.median(ratios)
        print("\n" + "=" * 96)
        print(f"torch {torch.__version__} | {len(os.sched_getaffinity(0))} cores | load {load()} | "
              f"torch threads per rank: engines {thr.get('engines')}, torchrun {thr.get('torchrun')}")
        print(f"{'metric':40s} {'engines':>9s} {'torchrun':>9s} {'unit':>5s} {'ratio':>7s} {'target':>8s}  result")
        print(f"{'TP MLP step (fwd+bwd), slowest rank':40s} {1e3 * statistics.median(eng):9.2f} "
              f"{1e3 * statistics.median(tr):9.2f} {'ms':>5s} {r:6.3f}x {'<=1.05x':>8s}  "
              f"{'pass' if r <= 1.05 else f'MISS ({r / 1.05 - 1:+.0%})'}")
        print(f"ratio = median of {len(ratios)} paired chunk ratios (min {min(ratios):.3f}, max {max(ratios):.3f})")
    for note in notes:
        print("note: " + note)
    print(f"processes of this run ({RUN_ID}*) still alive: {leftovers()}")
    sys.exit(0)


if __name__ == "__main__":
    main()
