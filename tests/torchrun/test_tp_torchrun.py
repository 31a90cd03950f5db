"""helpers.tp against dense nn.Linear / helpers.models.MLP on 4 real processes (torchrun, gloo).

The worker (tests/torchrun/tp_torchrun_worker.py) checks outputs and gradients for tp degree 4
(world group) and degree 2 (subgroups [0,1] and [2,3]), bias on and off, and counts the
collectives of one ParallelMLP forward and backward (exactly one all-reduce each).
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("tp_torchrun_worker.py")


@pytest.mark.timeout(150)
def test_tp_layers_match_dense_under_torchrun():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           "--nproc_per_node=4", str(WORKER)]
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=120)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"torchrun worker hung for 120 s (a collective waiting on a peer?)\n"
                    f"stdout:\n{e.stdout}\nstderr:\n{e.stderr}")
    assert proc.returncode == 0, (
        f"worker exited with {proc.returncode}\nstdout:\n{proc.stdout}\n"
        f"stderr:\n{proc.stderr[-6000:]}")
    assert "all tp checks passed" in proc.stdout
