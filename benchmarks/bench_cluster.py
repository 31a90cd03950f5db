"""How the course's cluster compares with plain torchrun (and raw ipyparallel), in one run.

    python benchmarks/bench_cluster.py [-n 4] [--rounds 5] [--sizes 1,64] [--backend gloo|nccl]

Three figures, each a ratio measured in *this* run, the candidate and its baseline
interleaved round by round (the machine may be shared and noisy: compare only
numbers from the same run):

1. startup: seconds from launching a fresh Python process to a first finished
   all-reduce whose result is back where it was asked for.
     * ours      ``helpers.connect(n, cluster_id=<unique>, profile_dir=<tmp>)`` then
                 ``cluster.run(all_reduce)`` and ``cluster.pull`` of the (float) result;
     * baseline  ``python -m torch.distributed.run --standalone --nproc_per_node=n``
                 running init_process_group + one all_reduce;
     * also      raw ipyparallel, the naive way: ``ipp.Cluster(n).start_and_connect_sync()``,
                 import torch on the engines, init_process_group via env://, all_reduce.
   The child prints a wall-clock timestamp once the result is back; shutdown is not timed.
   Target: connect() <= 1.3x torchrun.
2. %%px latency: median time of a trivial ``%%px x = 1`` run through a real IPython
   InteractiveShell (``shell.run_cell_magic('px', '', 'x = 1')``, the %%px that
   ``cluster.activate()`` installs, as ``connect()`` does in a notebook) vs
   ``view.execute('x = 1', block=True)`` on the same engines, interleaved repetition by
   repetition.  Target <= 1.1x.  Also shown: ipyparallel's own %%px, a whole cell through
   ``shell.run_cell``, and ``execute(silent=False)`` + ``wait_for_output`` (what any %%px
   has to do to show ``Out[...]`` and printed output).
3. all-reduce bus bandwidth, busbw = 2(n-1)/n * bytes / time, per size: float32 tensor,
   ``time.perf_counter`` around ``dist.all_reduce`` on every rank (after a barrier; CUDA
   synchronized on GPUs), max over ranks per iteration, median over iterations, on the
   engines vs the same function under torchrun with the same torch thread count.
   Target: >= 0.95x torchrun at 64 MiB.

It is not a test: it always exits 0.  ``--breakdown`` adds instrumented connect() runs that
show where the startup time goes (engine torch import, registration, heartbeat, probe,
process-group init); ``--also-helpers DIR`` times connect() from a modified copy of
``helpers/`` (DIR contains ``helpers/``) in the same rounds, to measure a proposed change.

The child programs (connect(), the torchrun workers, raw ipyparallel, the instrumented engine
command) and the all-reduce loop are plain functions in ``bench_children.py`` next to this
file: children run ``python benchmarks/bench_children.py <command> ...``, and the engines get
the loop with ``cluster.apply`` after ``helpers.engine.namespace.load_module``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import uuid

import bench_children  # benchmarks/ (this script's folder): the children and the engine-side loop

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HELPERS_ROOT = REPO  # the directory holding the helpers/ under test (--helpers changes it)

MiB = 1 << 20
RUN_ID = f"bench{uuid.uuid4().hex[:6]}"  # every cluster this run starts has an id with this prefix
CHILD_TIMEOUT = 240.0  # seconds any one child process may take

# The child processes (connect(), torchrun workers, raw ipyparallel, --breakdown's engine
# command) and the all-reduce loop are real code in bench_children.py, next to this file.
CHILDREN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench_children.py")

# --------------------------------------------------------------------------- plumbing

def load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


class Bench:
    def __init__(self, args):
        self.args = args
        self.tmp = tempfile.mkdtemp(prefix=f"{RUN_ID}-")
        self.started: list[tuple[str, str]] = []  # (cluster_id, profile_dir) of every cluster
        self.rows: list[tuple] = []
        self.notes: list[str] = []
        self.raw: dict = {"run_id": RUN_ID}

    # ---- children
    def new_cluster(self, tag: str) -> tuple[str, str]:
        cid = f"{RUN_ID}-{tag}-{uuid.uuid4().hex[:6]}"
        prof = os.path.join(self.tmp, f"profile-{cid}")
        os.makedirs(prof)
        self.started.append((cid, prof))
        return cid, prof

    def child(self, argv: list[str], *, pythonpath: str | None = None,
              cwd: str | None = None) -> dict | None:
        """Run a child; return its BENCH json plus t_launch, or None (and a note) on failure."""
        pythonpath, cwd = pythonpath or HELPERS_ROOT, cwd or HELPERS_ROOT
        env = dict(os.environ)
        env["PYTHONPATH"] = pythonpath + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        for var in ("TP_CLUSTER_ID", "TP_PROFILE_DIR"):
            env.pop(var, None)
        t_launch = time.time()
        p = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             stdin=subprocess.DEVNULL, text=True, start_new_session=True)
        try:
            out, err = p.communicate(timeout=CHILD_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)  # the session this child leads
            out, err = p.communicate()
            self.notes.append(f"timed out after {CHILD_TIMEOUT:.0f} s: {' '.join(argv[:4])}")
            return None
        t_exit = time.time()
        for line in out.splitlines():
            if line.startswith("BENCH "):
                d = json.loads(line[6:])
                d["t_launch"], d["t_exit"] = t_launch, t_exit
                return d
        tail = "\n    ".join((err or out).strip().splitlines()[-6:])
        self.notes.append(f"child failed (rc {p.returncode}): {' '.join(argv[:4])}\n    {tail}")
        return None

    def sweep(self, cid: str, prof: str) -> None:
        from helpers import cluster as hc

        try:
            hc.stop_cluster(hc.ClusterRef(cid, prof))
        except Exception as e:  # pragma: no cover - best effort
            self.notes.append(f"could not stop {cid}: {e}")

    def leftovers(self) -> int:
        import psutil

        n = 0
        for p in psutil.process_iter(["pid"]):
            try:
                if p.environ().get("IPP_CLUSTER_ID", "").startswith(RUN_ID):
                    n += 1
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        return n

    def torchrun(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc_per_node={self.args.n}", CHILDREN, "torchrun", *args]

    # ---- 1. startup
    def run_connect(self, helpers_root: str, breakdown: bool = False) -> dict | None:
        cid, prof = self.new_cluster("conn")
        ts_dir = os.path.join(self.tmp, f"ts-{cid}")
        os.makedirs(ts_dir)
        d = self.child([sys.executable, CHILDREN, "connect", cid, prof,
                        str(self.args.n), self.args.backend, "1" if breakdown else "0", ts_dir],
                       pythonpath=helpers_root, cwd=helpers_root)
        self.sweep(cid, prof)
        if d is not None:
            expect_dir = os.path.join(os.path.realpath(helpers_root), "helpers")
            if os.path.realpath(d["helpers"]) != expect_dir:
                self.notes.append(f"connect child imported {d['helpers']}, not {expect_dir}")
            if breakdown:
                engines = []
                for name in os.listdir(ts_dir):
                    with open(os.path.join(ts_dir, name)) as f:
                        engines.append(dict((k, float(v)) for k, v in (ln.split() for ln in f)))
                d["engines"] = engines
        return d

    def run_torchrun_startup(self) -> dict | None:
        return self.child(self.torchrun("startup", self.args.backend))

    def run_raw(self) -> dict | None:
        cid, prof = self.new_cluster("raw")
        d = self.child([sys.executable, CHILDREN, "raw", cid, prof,
                        str(self.args.n), self.args.backend])
        self.sweep(cid, prof)
        return d

    def startup(self) -> None:
        a = self.args
        expected = 4.0 * a.n
        kinds = [("connect", lambda: self.run_connect(HELPERS_ROOT)),
                 ("torchrun", self.run_torchrun_startup),
                 ("raw ipp", self.run_raw)]
        for path in a.also_helpers:
            kinds.append((f"connect [{path}]", lambda p=path: self.run_connect(p)))
        if a.breakdown:
            kinds.append(("connect (instrumented)",
                          lambda: self.run_connect(HELPERS_ROOT, breakdown=True)))
            for path in a.also_helpers:
                kinds.append((f"connect [{path}] (instrumented)",
                              lambda p=path: self.run_connect(p, breakdown=True)))
        res: dict[str, list] = {k: [] for k, _ in kinds}
        print(f"\n[1] startup to a first all-reduce: {a.rounds} rounds x {len(kinds)} kinds "
              f"(load {load()})", flush=True)
        for r in range(a.rounds):
            order = kinds[r % len(kinds):] + kinds[:r % len(kinds)]  # rotate: no kind always first
            line = []
            for name, fn in order:
                d = fn()
                if d is not None and abs(float(d.get("result", -1)) - expected) > 1e-6:
                    self.notes.append(f"{name}: all-reduce gave {d.get('result')}, expected {expected}")
                if d is not None:
                    d["load1"] = os.getloadavg()[0]
                res[name].append(d)
                line.append(f"{name} {d['t_done'] - d['t_launch']:.2f}s" if d else f"{name} FAILED")
            print(f"  round {r + 1}: " + ", ".join(line) + f"  (load {load()})", flush=True)
        self.raw["startup"] = res

        def secs(d):
            return d["t_done"] - d["t_launch"] if d else None

        def row(metric, name, op=None, target=None, info=""):
            ours = med([secs(d) for d in res[name]])
            pairs = [secs(d) / secs(t) for d, t in zip(res[name], res["torchrun"]) if d and t]
            self.row(metric, ours, med([secs(t) for t in res["torchrun"]]), "s", op, target,
                     info=info, ratio=med(pairs))

        row("startup: connect() -> 1st all-reduce", "connect", "<=", 1.3)
        for path in a.also_helpers:
            row(f"startup: connect() from {path}", f"connect [{path}]", "<=", 1.3)
        row("startup: raw ipyparallel (naive)", "raw ipp", info="issue: ~1.6x")
        self.startup_phases(res)

    def startup_phases(self, res) -> None:
        """Median seconds since launch at which each step finished."""
        def phase_line(name, keys):
            ds = [d for d in res.get(name, []) if d]
            if not ds:
                return
            parts = []
            for k in keys:
                v = med([d[k] - d["t_launch"] for d in ds if k in d])
                if v is not None:
                    parts.append(f"{'engines ' if k[0] == 'e' else ''}{k[2:]} {v:.2f}")
            print(f"  {name:24s} " + " | ".join(parts))

        print("  median seconds since launch at which each step finished ('engines': the last engine):")
        phase_line("torchrun", ["t_start", "t_imported", "t_pg", "t_done", "t_exit"])
        phase_line("raw ipp", ["t_start", "t_registered", "t_imported", "t_pg", "t_done", "t_exit"])
        phase_line("connect", ["t_start", "t_imported", "t_connected", "t_done", "t_exit"])
        for name in [k for k in res if k.endswith("(instrumented)")]:
            ds = [d for d in res[name] if d]
            for d in ds:  # engine steps: the last engine to get there
                for k in ("e_start", "e_imported", "e_register_sent", "e_register_done", "e_first_ping"):
                    vals = [e[k] for e in d.get("engines", []) if k in e]
                    if vals:
                        d[k] = max(vals)
            phase_line(name, ["t_imported", "t_spawned", "e_start", "e_imported",
                              "e_register_sent", "e_register_done", "e_first_ping",
                              "t_registered", "t_probed", "t_pg", "t_done"])
            hb = med([d["t_registered"] - d["e_register_done"] for d in ds
                      if "t_registered" in d and "e_register_done" in d])
            probe = med([d["t_probed"] - d["t_registered"] for d in ds
                         if "t_probed" in d and "t_registered" in d])
            if hb is not None:
                print(f"  {'':24s} -> last engine registered to client sees all: {hb:.2f} s "
                      f"(heartbeat wait); engines seen to probe back: {probe:.2f} s; "
                      f"client imported torch: {any(d.get('torch_in_client') for d in ds)}")

    # ---- 2. %%px latency
    def px_latency(self, tc) -> None:
        """%%px as connect() installs it, ipyparallel's own %%px, and DirectView.execute."""
        from IPython.core.interactiveshell import InteractiveShell

        a = self.args
        shell = InteractiveShell.instance()
        view = tc.view  # a blocking DirectView over every rank
        view.activate("_ipp")  # ipyparallel's own magic, as %%px_ipp
        tc.activate()  # what connect() does in a notebook: %%px for this cluster
        if shell.find_cell_magic("px") is None:  # a helpers without its own activation
            view.activate()
        product = type(shell.find_cell_magic("px").__self__).__name__
        print(f"\n[2] %%px latency: {a.px_reps} interleaved repetitions; %%px is {product} "
              f"(load {load()})", flush=True)
        cases = {
            "magic": lambda: shell.run_cell_magic("px", "", "x = 1"),
            "ipp_magic": lambda: shell.run_cell_magic("px_ipp", "", "x = 1"),
            "run_cell": lambda: shell.run_cell("%%px\nx = 1"),
            "execute": lambda: view.execute("x = 1", block=True),
            # what any %%px must do: silent=False (so Out[...] and the execution count come
            # back) and wait until every engine's output is complete (its iopub 'idle')
            "execute_output": lambda: _execute_wait_output(view),
        }
        times: dict[str, list] = {k: [] for k in cases}
        order = list(cases)
        warm = 20
        for i in range(a.px_reps + warm):
            j = i % len(order)
            for name in order[j:] + order[:j]:  # rotate: no case always first
                t = time.perf_counter()
                cases[name]()
                dt = time.perf_counter() - t
                if i >= warm:
                    times[name].append(dt)
        r = shell.run_cell("%%px\nx = 1")
        if not r.success:
            self.notes.append(f"%%px cell failed: {r.error_in_exec!r}")
        self.raw["px"] = times
        ms = {k: 1e3 * med(v) for k, v in times.items()}
        print("  medians: " + ", ".join(f"{k} {v:.2f} ms" for k, v in ms.items()) + f" (load {load()})")

        def row(metric, name, base="execute", op=None, target=None, info=""):
            pairs = [x / y for x, y in zip(times[name], times[base])]  # same repetition
            self.row(metric, ms[name], ms[base], "ms", op, target, info=info, ratio=med(pairs))

        row("%%px x = 1 vs view.execute", "magic", op="<=", target=1.1)
        row("  ipyparallel's own %%px vs view.execute", "ipp_magic", info="info")
        row("  whole cell, shell.run_cell('%%px..')", "run_cell", info="info: + IPython cell")
        row("  execute(silent=False) + wait_for_output", "execute_output", info="info: %%px's protocol")
        row("  %%px vs execute(silent=False) + output", "magic", base="execute_output",
            info="info: the magic's own cost")

    # ---- 3. bus bandwidth
    def busbw(self, tc) -> None:
        """Engines and one long-lived torchrun job take turns, chunk by chunk."""
        a = self.args
        n = a.n
        sizes = [int(float(s) * MiB) for s in a.sizes.split(",") if s.strip()]
        warmups = [1 if s >= 16 * MiB else 3 for s in sizes]  # per chunk
        iters = [a.iters_large if s >= 16 * MiB else a.iters_small for s in sizes]
        chunks = 4 * a.rounds  # noisy machines: many short, adjacent chunks
        # the loop is bench_children.allreduce_times on both sides: load that file on the
        # engines, then ship the function by reference (ipyparallel sends its module's name)
        from helpers.engine.namespace import load_module

        tc.apply(load_module, "bench_children", CHILDREN)
        engine_threads = tc.apply(bench_children.threads)  # what connect() set: cores // engines per host
        threads = min(engine_threads)  # the torchrun workers get the same
        print(f"\n[3] all-reduce busbw: sizes {a.sizes} MiB, {chunks} alternating chunks "
              f"(engines, then torchrun, or the reverse) of {iters} timed iterations; "
              f"torch threads per rank {engine_threads} (load {load()})", flush=True)

        ctl = os.path.join(self.tmp, f"bw-{uuid.uuid4().hex[:6]}")
        os.makedirs(ctl)
        log = open(os.path.join(ctl, "torchrun.log"), "w")
        job = subprocess.Popen(self.torchrun("serve", a.backend, str(threads), ctl), cwd=REPO,
                               stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                               start_new_session=True)
        ours: dict[int, list] = {s: [] for s in sizes}
        base: dict[int, list] = {s: [] for s in sizes}
        thr = {"engines": None, "torchrun": None}
        k = [0]

        def collect(per_rank, into):
            for s in sizes:
                cols = zip(*[r["times"][str(s)] for r in per_rank])
                into[s].extend(max(c) for c in cols)  # the slowest rank sets the time

        def on_engines():
            # each rank on its own device (None: the one connect() gave it), results by rank
            per_rank = tc.apply(bench_children.allreduce_times, sizes, warmups, iters, None)
            thr["engines"] = [r["threads"] for r in per_rank]
            collect(per_rank, ours)

        def command(cmd) -> None:
            tmp = os.path.join(ctl, ".cmd")
            with open(tmp, "w") as f:
                json.dump(cmd, f)
            os.replace(tmp, os.path.join(ctl, f"cmd{k[0]}.json"))

        def under_torchrun():
            command({"sizes": sizes, "warmups": warmups, "iters": iters})
            names = [os.path.join(ctl, f"res{k[0]}-rank{r}.json") for r in range(n)]
            deadline = time.monotonic() + CHILD_TIMEOUT
            while not all(os.path.exists(f) for f in names):
                if job.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"torchrun busbw job stopped (rc {job.poll()}); "
                                       f"see {log.name}")
                time.sleep(0.005)
            per_rank = []
            for name in names:
                with open(name) as f:
                    per_rank.append(json.load(f))
            k[0] += 1
            thr["torchrun"] = [r["threads"] for r in per_rank]
            collect(per_rank, base)

        try:
            for c in range(chunks):
                steps = [on_engines, under_torchrun] if c % 2 == 0 else [under_torchrun, on_engines]
                for fn in steps:
                    fn()
                if c % 2 == 1:
                    print(f"  chunks {c}-{c + 1}: " + ", ".join(
                        f"{s / MiB:g} MiB engines {bw(n, s, med(ours[s][-2 * iters[i]:])):.2f} / "
                        f"torchrun {bw(n, s, med(base[s][-2 * iters[i]:])):.2f} GB/s"
                        for i, s in enumerate(sizes)) + f"  (load {load()})", flush=True)
            command({"stop": True})
            job.wait(timeout=60)
        except Exception:
            self.notes.append("busbw: " + traceback.format_exc().strip().splitlines()[-1])
            with open(log.name) as f:
                tail = f.read().strip().splitlines()[-6:]
            self.notes.append("torchrun log tail:\n    " + "\n    ".join(tail))
        finally:
            if job.poll() is None:
                os.killpg(job.pid, signal.SIGKILL)  # the session this job leads
                job.wait()
            log.close()
        print(f"  torch threads per rank: engines {thr['engines']}, torchrun {thr['torchrun']}")
        self.raw["busbw"] = {"sizes": sizes, "ours": {str(k): v for k, v in ours.items()},
                             "torchrun": {str(k): v for k, v in base.items()}, "threads": thr}
        for i, s in enumerate(sizes):
            # paired: each engines chunk against the torchrun chunk next to it in time
            m = iters[i]
            pairs = [med(ours[s][j:j + m]) and med(base[s][j:j + m]) / med(ours[s][j:j + m])
                     for j in range(0, min(len(ours[s]), len(base[s])), m)]
            target = 64 * MiB == s
            self.row(f"busbw {s / MiB:g} MiB all-reduce", bw(n, s, med(ours[s])), bw(n, s, med(base[s])),
                     "GB/s", ">=" if target else None, 0.95 if target else None, ratio=med(pairs))

    # ---- table
    def row(self, metric, ours, base, unit, op, target, info="", ratio=None):
        if ratio is None and ours is not None and base:
            ratio = ours / base
        self.rows.append((metric, ours, base, unit, ratio, op, target, info))

    def table(self) -> None:
        import ipyparallel
        import torch

        print("\n" + "=" * 100)
        print(f"machine: {platform.node()} | {cpu_count()} cores | load avg {load()} | "
              f"python {platform.python_version()} | torch {torch.__version__} | "
              f"ipyparallel {ipyparallel.__version__} | backend {self.args.backend} | n {self.args.n} | "
              f"gpus {torch.cuda.device_count() if torch.cuda.is_available() else 0}")
        hdr = f"{'metric':44s} {'ours':>10s} {'baseline':>10s} {'unit':>5s} {'ratio':>7s} {'target':>8s}  result"
        print(hdr)
        print("-" * len(hdr))
        for metric, ours, base, unit, ratio, op, target, info in self.rows:
            if ratio is None:
                verdict = "n/a"
            elif op == "<=":
                verdict = "pass" if ratio <= target else f"MISS ({ratio / target - 1:+.0%})"
            elif op == ">=":
                verdict = "pass" if ratio >= target else f"MISS ({ratio / target - 1:+.0%})"
            else:
                verdict = info or "info"
            tgt = f"{op}{target:g}x" if op else "-"
            f = (lambda v: f"{v:10.2f}" if v is not None else f"{'-':>10s}")
            print(f"{metric:44s} {f(ours)} {f(base)} {unit:>5s} "
                  f"{(f'{ratio:.2f}x' if ratio is not None else '-'):>7s} {tgt:>8s}  {verdict}")
        print("ours, baseline: medians. ratio: median of paired ratios (ours / baseline of the same "
              "round, %%px repetition, or adjacent busbw chunk pair).\nbaseline: torchrun (startup, "
              "busbw), DirectView.execute (%%px)")
        for note in self.notes:
            print("note: " + note)

    def cleanup(self) -> None:
        for cid, prof in self.started:
            self.sweep(cid, prof)
        left = self.leftovers()
        print(f"processes of this run ({RUN_ID}*) still alive: {left}")
        shutil.rmtree(self.tmp, ignore_errors=True)


def _execute_wait_output(view):
    ar = view.execute("x = 1", silent=False, block=False)
    ar.get()
    ar.wait_for_output(5)


def bw(n: int, nbytes: int, seconds) -> float | None:
    """Bus bandwidth in GB/s (nccl-tests' definition for all-reduce)."""
    if not seconds:
        return None
    return 2 * (n - 1) / n * nbytes / seconds / 1e9


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", type=int, default=None,
                   help="engines / torchrun processes (default: 4 on CPU, one per GPU with nccl)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    p.add_argument("--sizes", default="1,64", help="all-reduce sizes in MiB (default 1,64)")
    p.add_argument("--backend", choices=("gloo", "nccl"), default="gloo",
                   help="gloo (default: CPU, or GPUs shared round-robin as connect() does) or nccl, one GPU per rank")
    p.add_argument("--px-reps", type=int, default=200, help="%%px repetitions (default 200)")
    p.add_argument("--iters-small", type=int, default=10,
                   help="timed all-reduces per chunk for sizes < 16 MiB (default 10)")
    p.add_argument("--iters-large", type=int, default=3,
                   help="timed all-reduces per chunk for sizes >= 16 MiB (default 3)")
    p.add_argument("--only", default="startup,px,busbw",
                   help="comma-separated subset of startup,px,busbw (default: all)")
    p.add_argument("--breakdown", action="store_true",
                   help="add instrumented connect() runs: where the startup time goes")
    p.add_argument("--also-helpers", action="append", default=[], metavar="DIR",
                   help="also time connect() from DIR/helpers (a modified copy), same rounds")
    p.add_argument("--json", metavar="PATH", help="write every measurement to PATH")
    p.add_argument("--helpers", metavar="DIR", default=REPO,
                   help="use DIR/helpers everywhere instead of this repository's (default: the repo)")
    args = p.parse_args(argv)
    args.also_helpers = [os.path.abspath(d) for d in args.also_helpers]
    args.json = args.json and os.path.abspath(args.json)
    global HELPERS_ROOT
    HELPERS_ROOT = os.path.abspath(args.helpers)
    sys.path.insert(0, HELPERS_ROOT)
    # engines run `python -m helpers.engine.main` in our working directory: that picks the copy
    os.chdir(HELPERS_ROOT)
    if args.n is None:
        if args.backend == "nccl":
            import torch

            args.n = torch.cuda.device_count()
        else:
            args.n = 4
    only = set(args.only.split(","))

    import helpers

    print(f"bench_cluster {RUN_ID}: n={args.n} backend={args.backend} rounds={args.rounds} "
          f"cores={cpu_count()} load {load()} helpers={os.path.dirname(helpers.__file__)}", flush=True)
    b = Bench(args)
    tc = None
    try:
        if "startup" in only:
            b.startup()
        if only & {"px", "busbw"}:
            from helpers import connect

            cid, prof = b.new_cluster("main")
            tc = connect(n=args.n, cluster_id=cid, profile_dir=prof,
                         backend=args.backend, activate=False)
            if "px" in only:
                b.px_latency(tc)
            if "busbw" in only:
                b.busbw(tc)
    except BaseException:  # noqa: BLE001 - a benchmark reports, it does not fail
        b.notes.append("interrupted by an error:\n" + traceback.format_exc())
    finally:
        if tc is not None:
            try:
                tc.shutdown()
            except Exception:
                pass
        try:
            b.table()
        except Exception:
            traceback.print_exc()
        if args.json:
            b.raw["rows"] = b.rows
            with open(args.json, "w") as f:
                json.dump(b.raw, f, default=str)
        b.cleanup()
    sys.exit(0)


if __name__ == "__main__":
    main()
