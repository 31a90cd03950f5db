"""The vocab-parallel embedding and the tiny GPT under ``torchrun --standalone --nproc_per_node=4``
(gloo, tests/torchrun/vocab_torchrun_worker.py): the same functions as on the cluster, the
refusals (no collective before any of them) and the TP + SP loss curve against dense.

In one process: tests/unit/test_vocab_parallel.py; on the live cluster:
tests/cluster/test_vocab_parallel_cluster.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("vocab_torchrun_worker.py")


@pytest.mark.timeout(200)
def test_vocab_parallel_and_lm_under_torchrun():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4", str(WORKER)]
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"torchrun worker hung for 180 s\nstdout:\n{e.stdout}\nstderr:\n{e.stderr}")
    assert proc.returncode == 0, (f"worker exited with {proc.returncode}\nstdout:\n{proc.stdout}\n"
                                  f"stderr:\n{proc.stderr[-6000:]}")
    assert "all vocab/lm checks passed" in proc.stdout
    assert "max |TP+SP − dense|" in proc.stdout
    assert "clip_grad_norm_ on DTensors: same total norm as dense" in proc.stdout
    print("\n" + "\n".join(line for line in proc.stdout.splitlines()
                            if "loss curves" in line or "clip_grad_norm_" in line))
