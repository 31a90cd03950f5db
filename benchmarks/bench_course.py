"""The whole course headless, timed: every notebook run blank against one 4-engine cluster.

    .venv/bin/python benchmarks/bench_course.py                      # 3 rounds of this tree
    .venv/bin/python benchmarks/bench_course.py --also-repo /tmp/old  # and another checkout, interleaved

One round = start a cluster from that tree (its own ``helpers``), run each notebook of its
``notebooks/`` in a fresh kernel (what a learner's Run All does), stop the cluster. Rounds of
the trees alternate, so both see the same machine. Prints the seconds of each notebook, the
median total per tree and the ratio (this tree over the other). Not a test: it exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

# Runs in a child whose PYTHONPATH is the tree under test: its helpers start the cluster.
CHILD = r"""
import glob, json, os, sys, time, uuid
import nbformat
from nbclient import NotebookClient
from helpers.cluster import connect
tree, profile = sys.argv[1], sys.argv[2]
cid = "course" + uuid.uuid4().hex[:8]
os.environ.update(TP_CLUSTER_ID=cid, TP_PROFILE_DIR=profile)
tc = connect(n=4, cluster_id=cid, profile_dir=profile, timeout=60)
times, errors = {}, {}
try:
    for path in sorted(glob.glob(os.path.join(tree, "notebooks", "[0-9][0-9]_*.ipynb"))):
        nb = nbformat.read(path, as_version=4)
        t0 = time.monotonic()
        NotebookClient(nb, timeout=300, kernel_name="python3", allow_errors=True,
                       resources={"metadata": {"path": os.path.dirname(path)}}).execute()
        name = os.path.basename(path)[:2]
        times[name] = time.monotonic() - t0
        errs = [o.get("ename") for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
        if errs:
            errors[name] = errs
finally:
    tc.shutdown(quiet=True)
print("RESULT " + json.dumps({"times": times, "errors": errors}))
"""


def one_round(tree: str) -> dict:
    env = dict(os.environ, PYTHONPATH=tree)
    with tempfile.TemporaryDirectory(prefix="course-") as profile:
        out = subprocess.run([sys.executable, "-c", CHILD, tree, profile], env=env, cwd=tree,
                             capture_output=True, text=True, timeout=1800)
    line = [s for s in out.stdout.splitlines() if s.startswith("RESULT ")]
    if not line:
        raise RuntimeError(f"the round for {tree} failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")
    return json.loads(line[-1][len("RESULT "):])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--also-repo", help="another checkout of the course, timed in the same rounds")
    args = ap.parse_args(argv)
    trees = [REPO] + ([os.path.abspath(args.also_repo)] if args.also_repo else [])
    runs = {t: [] for t in trees}
    for r in range(args.rounds):
        for t in (trees if r % 2 == 0 else trees[::-1]):
            res = one_round(t)
            runs[t].append(res)
            total = sum(res["times"].values())
            print(f"round {r + 1} {t}: {total:.1f} s  " + "  ".join(f"{k}:{v:.1f}" for k, v in res["times"].items())
                  + (f"  ERRORS {res['errors']}" if res["errors"] else ""), flush=True)
    medians = {}
    for t in trees:
        totals = [sum(x["times"].values()) for x in runs[t]]
        medians[t] = statistics.median(totals)
        names = sorted(runs[t][0]["times"])
        per = {n: statistics.median(x["times"][n] for x in runs[t]) for n in names}
        print(f"\n{t}: median total {medians[t]:.1f} s over {len(totals)} rounds "
              f"({', '.join(f'{n} {s:.1f}' for n, s in per.items())})")
    if len(trees) == 2:
        print(f"ratio (this tree / {trees[1]}): {medians[trees[0]] / medians[trees[1]]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
