"""A workshop day against one cluster: do the engines stay flat, and does the day end cleanly?

    .venv/bin/python benchmarks/bench_workshop.py                 # (a) 20 runs of 03, (b) 2 passes
    .venv/bin/python benchmarks/bench_workshop.py --runs 5 --part a

(a) notebook 03 run ``--runs`` times in a row (a fresh kernel each time, as a learner's
    Restart & Run All) against one 4-engine cluster started under ``ulimit -n 1024`` (the child
    that starts the cluster runs under ``RLIMIT_NOFILE`` 1024, and the engines inherit it);
    prints each engine's open files (files + sockets), threads and RSS after run 1 and the last.
(b) the whole course (``notebooks/0*.ipynb``) twice against one cluster, the second pass in a
    shuffled order; prints the same figures after each pass.
(c) after each part, the cluster is stopped as ``./launch_cluster.sh stop`` does
    (``stop_cluster``) and its report printed: how many processes had to be killed (none
    expected).

Every notebook run is checked for error outputs (listed if any). Not a test: it exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

# Runs in a child (its PYTHONPATH is this tree): starts the cluster, runs the notebooks, stops it.
CHILD = r"""
import glob, json, os, random, sys, time, uuid
import nbformat, psutil
from nbclient import NotebookClient
from helpers.cluster import ClusterRef, start_cluster, stop_cluster
from helpers.cluster.tpcluster import connect
repo, profile, plan = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
cid = "workshop" + uuid.uuid4().hex[:8]
os.environ.update(TP_CLUSTER_ID=cid, TP_PROFILE_DIR=profile)
ref = ClusterRef(cid, profile)
start_cluster(ref, 4, daemon=True)                       # ./launch_cluster.sh start -n 4
tc = connect(cluster_id=cid, profile_dir=profile, activate=False)
pids = [e["pid"] for e in tc.info()]
tc.shutdown(quiet=True)                                  # this process drives nothing

def counts():
    out = []
    for pid in pids:
        p = psutil.Process(pid)
        out.append({"files": len(p.open_files()) + len(p.net_connections()),
                    "threads": p.num_threads(), "rss_mib": p.memory_info().rss >> 20})
    return out

def run(path):
    nb = nbformat.read(path, as_version=4)
    t0 = time.monotonic()
    NotebookClient(nb, timeout=600, kernel_name="python3", allow_errors=True,
                   resources={"metadata": {"path": os.path.dirname(path)}}).execute()
    errs = [f"{o.get('ename')}: {str(o.get('evalue'))[:120]}" for c in nb.cells
            for o in c.get("outputs", []) if o.get("output_type") == "error"]
    return {"nb": os.path.basename(path)[:2], "s": round(time.monotonic() - t0, 1), "errors": errs}

nbs = sorted(glob.glob(os.path.join(repo, "notebooks", "0[0-9]_*.ipynb")))
steps = []
try:
    print("STEP " + json.dumps({"label": "start", "counts": counts()}), flush=True)
    for label, names in plan:
        runs = []
        for name in names:
            runs.append(run(next(p for p in nbs if os.path.basename(p).startswith(name))))
        print("STEP " + json.dumps({"label": label, "runs": runs, "counts": counts()}), flush=True)
finally:
    report = stop_cluster(ref)                           # ./launch_cluster.sh stop
    print("STOP " + json.dumps({"line": report.line(ref), "ended": report.ended,
                                "exited": report.exited}), flush=True)
"""


def child(plan: list, nofile: int | None) -> list[str]:
    """Run CHILD with ``plan`` ([(label, [notebook prefixes]), ...]); its STEP/STOP lines."""
    def limit():
        if nofile:
            _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, hard))

    env = dict(os.environ, PYTHONPATH=REPO)
    for var in ("TP_CLUSTER_ID", "TP_PROFILE_DIR"):
        env.pop(var, None)
    with tempfile.TemporaryDirectory(prefix="workshop-") as profile:
        p = subprocess.Popen([sys.executable, "-c", CHILD, REPO, profile, json.dumps(plan)],
                             env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, preexec_fn=limit)
        lines = []
        for line in p.stdout:
            if line.startswith(("STEP ", "STOP ")):
                lines.append(line)
                show(line)
        err = p.stderr.read()
        if p.wait() != 0:
            print(f"the child failed (exit {p.returncode}):\n{err[-3000:]}")
    return lines


def fmt(counts: list[dict]) -> str:
    return "  ".join(f"rank {r}: {c['files']} files, {c['threads']} threads, {c['rss_mib']} MiB"
                     for r, c in enumerate(counts))


def show(line: str) -> None:
    kind, data = line.split(" ", 1)
    d = json.loads(data)
    if kind == "STOP":
        print(f"  stop: {d['line']}  (engines asked to exit: {d['exited']}, killed: {d['ended']})",
              flush=True)
        return
    runs = d.get("runs", [])
    errors = {r["nb"]: r["errors"] for r in runs if r["errors"]}
    order = " ".join(f"{r['nb']}({r['s']:.0f}s)" for r in runs)
    print(f"  {d['label']}: {order}{'  ERRORS ' + json.dumps(errors) if errors else ''}\n"
          f"    {fmt(d['counts'])}", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20, help="runs of notebook 03 in part (a)")
    ap.add_argument("--part", choices=["a", "b", "all"], default="all")
    ap.add_argument("--seed", type=int, default=0, help="the shuffle of part (b)'s second pass")
    args = ap.parse_args(argv)
    if args.part in ("a", "all"):
        print(f"(a) notebook 03 run {args.runs} times against one cluster, ulimit -n 1024:")
        plan = [(f"after run {i + 1}", ["03"]) for i in range(args.runs)]
        child(plan, nofile=1024)
    if args.part in ("b", "all"):
        import glob
        import random

        names = sorted(os.path.basename(p)[:2]
                       for p in glob.glob(os.path.join(REPO, "notebooks", "0[0-9]_*.ipynb")))
        shuffled = random.Random(args.seed).sample(names, len(names))
        print("(b) the whole course twice against one cluster (the second pass shuffled):")
        child([("after pass 1", names), ("after pass 2 (shuffled)", shuffled)], nofile=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
