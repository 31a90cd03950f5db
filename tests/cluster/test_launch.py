"""launch_cluster.sh for real: start / status / stop, stale clusters, MPI, PBS Pro, bad input."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import psutil
import pytest
from support import LAUNCH, REPO, launch, new_cluster_id, require_tool, script_env

from helpers import cluster as hc
from helpers import connect

STANDIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pbs_standin")


def _leftovers(cid: str) -> list:
    return hc.cluster_processes(cid)


@pytest.fixture
def cid(tmp_path):
    cid = new_cluster_id("sh")
    yield cid
    hc.stop_cluster(hc.ClusterRef(cid, str(tmp_path)))


def test_help_for_every_command(tmp_path):
    for cmd in ("start", "stop", "status", "lab", "test", "kernel"):
        out = launch(cmd, "--help", cluster_id="x", profile_dir=tmp_path, timeout=60)
        assert out.returncode == 0, (cmd, out.stderr)
        assert "usage" in out.stdout.lower(), cmd
    out = launch("--help", cluster_id="x", profile_dir=tmp_path, timeout=30)
    assert out.returncode == 0 and "lab" in out.stdout and "start" in out.stdout


def test_start_status_stop_leaves_nothing(cid, tmp_path):
    out = launch("start", "-n", "2", cluster_id=cid, profile_dir=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "started: 2 local engines" in out.stdout
    procs = _leftovers(cid)
    assert len(procs) >= 3  # controller + 2 engines (+ nannies)

    again = launch("start", "-n", "2", cluster_id=cid, profile_dir=tmp_path)
    assert again.returncode == 0 and "already running" in again.stdout
    assert {p.pid for p in _leftovers(cid)} == {p.pid for p in procs}

    status = launch("status", cluster_id=cid, profile_dir=tmp_path)
    assert status.returncode == 0, status.stderr
    if not hc.visible_gpus():
        assert "on CPU engines over gloo" in status.stdout, status.stdout  # the layout, plainly
    rows = [line.split() for line in status.stdout.splitlines() if re.match(r"\s+\d+\s+\d+\s", line)]
    assert [r[0] for r in rows] == ["0", "1"]
    assert all(r[3] == "cpu" for r in rows)
    pids = {int(r[4]) for r in rows}
    assert pids <= {p.pid for p in procs}

    stop = launch("stop", cluster_id=cid, profile_dir=tmp_path)
    assert stop.returncode == 0 and "stopped" in stop.stdout
    assert _leftovers(cid) == []
    assert not any(psutil.pid_exists(p.pid) for p in procs)
    assert launch("status", cluster_id=cid, profile_dir=tmp_path).returncode == 1


def test_a_crashed_cluster_is_cleaned_by_the_next_start(cid, tmp_path):
    assert launch("start", "-n", "1", cluster_id=cid, profile_dir=tmp_path).returncode == 0
    # a crash: the controller dies hard, its engine is orphaned
    with open(tmp_path / "security" / f"cluster-{cid}.json") as f:
        controller = psutil.Process(json.load(f)["controller"]["state"]["pid"])
    controller.kill()
    controller.wait(10)
    out = launch("start", "-n", "1", cluster_id=cid, profile_dir=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "stale" in out.stdout
    tc = connect(cluster_id=cid, profile_dir=str(tmp_path), activate=False)
    try:
        assert tc.pull("rank") == [0]
    finally:
        tc.shutdown()
    assert launch("stop", cluster_id=cid, profile_dir=tmp_path).returncode == 0
    assert _leftovers(cid) == []


@pytest.mark.parametrize("args, msg", [
    (["start", "-n", "0"], "at least 1"),
    (["start", "-n", "lots"], "whole number"),
    (["start", "-n", "2", "--nodes", "2"], "need a PBS job"),
    (["start", "--pbs", "-n", "2", "--ppn", "2"], "project code"),
    (["start", "--pbs", "-A", "X", "-n", "3", "--ppn", "2"], "does not fill"),
    (["frobnicate"], "unknown command"),
])
def test_bad_input_is_one_line_and_starts_nothing(args, msg, cid, tmp_path):
    out = launch(*args, cluster_id=cid, profile_dir=tmp_path, timeout=60)
    assert out.returncode == 2
    assert msg in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("launch_cluster.sh")
    assert _leftovers(cid) == []


def test_nccl_with_more_engines_than_gpus_is_refused(cid, tmp_path):
    gpus = hc.visible_gpus()
    out = launch("start", "--nccl", "-n", str(gpus + 1), cluster_id=cid, profile_dir=tmp_path)
    assert out.returncode == 2
    assert "NCCL" in out.stderr and "GPU" in out.stderr
    assert _leftovers(cid) == []


def test_mpi_mode_without_mpiexec_says_what_to_do(cid, tmp_path):
    env = script_env(cid, tmp_path, TP_MPIEXEC="mpiexec-not-installed")
    out = launch("start", "--mpi", "-n", "2", cluster_id=cid, profile_dir=tmp_path, env=env)
    assert out.returncode == 2
    assert "mpiexec-not-installed not found" in out.stderr and "module load" in out.stderr
    assert _leftovers(cid) == []


@pytest.mark.mpi
def test_mpi_engines_ranks_are_mpi_ranks(cid, tmp_path):
    require_tool("mpiexec", "Debian: apt-get install mpich")
    pytest.importorskip("mpi4py")
    out = launch("start", "--mpi", "-n", "2", "--ppn", "2", cluster_id=cid, profile_dir=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "2 mpi engines" in out.stdout
    assert any("mpiexec" in " ".join(p.cmdline()) for p in _leftovers(cid))
    tc = connect(cluster_id=cid, profile_dir=str(tmp_path), activate=False)
    try:
        tc.run("import os; from mpi4py import MPI; mpi_rank = MPI.COMM_WORLD.rank; "
               "t = torch.ones(1); dist.all_reduce(t); s = t.item()")
        assert tc.pull("mpi_rank") == tc.pull("rank") == [0, 1]
        assert tc.pull("s") == [2.0, 2.0]
    finally:
        tc.client.close()
    assert launch("stop", cluster_id=cid, profile_dir=tmp_path).returncode == 0
    assert _leftovers(cid) == []
    assert not [p for p in psutil.process_iter(["cmdline"])
                if cid in " ".join(p.info["cmdline"] or [])]


def test_pbs_job_script_is_pbs_pro(cid, tmp_path):
    out = launch("start", "--pbs", "--script-only", "-A", "NCAR0001", "-q", "main",
                 "--nodes", "2", "--ppn", "4", "--walltime", "00:30:00",
                 "--modules", "ncarenv cray-mpich", cluster_id=cid, profile_dir=tmp_path)
    assert out.returncode == 0, out.stderr
    script = open(out.stdout.strip().splitlines()[-1]).read()
    assert "#PBS -l select=2:ncpus=64:ngpus=4:mpiprocs=4" in script
    assert "#PBS -A NCAR0001" in script and "#PBS -q main" in script
    assert "#PBS -l walltime=00:30:00" in script
    assert "module load cray-mpich" in script
    assert not re.search(r"^#PBS -t", script, re.M), "no Torque array line"
    assert "start --mpi --foreground -n 8 --ppn 4" in script
    assert _leftovers(cid) == []


@pytest.mark.mpi
def test_pbs_job_runs_through_a_stand_in_qsub(cid, tmp_path):
    require_tool("mpiexec", "Debian: apt-get install mpich")
    pytest.importorskip("mpi4py")
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    env = script_env(cid, tmp_path, PBS_STANDIN_DIR=str(jobs))
    env["PATH"] = STANDIN + os.pathsep + env["PATH"]
    out = launch("start", "--pbs", "-A", "TEST0001", "-n", "2", "--ppn", "2", "--timeout", "150",
                 cluster_id=cid, profile_dir=tmp_path, env=env, timeout=200)
    logs = "".join(p.read_text() for p in jobs.glob("*.out"))
    assert out.returncode == 0, out.stdout + out.stderr + logs
    assert "is up in job" in out.stdout, out.stdout + logs
    job_pid = int(next(jobs.glob("*.pid")).read_text())
    assert psutil.pid_exists(job_pid)
    tc = connect(cluster_id=cid, profile_dir=str(tmp_path), activate=False)
    try:
        tc.run("t = torch.ones(1); dist.all_reduce(t); s = t.item()")
        assert tc.pull("s") == [2.0, 2.0]
        assert tc.pull("rank") == [0, 1]
    finally:
        tc.client.close()
    stop = launch("stop", cluster_id=cid, profile_dir=tmp_path, env=env)
    assert stop.returncode == 0, stop.stderr
    deadline = time.monotonic() + 30
    while psutil.pid_exists(job_pid) and time.monotonic() < deadline:
        try:
            if psutil.Process(job_pid).status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.NoSuchProcess:
            break
        time.sleep(0.5)
    assert _leftovers(cid) == []
    gone = not psutil.pid_exists(job_pid) or psutil.Process(job_pid).status() == psutil.STATUS_ZOMBIE
    assert gone, "the PBS job ends once its cluster is stopped"


def test_stop_when_nothing_runs(cid, tmp_path):
    out = launch("stop", cluster_id=cid, profile_dir=tmp_path)
    assert out.returncode == 0 and "no cluster" in out.stdout


def test_kernel_spec_for_jupyterhub(tmp_path):
    data = tmp_path / "jupyter-data"
    env = script_env("x", tmp_path, JUPYTER_DATA_DIR=str(data))
    out = launch("kernel", "tp-test", cluster_id="x", profile_dir=tmp_path, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    spec = json.loads((data / "kernels" / "tp-test" / "kernel.json").read_text())
    # python and python3 may be two links to one interpreter: compare what they point at
    assert os.path.realpath(spec["argv"][0]) == os.path.realpath(sys.executable)
    assert spec["display_name"] == "Python (tensor parallel course)"


def test_lab_serves_jupyterlab_on_loopback_and_stops_everything(cid, tmp_path):
    """The README's first command: cluster + JupyterLab, a tokened URL, all gone on Ctrl-C."""
    import urllib.request

    proc = subprocess.Popen([LAUNCH, "lab", "-n", "2"], cwd=REPO, text=True,
                            env=script_env(cid, tmp_path, JUPYTER_RUNTIME_DIR=str(tmp_path / "rt"),
                                           JUPYTER_CONFIG_DIR=str(tmp_path / "cfg")),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    url, lines = None, []
    try:
        deadline = time.monotonic() + 150
        while url is None and time.monotonic() < deadline and proc.poll() is None:
            line = proc.stdout.readline()
            lines.append(line)
            m = re.search(r"(http://127\.0\.0\.1:\d+/lab\?token=\w+)", line)
            url = m.group(1) if m else None
        assert url, "".join(lines)
        api = url.replace("/lab?", "/api/contents/00_cluster_setup.ipynb?")
        with urllib.request.urlopen(api, timeout=30) as r:
            assert json.load(r)["name"] == "00_cluster_setup.ipynb"  # serves notebooks/
        no_token = url.split("?")[0].replace("/lab", "/api/contents")
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(no_token, timeout=30)
        assert len(_leftovers(cid)) >= 3, "lab started the cluster"
        listening = {c.laddr.ip for p in psutil.Process(proc.pid).children(recursive=True)
                     for c in p.net_connections("inet") if c.status == psutil.CONN_LISTEN}
        assert listening <= {"127.0.0.1", "::1"}, listening
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    assert _leftovers(cid) == []
    assert not [p for p in psutil.process_iter(["cmdline"])
                if "jupyterlab" in " ".join(p.info["cmdline"] or []) and str(tmp_path) in
                " ".join(p.info["cmdline"] or [])]


def test_a_crashed_lab_leaves_nothing_running(cid, tmp_path):
    proc = subprocess.Popen([LAUNCH, "lab", "-n", "1"], cwd=REPO, text=True,
                            env=script_env(cid, tmp_path, JUPYTER_RUNTIME_DIR=str(tmp_path / "rt")),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    lines = []
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline and proc.poll() is None:
        lines.append(proc.stdout.readline())
        if "/lab?token=" in lines[-1] and "JupyterLab is running" in "".join(lines):
            break
    labs = [p for p in psutil.Process(proc.pid).children(recursive=True)
            if "jupyterlab" in " ".join(p.cmdline())]
    assert labs, "".join(lines)
    proc.kill()  # the lab session crashes: no cleanup code runs
    proc.wait(10)
    gone, alive = psutil.wait_procs(labs, timeout=20)
    assert not alive, "JupyterLab outlived its crashed launcher"
    deadline = time.monotonic() + 10  # the cluster's reaper ends it with its owner
    while _leftovers(cid) and time.monotonic() < deadline:
        time.sleep(0.25)
    assert _leftovers(cid) == []
    assert not hc.is_running(hc.ClusterRef(cid, str(tmp_path)))
