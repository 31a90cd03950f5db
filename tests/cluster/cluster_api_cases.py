"""The cases of the one cluster API, run against both implementations (tests/cluster/test_cluster_api.py).

Each case takes a ``cluster`` (a live ``TPCluster`` or a batch job's ``BatchCluster``), sets its
engine variables with ``cluster.run`` and checks what ``pull`` / ``pull_dtensor`` return: on a
live cluster from the test process, in a batch job on every torchrun rank
(``python -m torch.distributed.run ... cluster_api_cases.py`` runs them all, one line each).
Not a test module: plain functions that raise ``AssertionError``.
"""

from __future__ import annotations

import sys

import torch

from helpers.common.api import ClusterAPI


def expect_error(kind, fn, *needles):
    try:
        fn()
    except kind as e:
        for needle in needles:
            assert needle in str(e), f"{needle!r} not in {e}"
        return
    raise AssertionError(f"no {kind.__name__} raised")


def case_implements_the_protocol(cluster):
    assert isinstance(cluster, ClusterAPI)
    assert cluster.world_size == 2 and len(cluster.info()) == 2 and len(cluster.nodes) == 2


def case_pull_is_cpu_detached_own_dtype(cluster):
    cluster.run("api_w = torch.ones(3, requires_grad=True, device=device) * (rank + 1)\n"
                "api_h = torch.full((2,), rank, dtype=torch.float16, device=device)\n"
                "api_i = torch.arange(3, device=device) + rank")
    ws, hs, ints = cluster.pull("api_w"), cluster.pull("api_h"), cluster.pull("api_i")
    for r in range(2):
        assert ws[r].device.type == "cpu" and not ws[r].requires_grad and ws[r].grad_fn is None
        assert ws[r].dtype == torch.float32 and torch.equal(ws[r], torch.full((3,), r + 1.0))
        assert hs[r].dtype == torch.float16 and ints[r].dtype == torch.int64
    assert cluster.pull("rank") == [0, 1]


def case_pull_walks_lists_tuples_dicts(cluster):
    cluster.run("api_w2 = torch.ones(2, requires_grad=True) * (rank + 1)\n"
                "api_box = {'a': [api_w2, (api_w2.double(), 'text')], 'n': rank}")
    boxes = cluster.pull("api_box")
    for r, box in enumerate(boxes):
        (w, (d, text)) = box["a"]
        assert isinstance(box["a"], list) and isinstance(box["a"][1], tuple)
        assert not w.requires_grad and w.dtype == torch.float32 and d.dtype == torch.float64
        assert text == "text" and box["n"] == r and torch.equal(w, torch.full((2,), r + 1.0))


def case_missing_name_is_a_name_error_naming_the_ranks(cluster):
    cluster.run("if rank == 1:\n    api_only_on_1 = 1")
    expect_error(NameError, lambda: cluster.pull("api_only_on_1"), "'api_only_on_1'", "rank 0")
    expect_error(NameError, lambda: cluster.pull("api_nowhere"), "'api_nowhere'", "ranks 0, 1")
    expect_error(NameError, lambda: cluster.pull_dtensor("api_nowhere"), "'api_nowhere'", "ranks 0, 1")


def case_pull_dtensor_full_keeps_the_dtype(cluster):
    cluster.run(
        "from torch.distributed.device_mesh import init_device_mesh\n"
        "from torch.distributed.tensor import DTensor, Shard\n"
        "api_mesh = init_device_mesh(device.type, (world_size,))\n"
        "api_full = torch.arange(12, dtype=torch.float16).reshape(4, 3)\n"
        "api_dt = DTensor.from_local(api_full.chunk(world_size)[rank].to(device), api_mesh, [Shard(0)],\n"
        "                            shape=api_full.shape, stride=api_full.stride())")
    view = cluster.pull_dtensor("api_dt")
    full = view.full()
    assert view.placements == ("Shard(0)",) and view.layout == "Shard(0)"
    assert full.dtype == torch.float16 and full.device.type == "cpu"
    assert torch.equal(full, torch.arange(12, dtype=torch.float16).reshape(4, 3))
    # pull gives each rank's local shard
    assert [tuple(t.shape) for t in cluster.pull("api_dt")] == [(2, 3), (2, 3)]


def case_pull_dtensor_of_a_plain_tensor_is_refused(cluster):
    cluster.run("api_plain = torch.ones(2)")
    expect_error(ValueError, lambda: cluster.pull_dtensor("api_plain"),
                 "'api_plain' is not a DTensor on every rank", "plain torch.Tensor", "distribute_tensor")


CASES = {name: f for name, f in globals().items() if name.startswith("case_")}


if __name__ == "__main__":  # under torchrun: every case on every rank, rank 0 reports
    from helpers.engine import batch

    job = batch.start(globals())
    from helpers import connect

    cluster = connect()
    failed = 0
    for name, case in CASES.items():
        try:
            case(cluster)
            line = f"PASS {name}"
        except Exception as e:  # reported, then the job fails
            failed += 1
            line = f"FAIL {name}: {type(e).__name__}: {e}"
        if job.rank == 0:
            print(line, flush=True)
    if failed:
        sys.exit(1)
    job.finish()
