"""helpers.tp.summa under real torchrun (tests/torchrun/summa_torchrun_worker.py, 4 processes,
gloo): SUMMA against dense, the 1D byte counts and the refusals raised on every rank before any
collective.

The pure parts: tests/unit/test_summa.py; on the live cluster: tests/cluster/test_summa_cluster.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("summa_torchrun_worker.py")


# ------------------------------------------------------------------ under torchrun
@pytest.mark.timeout(150)
def test_summa_under_torchrun():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4",
           str(WORKER)]
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"torchrun worker hung for 120 s\nstdout:\n{e.stdout}\nstderr:\n{e.stderr}")
    assert proc.returncode == 0, (f"worker exited with {proc.returncode}\nstdout:\n{proc.stdout}\n"
                                  f"stderr:\n{proc.stderr[-6000:]}")
    assert "all summa checks passed" in proc.stdout
