"""The vocab-parallel embedding and the tiny GPT under ``torchrun --standalone --nproc_per_node=4``
(gloo, tests/torchrun/vocab_torchrun_worker.py): the same functions as on the cluster, the
refusals (no collective before any of them) and the TP + SP loss curve against dense.

In one process: tests/unit/test_vocab_parallel.py; on the live cluster:
tests/cluster/test_vocab_parallel_cluster.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support import run_torchrun_worker

WORKER = Path(__file__).with_name("vocab_torchrun_worker.py")


@pytest.mark.timeout(200)
def test_vocab_parallel_and_lm_under_torchrun():
    proc = run_torchrun_worker(WORKER, timeout=180, done="all vocab/lm checks passed")
    assert "max |TP+SP − dense|" in proc.stdout
    assert "clip_grad_norm_ on DTensors: same total norm as dense" in proc.stdout
    print("\n" + "\n".join(line for line in proc.stdout.splitlines()
                            if "loss curves" in line or "clip_grad_norm_" in line))
