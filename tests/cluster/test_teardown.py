"""Everything we start, we stop, quietly: shutdown(), a kernel's exit, restart or crash.

Each test has a live process group and TP state on the engines when the end comes, and
counts what is left (engines, nannies, controller, reaper) on this host.
"""

from __future__ import annotations

import os
import signal
import textwrap
import time

import pytest
from support import jupyter_kernel, run_in_kernel

from helpers import cluster as hc

pytestmark = pytest.mark.timeout(180)

TP_STATE = textwrap.dedent("""
    %%px
    from helpers import tp
    torch.manual_seed(0)
    layer = tp.ColumnParallelLinear.from_linear(torch.nn.Linear(8, 8), gather_output=True)
    y = layer(torch.ones(2, 8))
    y.sum().backward()
""")


def start(kc, n=2):
    for code in ("from helpers import connect\ncluster = connect(n=%d)" % n, TP_STATE):
        reply, out = run_in_kernel(kc, code, timeout=120)
        assert reply["content"]["status"] == "ok", out


def gone_within(ref, seconds: float) -> float:
    """Seconds until no process of the cluster is left (fails after ``seconds``)."""
    t0 = time.monotonic()
    while hc.cluster_processes(ref):
        left = hc.cluster_processes(ref)
        assert time.monotonic() - t0 < seconds, f"still running after {seconds} s: " + ", ".join(
            " ".join(p.cmdline()[1:3]) for p in left)
        time.sleep(0.1)
    return time.monotonic() - t0


def test_shutdown_prints_one_line_and_leaves_nothing(tmp_path, cluster_factory):
    ref = cluster_factory.ref("quiet")
    with jupyter_kernel(tmp_path, TP_CLUSTER_ID=ref.cluster_id, TP_PROFILE_DIR=ref.profile_dir) as (_, kc):
        start(kc)
        assert len(hc.cluster_processes(ref)) >= 6  # controller, 2 engines, 2 nannies, reaper
        reply, out = run_in_kernel(kc, "cluster.shutdown()", timeout=60)
        assert reply["content"]["status"] == "ok", out
        lines = [line for line in out.splitlines() if line.strip()]
        assert len(lines) <= 1, out
        assert "stopped" in out and "Traceback" not in out and "Error" not in out
        assert hc.cluster_processes(ref) == []
        assert not os.path.exists(ref.state_file) and not os.path.exists(ref.cluster_file)


def test_engines_stopped_on_request_exit_cleanly(cluster_factory):
    tc = cluster_factory.make(n=2, tag="clean")
    tc.run("y = torch.ones(1); dist.all_reduce(y)")
    report = hc.stop_cluster(tc.ref, client=tc.client, cluster=tc.cluster)
    assert report.exit_codes == [0, 0] and not report.ended and not report.failed
    assert report.line(tc.ref).count("\n") == 0
    assert report.seconds < 5


@pytest.mark.parametrize("how", ["shutdown", "restart", "crash"])
def test_kernel_exit_leaves_nothing_within_10s(tmp_path, cluster_factory, how):
    ref = cluster_factory.ref(f"kernel-{how}")
    with jupyter_kernel(tmp_path, TP_CLUSTER_ID=ref.cluster_id, TP_PROFILE_DIR=ref.profile_dir) as (km, kc):
        start(kc)
        t0 = time.monotonic()
        if how == "shutdown":      # closing the notebook: jupyter_client's shutdown_request
            km.shutdown_kernel(now=False)
        elif how == "restart":     # Kernel > Restart
            km.restart_kernel(now=False)
        else:                      # the kernel dies: no atexit runs
            os.kill(km.provisioner.process.pid, signal.SIGKILL)
        gone_within(ref, 10 - (time.monotonic() - t0))
        assert not os.path.exists(ref.state_file)
