"""helpers.tp.overlap (notebook 08's overlapped layers) against dense on 4 real processes
(torchrun, gloo): the async-all-reduce column layer and the collective matmul at TP degree 4 and
2, outputs and every gradient; the timeline's spans nest as claimed; the refusals."""

from pathlib import Path

import pytest
from support import run_torchrun_worker

WORKER = Path(__file__).with_name("overlap_torchrun_worker.py")


@pytest.mark.timeout(150)
def test_overlap_layers_match_dense_under_torchrun():
    run_torchrun_worker(WORKER, timeout=120, done="all overlap checks passed")
