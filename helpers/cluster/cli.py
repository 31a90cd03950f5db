"""The command line behind ``launch_cluster.sh``: start, stop, status, lab, export.

``launch_cluster.sh`` prepares the Python environment and hands its arguments
here (``python -m helpers.cluster.cli start -n 4``).  Every refusal is one line on
stderr and exit status 2; nothing is left running after a refusal.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import suppress
from pathlib import Path

import psutil

from ..common.topology import check_n, default_n, layout_note, plan_ranks
from .export import export_notebook
from .lifecycle import (
    DEFAULT_START_TIMEOUT,
    REPO,
    clean_stale,
    client_of,
    is_running,
    kill_processes,
    start_cluster,
    stop_cluster,
    visible_gpus,
)
from .ref import ClusterRef
from .tpcluster import probe_engines

# --------------------------------------------------------------------------- arguments

def _engine_count(text: str) -> int:
    try:
        return check_n(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _add_start_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("-n", type=_engine_count, default=None,
                   help="number of engines (default: one per GPU with 4 or more GPUs; else 4, "
                        "sharing the GPUs over gloo, or 4 CPU engines)")
    p.add_argument("--mpi", action="store_true",
                   help="start engines with mpiexec (ranks = MPI ranks); the default inside a PBS job")
    p.add_argument("--ppn", type=_engine_count, default=4,
                   help="engines per node with --mpi/--pbs (default 4: one per Derecho GPU)")
    p.add_argument("--mpi-args", default=None,
                   help="extra mpiexec arguments (default: chosen for Cray PALS or MPICH hydra)")
    p.add_argument("--nccl", action="store_true",
                   help="refuse to start unless every engine can own a GPU")
    p.add_argument("--timeout", type=float, default=DEFAULT_START_TIMEOUT,
                   help="seconds to wait for engines to register (default %(default)s)")
    pbs = _add_pbs_options(p, "PBS Pro (Derecho): submit a job that runs the cluster",
                           "write a PBS Pro job script and qsub it")
    pbs.add_argument("--script-only", action="store_true",
                     help="write the job script and print its path; do not submit")
    p.add_argument("--foreground", action="store_true",
                   help="stay in the foreground and stop the cluster on exit (what a PBS job runs)")


def _add_pbs_options(p: argparse.ArgumentParser, title: str, pbs_help: str):
    """The PBS Pro options that ``start --pbs`` and ``export --pbs`` share."""
    pbs = p.add_argument_group(title)
    pbs.add_argument("--pbs", action="store_true", help=pbs_help)
    pbs.add_argument("--nodes", type=_engine_count, default=1, help="nodes to ask for (default 1)")
    pbs.add_argument("-A", "--account", default=os.environ.get("TP_PBS_ACCOUNT"),
                     help="project code for -A (default: $TP_PBS_ACCOUNT)")
    pbs.add_argument("-q", "--queue", default=os.environ.get("TP_PBS_QUEUE", "main"),
                     help="queue (default: $TP_PBS_QUEUE or main)")
    pbs.add_argument("--walltime", default="01:00:00", help="walltime hh:mm:ss (default 01:00:00)")
    pbs.add_argument("--ncpus", type=int, default=64, help="ncpus per node (default 64)")
    pbs.add_argument("--ngpus", type=int, default=4, help="ngpus per node (default 4)")
    pbs.add_argument("--modules", default=os.environ.get("TP_PBS_MODULES", ""),
                     help="modules to load in the job, e.g. 'ncarenv cray-mpich'")
    return pbs


def _seconds(text: str) -> float:
    with suppress(ValueError):
        if float(text) > 0:
            return float(text)
    raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="launch_cluster.sh",
        description="Start, inspect and stop the course's ipyparallel cluster, or run JupyterLab on it.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    common = argparse.ArgumentParser(add_help=False)  # which cluster: every command but export
    common.add_argument("--cluster-id", default=None,
                        help="cluster id (default: $TP_CLUSTER_ID or tp-$USER)")
    common.add_argument("--profile-dir", default=None,
                        help="ipyparallel profile dir (default: $TP_PROFILE_DIR or ~/.ipython/profile_tp)")

    p = sub.add_parser("start", parents=[common], help="start a cluster (returns when every engine has registered)")
    _add_start_options(p)
    sub.add_parser("stop", parents=[common], help="stop the cluster: no controller or engine is left running")
    sub.add_parser("status", parents=[common], help="list each engine: rank, host, device, pid")

    p = sub.add_parser("export", help="write a notebook as a torchrun batch job; its checks decide "
                       "the job's exit status (--pbs: and a PBS Pro job for Derecho)")
    p.add_argument("notebook", help="the notebook, e.g. notebooks/01_basic_tensor_parallel.ipynb")
    p.add_argument("-o", "--output", default=None,
                   help="the script to write (default: next to the notebook, NN_name.py)")
    p.add_argument("--solutions", action="store_true",
                   help="run each exercise's collapsed solution in place of the exercise cell")
    p.add_argument("--timeout", type=_seconds, default=None,
                   help="seconds a collective may wait in the job before it fails (default 120)")
    p.add_argument("--ppn", type=_engine_count, default=4,
                   help="ranks per node in the PBS job (torchrun --nproc_per_node; default 4, one per GPU)")
    _add_pbs_options(p, "PBS Pro (Derecho): a job that runs the script with torchrun",
                     "also write a PBS Pro job next to the script (submit it with qsub)")

    p = sub.add_parser("lab", parents=[common],
                       help="start the cluster (if needed) and JupyterLab on notebooks/")
    p.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    p.add_argument("--no-cluster", action="store_true",
                   help="do not start a cluster; notebooks' connect() starts one")
    _add_start_options(p)
    return parser


# --------------------------------------------------------------------------- MPI / PBS

def mpi_launch_args(ppn: int, extra: str | None) -> list[str]:
    """mpiexec and its arguments: Cray PALS on Derecho, MPICH hydra on Debian.

    ``$TP_MPIEXEC`` names another mpiexec (default: the one on PATH); refused without it or mpi4py.
    """
    name = os.environ.get("TP_MPIEXEC", "mpiexec")
    mpiexec = shutil.which(name)
    if mpiexec is None:
        raise ValueError(
            f"{name} not found: load an MPI (Derecho: module load cray-mpich; "
            "Debian: apt-get install mpich) or start without --mpi"
        )
    if importlib.util.find_spec("mpi4py") is None:
        raise ValueError("MPI engines need mpi4py: pip install mpi4py (built against this MPI)")
    if extra is not None:
        return [mpiexec, *shlex.split(extra)]
    version = ""
    with suppress(OSError, subprocess.TimeoutExpired):
        version = subprocess.run([mpiexec, "--version"], capture_output=True, text=True,
                                 timeout=20).stdout
    if "HYDRA" in version:  # MPICH: inside a PBS job, on the job's nodes
        nodefile = os.environ.get("PBS_NODEFILE")
        return [mpiexec, "-ppn", str(ppn), *(["-f", nodefile] if nodefile else [])]
    if "Open MPI" in version or "OpenRTE" in version:
        return [mpiexec, "--npernode", str(ppn), "--bind-to", "none"]
    return [mpiexec, "--ppn", str(ppn), "--cpu-bind", "none"]  # Cray PALS (Derecho)


# A PBS Pro job's head (Derecho is PBS Pro: no Torque "#PBS -t" line), then a body per use.
PBS_HEADER = """#!/bin/bash
# PBS Pro job: {what}.
# Written by launch_cluster.sh {how}.
#PBS -N {name}
#PBS -A {account}
#PBS -q {queue}
#PBS -l select={nodes}:ncpus={ncpus}:ngpus={ngpus}:mpiprocs={ppn}
#PBS -l walltime={walltime}
#PBS -j oe
#PBS -o {log}
set -euo pipefail
{modules}export TP_PYTHON={python} PATH={bindir}:$PATH
"""

CLUSTER_BODY = """export TP_CLUSTER_ID={cluster_id} TP_PROFILE_DIR={profile_dir}
cd {repo}
exec ./launch_cluster.sh start --mpi --foreground -n {n} --ppn {ppn}
"""

# What the job exports for NCCL on Slingshot, and where each setting comes from, is in its comments.
TORCHRUN_BODY = """# NCCL on Derecho's Slingshot network (HPE CXI, reached through libfabric), as set by NCAR's
# "NCCL Tuning Guide for Derecho" (https://gh.astrobox.top/negin513/distributed-pytorch-hpc,
# docs/guide/nccl_tuning.md: required settings, "Runtime Settings for OFI Transport"); the GDR
# level as CSCS sets it for aws-ofi-nccl on Slingshot (docs.cscs.ch, software/communication/nccl).
export NCCL_SOCKET_IFNAME=hsn            # the Slingshot interfaces hsn0..3, not the management Ethernet
export NCCL_IB_DISABLE=1                 # Slingshot is reached through libfabric (OFI), not InfiniBand
export NCCL_NET="AWS Libfabric"          # the aws-ofi-nccl plugin (native Slingshot, GPU Direct RDMA); NCCL
                                         # fails fast without it: delete this line for a generic pip torch
export NCCL_CROSS_NIC=1                  # rings and trees may span NICs
export NCCL_NET_GDR_LEVEL=PHB            # GPU Direct RDMA where GPU and NIC share a PCI host bridge
export FI_CXI_DISABLE_HOST_REGISTER=1    # CUDA allocations must not deadlock with CXI host registration
export FI_MR_CACHE_MONITOR=userfaultfd   # libfabric's memory-registration cache monitor
export FI_CXI_DEFAULT_CQ_SIZE=131072     # a larger completion queue for large jobs
export PYTHONPATH={repo}${{PYTHONPATH:+:$PYTHONPATH}}
head_node=$(head -n 1 "$PBS_NODEFILE")   # the c10d rendezvous runs on the job's first node
cd {workdir}
# one torchrun per node (Cray PALS: mpiexec --ppn 1); each starts {ppn} ranks, one per GPU
mpiexec -n {nodes} --ppn 1 --cpu-bind none \\
    torchrun --nnodes {nodes} --nproc_per_node {ppn} --rdzv_backend c10d \\
    --rdzv_id "$PBS_JOBID" --rdzv_endpoint "$head_node:29500" {script}
"""


def _check_account(args) -> None:
    if not args.account:
        raise ValueError("PBS needs a project code: add -A/--account CODE (or set TP_PBS_ACCOUNT)")


def write_pbs_job(args, path: str, *, name: str, log: str, what: str, how: str, body: str) -> str:
    """Write a job to ``path``: what it is, its ``#PBS`` lines, modules and python, then ``body``;
    returns ``path``.  The caller has checked the account (``_check_account``)."""
    modules = "".join(f"module load {m}\n" for m in args.modules.split())
    head = PBS_HEADER.format_map(dict(  # account, queue, nodes, ncpus, ngpus, ppn, walltime: the options
        vars(args), what=what, how=how, name=name[:15], log=log, modules=modules,
        bindir=shlex.quote(os.path.dirname(sys.executable)), python=shlex.quote(sys.executable)))
    Path(path).write_text(head + body)
    return path


def write_torchrun_pbs(args, script: str) -> str:
    """A PBS Pro job next to ``script`` that runs it with torchrun on ``args.nodes`` nodes."""
    script = os.path.abspath(script)
    stem = os.path.splitext(script)[0]
    body = TORCHRUN_BODY.format(repo=shlex.quote(REPO), workdir=shlex.quote(os.path.dirname(script)),
                                nodes=args.nodes, ppn=args.ppn, script=shlex.quote(script))
    return write_pbs_job(args, stem + ".pbs", name=f"tp-{os.path.basename(stem)}", log=stem + ".log",
                         what=f"{os.path.basename(stem)} as a torchrun batch job (its checks decide "
                         "the exit status)", how="export --pbs; submit it with qsub", body=body)


def write_pbs_script(args, ref: ClusterRef) -> str:
    _check_account(args)
    n = args.n or args.nodes * args.ppn
    if n != args.nodes * args.ppn:
        raise ValueError(
            f"-n {n} does not fill {args.nodes} node(s) x {args.ppn} engines per node; "
            f"use -n {args.nodes * args.ppn} or change --nodes/--ppn"
        )
    os.makedirs(ref.log_dir, exist_ok=True)
    os.makedirs(ref.security_dir, mode=0o700, exist_ok=True)
    body = CLUSTER_BODY.format(cluster_id=shlex.quote(ref.cluster_id),
                               profile_dir=shlex.quote(ref.profile_dir), repo=shlex.quote(REPO),
                               n=n, ppn=args.ppn)
    return write_pbs_job(args, ref.pbs_script, name=f"tp-{ref.cluster_id}", log=ref.pbs_log,
                         what="an ipyparallel cluster for the tensor-parallel course",
                         how="start --pbs; the notebook's connect() finds it", body=body)


def submit_pbs(args, ref: ClusterRef) -> int:
    if is_running(ref):
        print(f"cluster {ref} is already running; nothing started "
              "(./launch_cluster.sh status to see it)")
        return 0
    path = write_pbs_script(args, ref)
    if args.script_only:
        print(path)
        return 0
    qsub = shutil.which("qsub")
    if qsub is None:
        raise ValueError(f"qsub not found: run this on a PBS login node (job script written to {path})")
    out = subprocess.run([qsub, path], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise RuntimeError(f"qsub refused the job: {out.stderr.strip() or out.stdout.strip()}")
    job_id = out.stdout.strip()
    Path(ref.job_file).write_text(job_id)
    print(f"submitted PBS job {job_id} ({path}); waiting for its engines ...")
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        if is_running(ref):
            with suppress(Exception), client_of(ref, timeout=10) as client:
                client.wait_for_engines(args.nodes * args.ppn, timeout=max(1, deadline - time.monotonic()),
                                        interactive=False)
                print(f"cluster {ref} is up in job {job_id}: connect() in a notebook attaches to it")
                return 0
        time.sleep(1)
    print(f"job {job_id} has not started its cluster within {args.timeout:.0f} s (queued?); "
          "connect() attaches once it runs; ./launch_cluster.sh stop cancels it")
    return 0


# --------------------------------------------------------------------------- commands

def cmd_start(args) -> int:
    ref = ClusterRef.of(args.cluster_id, args.profile_dir)
    if args.pbs:
        return submit_pbs(args, ref)
    in_job = bool(os.environ.get("PBS_NODEFILE"))
    if not in_job and (args.nodes > 1 or args.script_only):
        raise ValueError(
            "PBS options need a PBS job: add --pbs to write and submit one, "
            "or run this inside a job (PBS_NODEFILE set)"
        )
    if args.nccl:
        gpus = visible_gpus()
        check_n(args.n or default_n(gpus), backend="nccl", gpus=gpus)
    mpi_args = mpi_launch_args(args.ppn, args.mpi_args) if args.mpi or in_job else None
    # in a job, compute nodes must reach the controller: bind the interface of this host's name
    controller_ip = socket.gethostbyname(socket.gethostname()) if in_job else "127.0.0.1"
    if is_running(ref):
        print(f"cluster {ref} is already running; nothing started "
              "(./launch_cluster.sh status to see it, stop to end it)")
        return 0
    if clean_stale(ref):
        print(f"cleaned up a stale cluster {ref} left by a crash")
    t0 = time.monotonic()
    cluster = start_cluster(ref, args.n, controller_ip=controller_ip, mpi_args=mpi_args,
                            daemon=True, timeout=args.timeout, owner_pid=getattr(args, "owner_pid", None))
    print(f"cluster {ref} started: {cluster.n} {'mpi' if mpi_args else 'local'} engines in "
          f"{time.monotonic() - t0:.1f} s (profile {ref.profile_dir})")
    if args.foreground:  # block until the cluster stops; stop it on SIGTERM/SIGINT (PBS walltime, Ctrl-C)
        stopping = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, _frame: stopping.append(signum))
        while not stopping and is_running(ref):
            time.sleep(1)
        stop_cluster(ref)
    return 0


def cmd_stop(args) -> int:
    ref = ClusterRef.of(args.cluster_id, args.profile_dir)
    report = stop_cluster(ref)
    if os.path.exists(ref.job_file):
        job = Path(ref.job_file).read_text().strip()
        if job and shutil.which("qdel"):
            subprocess.run(["qdel", job], capture_output=True, timeout=60)
        os.remove(ref.job_file)
    print(report.line(ref))
    return 0


def cmd_status(args) -> int:
    ref = ClusterRef.of(args.cluster_id, args.profile_dir)
    if not is_running(ref):
        print(f"no cluster {ref} is running (profile {ref.profile_dir})")
        return 1
    state = ref.read_state()
    with client_of(ref, timeout=10) as client:
        infos = probe_engines(client)
    backend, engines = plan_ranks(infos)
    by_id = {i["engine_id"]: i for i in infos}
    print(f"cluster {ref}: {len(engines)} engines ({state.get('mode', '?')} mode, "
          f"controller on {state.get('host', '?')}), backend {backend}")
    print(f"  {layout_note(backend, engines)}")
    print(f"{'rank':>4}  {'engine':>6}  {'host':<20} {'device':<8} {'pid':>8}  process group")
    for e, i in ((e, by_id[e.engine_id]) for e in engines):
        pg = (f"rank {i['rank']}/{i['world_size']} ({i['backend']})"
              if i["initialized"] else "not initialized (connect() does it)")
        print(f"{e.rank:>4}  {e.engine_id:>6}  {e.host:<20} {e.device:<8} {e.pid:>8}  {pg}")
    return 0


def _die_with_parent() -> None:
    """In the child: get SIGTERM when this launcher dies, even by SIGKILL (Linux)."""
    with suppress(OSError, AttributeError):  # not Linux: a crashed lab may leave JupyterLab running
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cmd_lab(args) -> int:
    ref = ClusterRef.of(args.cluster_id, args.profile_dir)
    started = not args.no_cluster and not is_running(ref)
    if started:
        args.owner_pid = os.getpid()  # if this session crashes, the next start cleans up
        cmd_start(args)
    token = secrets.token_hex(24)
    port = args.port or _free_port()
    env = dict(os.environ, TP_CLUSTER_ID=ref.cluster_id, TP_PROFILE_DIR=ref.profile_dir)
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1",
           f"--port={port}", f"--ServerApp.root_dir={os.path.join(REPO, 'notebooks')}",
           f"--IdentityProvider.token={token}", "--ServerApp.port_retries=0"]
    if os.geteuid() == 0:
        cmd.append("--allow-root")  # containers and CI run as root
    lab = psutil.Popen(cmd, env=env, start_new_session=True, preexec_fn=_die_with_parent)
    stop = []
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda s, f: stop.append(s))
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and lab.poll() is None and not stop:
            with suppress(OSError):
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token={token}", timeout=2)
                break
            time.sleep(0.5)
        if lab.poll() is None and not stop:
            print(f"\nJupyterLab is running on the cluster {ref}:\n    http://127.0.0.1:{port}/lab?token={token}\n"
                  "Open it in a browser (on Derecho: through an SSH tunnel to this port). "
                  "Ctrl-C stops JupyterLab" + (" and the cluster." if started else "."),
                  flush=True)
        while lab.poll() is None and not stop:
            time.sleep(0.5)
    finally:
        kill_processes([lab], grace=10)  # SIGTERM, then SIGKILL 10 s later
        if started:
            print(stop_cluster(ref).line(ref))
    return 0


def cmd_export(args) -> int:
    """Write the notebook as a torchrun script (helpers.cluster.export), and with --pbs a PBS job."""
    if args.pbs:
        _check_account(args)  # refused before anything is written
    script, summary = export_notebook(args.notebook, args.output, solutions=args.solutions, timeout=args.timeout)
    print(summary)
    if args.pbs:
        job = write_torchrun_pbs(args, script)
        print(f"wrote {job} ({args.nodes} node(s) x {args.ppn} ranks): qsub {shlex.quote(job)}")
    else:
        print(f"run it: torchrun --standalone --nproc_per_node=4 {shlex.quote(script)}")
    return 0


COMMANDS = {"start": cmd_start, "stop": cmd_stop, "status": cmd_status, "lab": cmd_lab,
            "export": cmd_export}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (ValueError, RuntimeError) as e:  # a refusal: one line, exit status 2
        print(f"launch_cluster.sh {args.command}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
