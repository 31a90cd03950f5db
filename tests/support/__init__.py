"""What the tests share, other than fixtures (those are in the conftest.py files): the repo's
paths, the tools a test needs, launch_cluster.sh with a test's own cluster, real clusters
(``ClusterFactory``) and a real Jupyter kernel.  Notebook runs are in ``support.notebook``, the
browser's page in ``support.browser``.

Tests import it as ``from support import ...`` (pyproject's ``pythonpath`` puts tests/ on sys.path).
Everything here starts real processes (ipyparallel controller and engines, torch.distributed
over gloo); nothing is mocked.  Every cluster a test starts has a cluster id beginning with this
session's ``SESSION_PREFIX``, so the session's last check (tests/conftest.py) can prove none is
left running.
"""

from __future__ import annotations

import ast
import contextlib
import os
import queue
import shutil
import subprocess
import sys
import textwrap
import time
import uuid

import pytest

from helpers import cluster as hc

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LAUNCH = os.path.join(REPO, "launch_cluster.sh")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


# Every cluster id of this test session starts with SESSION_PREFIX, so the final
# sweep touches only what this session started (not a concurrent session's clusters).
SESSION_PREFIX = f"pytest{uuid.uuid4().hex[:6]}-"


def new_cluster_id(tag: str = "") -> str:
    return f"{SESSION_PREFIX}{tag}{'-' if tag else ''}{uuid.uuid4().hex[:8]}"


def require_tool(name: str, why: str) -> str:
    """The path of a tool; a failure in CI, a skip on a learner's machine."""
    path = shutil.which(name)
    if path is None:
        msg = f"{name} not found ({why})"
        if IN_CI:
            pytest.fail(msg + ": .ci/run must install it")
        pytest.skip(msg)
    return path


def script_env(cluster_id: str, profile_dir: str, **extra) -> dict:
    """Environment for running launch_cluster.sh with this test's Python and cluster."""
    env = dict(os.environ)
    env.update(
        VIRTUAL_ENV=sys.prefix,
        TP_VENV=os.path.join(str(profile_dir), "no-venv"),  # use the active env, make none
        PATH=os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", ""),
        TP_CLUSTER_ID=cluster_id,
        TP_PROFILE_DIR=str(profile_dir),
    )
    env.update(extra)
    return env


def launch(*args, cluster_id: str, profile_dir: str, timeout: float = 180, env=None, **kw):
    """Run ./launch_cluster.sh ARGS; returns the CompletedProcess (never hangs)."""
    return subprocess.run(
        [LAUNCH, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO,
        env=env or script_env(cluster_id, profile_dir), stdin=subprocess.DEVNULL, **kw,
    )


class ClusterFactory:
    """Starts real clusters for a test (``make(n=2, tag="restart")``); the finalizer stops
    every one of them and proves that none of their processes is left."""

    def __init__(self, tmp_path_factory):
        self._tmp = tmp_path_factory
        self._made = []

    def ref(self, tag: str = "") -> hc.ClusterRef:
        """A fresh identity for a cluster this test starts (by connect() or launch_cluster.sh)."""
        ref = hc.ClusterRef(new_cluster_id(tag), str(self._tmp.mktemp(tag or "cluster")))
        self._made.append((ref, None))
        return ref

    def make(self, n: int = 2, tag: str = "", **kw) -> "hc.TPCluster":
        ref = self.ref(tag)
        kw.setdefault("timeout", 20)
        kw.setdefault("activate", False)
        tc = hc.connect(n=n, cluster_id=ref.cluster_id, profile_dir=ref.profile_dir, **kw)
        self._made[-1] = (ref, tc)
        return tc

    def finish(self) -> None:
        left = []
        for ref, tc in self._made:
            if tc is not None:
                tc.shutdown(quiet=True)
            hc.stop_cluster(ref)
            left += hc.cluster_processes(ref)
        assert left == [], f"processes outlived their cluster: {left}"


# ------------------------------------------------------------------ a real Jupyter kernel
def run_in_kernel(kc, code, timeout=60, interrupt_after=None, km=None):
    """Execute code; optionally interrupt it; returns (reply, text output) and timing."""
    msg_id = kc.execute(code)
    t_int = None
    if interrupt_after is not None:
        time.sleep(interrupt_after)
        t_int = time.monotonic()
        km.interrupt_kernel()
    reply = kc.get_shell_msg(timeout=timeout)
    while reply["parent_header"].get("msg_id") != msg_id:
        reply = kc.get_shell_msg(timeout=timeout)
    reply["_interrupt_to_reply"] = (time.monotonic() - t_int) if t_int else None
    out = []
    while True:
        try:
            m = kc.get_iopub_msg(timeout=2)
        except queue.Empty:
            break
        c = m["content"]
        out.append(c.get("text", "") + c.get("data", {}).get("text/plain", "")
                   + "\n".join(c.get("traceback", [])))
        if m["msg_type"] == "status" and c.get("execution_state") == "idle" \
                and m["parent_header"].get("msg_id") == msg_id:
            break
    return reply, "".join(out)


@contextlib.contextmanager
def jupyter_kernel(cwd: str, **env):
    """A real python3 kernel in ``cwd`` (as a notebook there would have), stopped at the end."""
    from jupyter_client.manager import start_new_kernel

    km, kc = start_new_kernel(kernel_name="python3", env=dict(os.environ, **env), cwd=str(cwd))
    try:
        yield km, kc
    finally:
        kc.stop_channels()
        if km.is_alive():
            km.shutdown_kernel(now=True)


def kernel_cell(kc, code: str, ok: bool = True, timeout: float = 120):
    """Run ``code`` (dedented) in the kernel; with ``ok``, its reply must be "ok". Returns (reply, text)."""
    reply, out = run_in_kernel(kc, textwrap.dedent(code).strip("\n"), timeout=timeout)
    if ok:
        assert reply["content"]["status"] == "ok", out
    return reply, out


def kernel_pull(kc, name: str):
    """``cluster.pull(name)`` in the kernel, read back as a Python literal."""
    _, out = kernel_cell(kc, f"print(repr(cluster.pull({name!r})))")
    return ast.literal_eval(out.strip().splitlines()[-1])


def run_torchrun_worker(worker, timeout: float = 120, nproc: int = 4, done: str | None = None):
    """Run a worker script under ``torchrun --standalone --nproc_per_node=nproc`` (gloo, one torch
    thread per rank, this repo importable) and return it; a hang, a non-zero exit or a missing
    ``done`` line fails the test with the worker's output."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", str(worker)]
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"torchrun worker hung for {timeout:.0f} s (a collective waiting on a peer?)\n"
                    f"stdout:\n{e.stdout}\nstderr:\n{e.stderr}")
    assert proc.returncode == 0, (f"worker exited with {proc.returncode}\nstdout:\n{proc.stdout}\n"
                                  f"stderr:\n{proc.stderr[-6000:]}")
    if done is not None:
        assert done in proc.stdout, proc.stdout
    return proc
