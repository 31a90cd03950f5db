"""helpers.tp.summa under real torchrun (tests/torchrun/summa_torchrun_worker.py, 4 processes,
gloo): SUMMA against dense, the 1D byte counts and the refusals raised on every rank before any
collective.

The pure parts: tests/unit/test_summa.py; on the live cluster: tests/cluster/test_summa_cluster.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support import run_torchrun_worker

WORKER = Path(__file__).with_name("summa_torchrun_worker.py")


# ------------------------------------------------------------------ under torchrun
@pytest.mark.timeout(150)
def test_summa_under_torchrun():
    run_torchrun_worker(WORKER, timeout=120, done="all summa checks passed")
