"""helpers.tp against dense nn.Linear / helpers.models.MLP on 4 real processes (torchrun, gloo).

The worker (tests/torchrun/tp_torchrun_worker.py) checks outputs and gradients for tp degree 4
(world group) and degree 2 (subgroups [0,1] and [2,3]), bias on and off, and counts the
collectives of one ParallelMLP forward and backward (exactly one all-reduce each).
"""

from pathlib import Path

import pytest
from support import run_torchrun_worker

WORKER = Path(__file__).with_name("tp_torchrun_worker.py")


@pytest.mark.timeout(150)
def test_tp_layers_match_dense_under_torchrun():
    run_torchrun_worker(WORKER, timeout=120, done="all tp checks passed")
