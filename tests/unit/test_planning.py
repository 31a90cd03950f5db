"""Rank planning is pure: every branch, including those one machine cannot reach, checked here.

Several hosts (a PBS job), MPI ranks (mpiexec), NCCL with and without a GPU per engine.
The inputs are what ``helpers.engine.pg.probe()`` reports, written by hand.
"""

from __future__ import annotations

import dataclasses

import pytest

from helpers.cluster import ClusterRef
from helpers.common.topology import (
    check_min_ranks,
    check_n,
    default_n,
    layout_note,
    plan_ranks,
    rank_order,
    threads_per_engine,
)


def probe(eid, host="node0", gpus=0, mpi=None, pid=None):
    return {"engine_id": eid, "host": host, "cuda_count": gpus, "mpi_rank": mpi,
            "pid": pid or 1000 + eid}


def test_one_host_ranks_follow_sorted_engine_ids():
    backend, engines = plan_ranks([probe(7), probe(3), probe(5), probe(4)])
    assert backend == "gloo"
    assert [e.engine_id for e in engines] == [3, 4, 5, 7]
    assert [e.rank for e in engines] == [0, 1, 2, 3]
    assert [e.local_rank for e in engines] == [0, 1, 2, 3]
    assert {e.local_world_size for e in engines} == {4}
    assert {e.device for e in engines} == {"cpu"}


def test_two_hosts_local_ranks_restart_per_host_and_nccl_is_chosen():
    infos = [probe(i, host=f"dec{i // 4:04d}", gpus=4, mpi=i) for i in range(8)]
    backend, engines = plan_ranks(infos)
    assert backend == "nccl"
    assert [e.local_rank for e in engines] == [0, 1, 2, 3] * 2
    assert [e.device for e in engines] == [f"cuda:{i}" for i in range(4)] * 2
    assert {e.local_world_size for e in engines} == {4}


def test_mpi_rank_wins_over_engine_id():
    # engines registered out of order: the MPI rank decides
    infos = [probe(10, mpi=2), probe(11, mpi=0), probe(12, mpi=3), probe(13, mpi=1)]
    _, engines = plan_ranks(infos)
    assert [e.engine_id for e in engines] == [11, 13, 10, 12]
    assert [e.rank for e in engines] == [0, 1, 2, 3]


@pytest.mark.parametrize("mpi", [[0, 0, 1, 2], [1, 2, 3, 4], [0, None, 1, 2]])
def test_incomplete_or_repeated_mpi_ranks_fall_back_to_engine_ids(mpi):
    infos = [probe(i, mpi=m) for i, m in zip((9, 8, 7, 6), mpi)]
    assert [i["engine_id"] for i in rank_order(infos)] == [6, 7, 8, 9]


def test_nccl_refused_naming_the_host_and_counts():
    infos = [probe(0, "a", gpus=4), probe(1, "a", gpus=4), probe(2, "b", gpus=1), probe(3, "b", gpus=1)]
    assert plan_ranks(infos)[0] == "gloo"  # chosen: host b cannot give each engine a GPU
    with pytest.raises(ValueError, match="host b runs 2 engines and sees 1 GPU"):
        plan_ranks(infos, backend="nccl")


def test_unknown_backend_refused():
    with pytest.raises(ValueError, match="backend must be one of"):
        plan_ranks([probe(0)], backend="mpi")


@pytest.mark.parametrize("n, gpus, msg", [
    (4, 0, "NCCL needs GPUs but this node sees none"),
    (4, 2, "asked for 4 engines but this node sees 2 GPU"),
])
def test_check_n_refuses_nccl_without_enough_gpus(n, gpus, msg):
    with pytest.raises(ValueError, match=msg):
        check_n(n, backend="nccl", gpus=gpus)
    assert check_n(gpus or 1, backend="gloo", gpus=gpus) == (gpus or 1)


def test_defaults_and_threads():
    assert default_n(0) == 4 and default_n(4) == 4 and default_n(8) == 8
    assert threads_per_engine(2, 4) == 1
    assert threads_per_engine(64, 4) == 16


def test_cluster_ref_is_one_frozen_identity(tmp_path):
    a = ClusterRef("tp-ada", str(tmp_path / "p" / ".." / "p"))
    b = ClusterRef("tp-ada", str(tmp_path / "p"))
    assert a == b and hash(a) == hash(b)  # profile dirs are made absolute and normal
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.cluster_id = "other"
    assert a.state_file.startswith(a.security_dir)
    with pytest.raises(ValueError, match="non-empty"):
        ClusterRef("", str(tmp_path))
    a.write_state(n=4)
    assert a.read_state() == {"n": 4}
    a.remove_files()
    assert a.read_state() == {}


def test_simulated_nodes_split_one_host_into_blocks_with_their_own_local_ranks():
    _, engines = plan_ranks([probe(i, host="laptop") for i in range(4)], nodes=2)
    assert [e.node for e in engines] == ["node0", "node0", "node1", "node1"]
    assert [e.local_rank for e in engines] == [0, 1, 0, 1]
    assert {e.local_world_size for e in engines} == {2}
    assert {e.host for e in engines} == {"laptop"}


@pytest.mark.parametrize("nodes, hosts, msg", [
    (3, ["vm"] * 4, r"nodes=3 does not divide the 4 engines; pick nodes in \{1, 2, 4\}"),
    (0, ["vm"] * 4, "whole number of nodes"),
    (2, ["a", "a", "b", "b"], "already spans 2 real hosts"),
])
def test_simulated_nodes_refused_with_the_numbers(nodes, hosts, msg):
    with pytest.raises(ValueError, match=msg):
        plan_ranks([probe(i, host=h) for i, h in enumerate(hosts)], nodes=nodes)


def test_real_hosts_are_the_nodes_without_simulation():
    _, engines = plan_ranks([probe(i, host=f"dec{i // 2}") for i in range(4)])
    assert [e.node for e in engines] == ["dec0", "dec0", "dec1", "dec1"]


@pytest.mark.parametrize("gpus, devices", [
    (1, ["cuda:0"] * 4),
    (2, ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]),
    (0, ["cpu"] * 4),
])
def test_engines_share_gpus_round_robin_over_gloo(gpus, devices):
    backend, engines = plan_ranks([probe(i, host="laptop", gpus=gpus) for i in range(4)])
    assert backend == "gloo"
    assert [e.device for e in engines] == devices


def test_nccl_keeps_one_gpu_per_engine_and_refuses_sharing():
    backend, engines = plan_ranks([probe(i, gpus=4) for i in range(4)])
    assert backend == "nccl" and [e.device for e in engines] == [f"cuda:{i}" for i in range(4)]
    with pytest.raises(ValueError, match="runs 4 engines and sees 1 GPU"):
        plan_ranks([probe(i, gpus=1) for i in range(4)], backend="nccl")


def test_layout_is_said_plainly():
    def note(gpus, n=4):
        backend, engines = plan_ranks([probe(i, gpus=gpus) for i in range(n)])
        return layout_note(backend, engines)
    assert note(1) == "4 ranks share 1 GPU over gloo: right for learning, slower than NCCL"
    assert note(2) == "4 ranks share 2 GPUs over gloo: right for learning, slower than NCCL"
    assert note(4) == "4 ranks, one GPU each, over NCCL"
    assert note(0) == "4 ranks on CPU engines over gloo"
    assert note(1, n=1) == "1 rank, one GPU each, over NCCL"


def test_one_to_three_gpus_default_to_four_sharing_engines():
    assert [default_n(g) for g in range(6)] == [4, 4, 4, 4, 4, 5]


def test_a_notebook_refuses_a_one_rank_cluster_with_the_fix():
    with pytest.raises(ValueError, match=r"needs at least 2 ranks, but the cluster has 1.*connect\(n=4\)"):
        check_min_ranks(1, 2)
    check_min_ranks(4, 2)
    check_min_ranks(1, None)
