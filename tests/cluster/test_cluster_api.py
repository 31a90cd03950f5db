"""One cluster API, two implementations: the same cases (tests/cluster/cluster_api_cases.py) on a live
2-engine cluster (``TPCluster``) and in a 2-rank torchrun batch job (``BatchCluster``)."""

from __future__ import annotations

import os
import subprocess
import sys

import cluster_api_cases as api
import pytest
from support import REPO, ClusterFactory

CASES = sorted(api.CASES)
TORCHRUN_TIMEOUT = 300


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    factory = ClusterFactory(tmp_path_factory)
    try:
        yield factory.make(n=2, tag="api")
    finally:
        factory.finish()


@pytest.fixture(scope="module")
def batch_report():
    """Every case run once in a 2-rank torchrun job; rank 0's PASS / FAIL line per case."""
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          api.__file__], capture_output=True, text=True, timeout=TORCHRUN_TIMEOUT, env=env,
                         cwd=os.path.dirname(api.__file__), stdin=subprocess.DEVNULL)
    lines = {line.split()[1].rstrip(":"): line for line in out.stdout.splitlines()
             if line.startswith(("PASS ", "FAIL "))}
    return out, lines


@pytest.mark.parametrize("case", CASES)
def test_live_cluster(live, case):
    api.CASES[case](live)


@pytest.mark.parametrize("case", CASES)
def test_batch_cluster(batch_report, case):
    out, lines = batch_report
    assert case in lines, f"the torchrun job did not report {case}:\n{out.stdout}\n{out.stderr[-3000:]}"
    assert lines[case].startswith("PASS"), lines[case]


def test_batch_job_passed(batch_report):
    out, _ = batch_report
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
