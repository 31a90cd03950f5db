"""Fixtures of the unit tests (no cluster, no torchrun)."""

from __future__ import annotations

import pytest
import torch.distributed as dist


@pytest.fixture(scope="module")
def world1():
    """A one-rank gloo process group in this process (a TP group of one: no collective runs)."""
    if dist.is_initialized():
        pytest.skip("a process group already exists in this process")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield None
    dist.destroy_process_group()
