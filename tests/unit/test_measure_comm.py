"""helpers.measure.comm: the one recorder, weighed with the costmodel's byte convention (n = bytes
of the full tensor). Multi-rank recording runs in tests/cluster/test_summa_cluster.py and notebooks 04 and 05."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from helpers.measure.comm import CommRecorder, comm_counts, op_name
from helpers.tp.ops import all_gather, all_reduce


def test_records_are_weighed_by_the_byte_convention():
    rec = CommRecorder()
    rec.record("all_gather", 1000, 4)                                   # the gathered tensor
    rec.record("broadcast", 1000, 4, root=True, phase="backward")
    rec.record("broadcast", 1000, 4, phase="backward")
    assert rec.summary("forward") == {"sent": 750, "received": 750, "calls": 1, "ops": {"all_gather": 1}}
    assert rec.summary("backward") == {"sent": 3000, "received": 1000, "calls": 2, "ops": {"broadcast": 2}}
    assert rec.by_op()["broadcast"] == {"count": 2, "bytes": 2000, "sent": 3000, "received": 1000}
    assert (rec.sent, rec.received, rec.calls) == (3750, 1750, 3)
    rec.reset()
    assert rec.calls == 0


@pytest.mark.parametrize("op, short", [
    ("c10d_functional.all_gather_into_tensor", "all_gather"), ("_c10d_functional.all_reduce", "all_reduce"),
    ("c10d.allreduce_", "all_reduce"), ("c10d_functional.reduce_scatter_tensor", "reduce_scatter"),
    ("_c10d_functional.all_to_all_single", "all_to_all"), ("c10d.broadcast_", "broadcast"),
    ("c10d.reduce_", "reduce"),
])
def test_op_names(op, short):
    assert op_name(op) == short


def test_explicit_and_dispatched_collectives_on_one_rank():
    if dist.is_initialized():
        pytest.skip("a process group already exists in this process")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        rec = CommRecorder()
        x = torch.ones(2, 3)
        assert torch.equal(all_gather(x, counter=rec), x) and torch.equal(all_reduce(x, counter=rec), x)
        assert rec.summary()["ops"] == {"all_gather": 1, "all_reduce": 1} and rec.sent == 0   # p = 1
        with CommRecorder() as heard:
            dist.all_reduce(torch.ones(4))
        assert comm_counts(heard) == {"all_reduce": 1}
        assert [(r.op, r.group_size, r.nbytes) for r in heard.records] == [("all_reduce", 1, 16)]
    finally:
        dist.destroy_process_group()
