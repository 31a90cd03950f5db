"""helpers.tp.overlap (notebook 08's overlapped layers) against dense on 4 real processes
(torchrun, gloo): the async-all-reduce column layer and the collective matmul at TP degree 4 and
2, outputs and every gradient; the timeline's spans nest as claimed; the refusals."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("overlap_torchrun_worker.py")


@pytest.mark.timeout(150)
def test_overlap_layers_match_dense_under_torchrun():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4", str(WORKER)]
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"torchrun worker hung for 120 s\nstdout:\n{e.stdout}\nstderr:\n{e.stderr}")
    assert proc.returncode == 0, (f"worker exited with {proc.returncode}\nstdout:\n{proc.stdout}\n"
                                  f"stderr:\n{proc.stderr[-6000:]}")
    assert "all overlap checks passed" in proc.stdout
