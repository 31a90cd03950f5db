"""Measure the fault paths on a real cluster and print the README's troubleshooting figures.

    python benchmarks/bench_faults.py [-n 4] [--timeout 10]

Each scenario runs once on a fresh 4-engine gloo cluster (the CPU default), driven
through the course's own ``%%px`` magics in an IPython shell; the interrupt is a
real SIGINT to this process, as the notebook's stop button sends to its kernel.
Not a test: it prints what it measured and always exits 0.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from helpers import cluster as hc  # noqa: E402
from helpers import connect  # noqa: E402
from helpers.cluster import CollectiveError, DeadRankError  # noqa: E402

PARTIAL = "t = torch.ones(1)\nif rank != 3:\n    dist.all_reduce(t)\n"


def sigint_after(seconds: float) -> None:
    threading.Timer(seconds, lambda: os.kill(os.getpid(), signal.SIGINT)).start()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=4)
    ap.add_argument("--timeout", type=float, default=10.0, help="process-group timeout (s)")
    args = ap.parse_args()

    from IPython.testing.globalipapp import start_ipython

    shell = start_ipython()
    profile = tempfile.mkdtemp(prefix="bench-faults-")
    cid = f"bench-faults-{uuid.uuid4().hex[:6]}"
    rows = []
    tc = connect(n=args.n, cluster_id=cid, profile_dir=profile, timeout=args.timeout)
    try:
        def px(code):
            tc.activate()
            shell.run_cell_magic("px", "", code)

        px("kept = rank")
        t0 = time.monotonic()
        try:
            px(PARTIAL)
        except CollectiveError:
            pass
        rows.append(("all-reduce entered by 3 of 4 ranks: error shown",
                     f"{time.monotonic() - t0:.1f} s (timeout {args.timeout:g} s)"))
        t0 = time.monotonic()
        tc.recover()
        ok = tc.pull("kept") == list(range(args.n))
        rows.append(("recover(), all engines alive (variables kept: %s)" % ok,
                     f"{time.monotonic() - t0:.2f} s"))

        tc.init_distributed(force=True, timeout=120)
        sigint_after(2.0)
        t0 = time.monotonic() + 2.0
        px(PARTIAL)
        rows.append(("interrupt during a blocked all-reduce: every engine stopped",
                     f"{time.monotonic() - t0:.2f} s after SIGINT"))
        t0 = time.monotonic()
        tc.init_distributed(force=True, timeout=args.timeout)
        rows.append(("  then rebuild the process group", f"{time.monotonic() - t0:.2f} s"))

        sigint_after(1.0)
        t0 = time.monotonic() + 1.0
        px("import time\nwhile True:\n    time.sleep(0.01)")
        rows.append(("interrupt of a Python loop (process group survives)",
                     f"{time.monotonic() - t0:.2f} s after SIGINT"))

        os.kill(tc.engines[2].pid, signal.SIGKILL)
        t0 = time.monotonic()
        while tc.engines[2].engine_id in tc.client.ids and time.monotonic() - t0 < 30:
            time.sleep(0.1)
        rows.append(("SIGKILLed engine noticed by the client", f"{time.monotonic() - t0:.1f} s"))
        try:
            px("x = 1")
        except DeadRankError:
            rows.append(("  next %%px cell names the dead rank", "DeadRankError, rank 2"))
        t0 = time.monotonic()
        tc.recover()
        rows.append(("recover() after a dead engine: N engines, ranks 0..N-1, new group",
                     f"{time.monotonic() - t0:.1f} s"))
    finally:
        tc.shutdown()
    left = len(hc.cluster_processes(cid))
    rows.append(("processes left after shutdown()", str(left)))

    bad = [["start", "-n", "0"], ["start", "-n", "x"], ["start", "--nodes", "2"],
           ["start", "--pbs"], ["start", "--nccl", "-n", str(hc.visible_gpus() + 1)]]
    launch = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "launch_cluster.sh")
    env = dict(os.environ, TP_CLUSTER_ID=cid, TP_PROFILE_DIR=profile, VIRTUAL_ENV=sys.prefix,
               TP_VENV=os.path.join(profile, "none"),
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    codes = [subprocess.run([launch, *b], env=env, capture_output=True, timeout=60).returncode
             for b in bad]
    rows.append((f"bad launch_cluster.sh inputs tried: {len(bad)} "
                 f"({', '.join(' '.join(b[1:]) for b in bad)})",
                 f"exit codes {sorted(set(codes))}, processes left {len(hc.cluster_processes(cid))}"))

    width = max(len(r[0]) for r in rows)
    print(f"\nfault figures ({args.n} CPU engines, gloo, {os.cpu_count()} cores, "
          f"load {os.getloadavg()[0]:.1f})")
    for what, figure in rows:
        print(f"  {what:<{width}}  {figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
