"""connect() on a real cluster: ranks, backend, device, collectives, pull order, reuse."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
from support import REPO, new_cluster_id

from helpers import cluster as hc
from helpers import connect


def test_engines_know_rank_world_size_device(cluster):
    assert cluster.world_size == 4
    assert cluster.backend == "gloo"
    assert cluster.pull("rank") == [0, 1, 2, 3]
    assert cluster.pull("world_size") == [4] * 4
    assert [str(d) for d in cluster.pull("device")] == ["cpu"] * 4
    assert cluster.pull("backend") == ["gloo"] * 4
    cluster.run("names_ok = all(n in globals() for n in ('torch', 'dist', 'rank', 'world_size', 'device'))")
    assert cluster.pull("names_ok") == [True] * 4
    # ranks follow the sorted engine ids
    assert cluster.engine_ids == sorted(cluster.engine_ids)


def test_torch_threads_do_not_oversubscribe(cluster):
    cluster.run("n_threads = torch.get_num_threads()")
    cores = len(os.sched_getaffinity(0))
    assert all(t == max(1, cores // 4) for t in cluster.pull("n_threads"))


def test_all_reduce_and_all_gather(cluster):
    cluster.run(textwrap.dedent("""
        t = torch.tensor([float(rank)], device=device)
        dist.all_reduce(t)
        summed = t.item()
        parts = [torch.zeros(2, device=device) for _ in range(world_size)]
        dist.all_gather(parts, torch.tensor([rank, 10.0 * rank], device=device))
        gathered = torch.stack(parts).cpu().tolist()
    """))
    n = cluster.world_size
    assert cluster.pull("summed") == [n * (n - 1) / 2] * n
    expected = [[float(r), 10.0 * r] for r in range(n)]
    assert cluster.pull("gathered") == [expected] * n


def test_pull_is_ordered_by_rank(cluster):
    cluster.push_by_rank("token", [f"for rank {r}" for r in range(4)])
    cluster.run("echo = (rank, token)")
    assert cluster.pull("echo") == [(r, f"for rank {r}") for r in range(4)]
    with pytest.raises(ValueError, match="one value per rank"):
        cluster.push_by_rank("token", [1, 2])


def test_connect_twice_returns_the_same_cluster(cluster):
    again = connect()  # TP_CLUSTER_ID / TP_PROFILE_DIR point at the session cluster
    assert again is cluster
    with pytest.raises(ValueError, match="already connected to 4 engines"):
        connect(n=2)


def test_second_kernel_adopts_the_running_process_group(cluster):
    """A second notebook attaches without re-initializing the process group (its %%px names
    start fresh: tests/test_workshop.py)."""
    cluster.run("_marker_store = id(_tp_store)")
    stores = cluster.pull("_marker_store")
    code = textwrap.dedent("""
        from helpers import connect
        c = connect()
        c.run("t = torch.ones(1); dist.all_reduce(t); s = t.item(); store = id(_tp_store)")
        print(c.pull("s"), c.pull("store"), c.pull("rank"))
        c.client.close()
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, env=dict(os.environ), cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert f"[4.0, 4.0, 4.0, 4.0] {stores} [0, 1, 2, 3]" in out.stdout


def test_rank_order_survives_engine_restart(cluster_factory):
    tc = cluster_factory.make(n=2, tag="restart")
    before = tc.engine_ids
    after = tc.restart_engines()
    assert set(after).isdisjoint(before), "ipyparallel gives new ids after a restart"
    assert after == sorted(after)
    assert tc.pull("rank") == [0, 1]
    tc.run("t = torch.ones(1); dist.all_reduce(t); s = t.item()")
    assert tc.pull("s") == [2.0, 2.0]


def test_two_clusters_side_by_side(cluster, cluster_factory):
    other = cluster_factory.make(n=2, tag="second")
    assert other is not cluster
    assert set(other.apply(os.getpid)).isdisjoint(cluster.apply(os.getpid))
    for c in (cluster, other):
        c.run("import os; t = torch.ones(1); dist.all_reduce(t); s = t.item(); port = os.environ['MASTER_PORT']")
    assert other.pull("s") == [2.0, 2.0]
    assert cluster.pull("s") == [4.0] * 4
    assert set(other.pull("port")).isdisjoint(cluster.pull("port"))


def test_connect_that_started_the_cluster_stops_it(tmp_path):
    cid = new_cluster_id("owned")
    tc = connect(n=1, cluster_id=cid, profile_dir=str(tmp_path), timeout=10, activate=False)
    assert tc.owned and tc.pull("rank") == [0]
    pids = tc.apply(os.getpid)
    tc.shutdown()
    assert hc.cluster_processes(cid) == []
    import psutil
    assert not any(psutil.pid_exists(p) for p in pids)


@pytest.mark.parametrize("bad, msg", [
    (dict(n=0), "at least 1"),
    (dict(n=-3), "at least 1"),
    (dict(n="four"), "whole number"),
    (dict(n=2.5), "whole number"),
    (dict(timeout=0), "positive number of seconds"),
    (dict(timeout="soon"), "positive number of seconds"),
    (dict(backend="mpi"), "backend must be one of"),
])
def test_connect_refuses_bad_arguments(bad, msg, tmp_path):
    cid = new_cluster_id("bad")
    with pytest.raises(ValueError, match=msg):
        connect(cluster_id=cid, profile_dir=str(tmp_path), **bad)
    assert hc.cluster_processes(cid) == []


def test_connect_nccl_without_gpus_is_refused_before_starting(tmp_path):
    if hc.visible_gpus():
        pytest.skip("this machine has GPUs")
    cid = new_cluster_id("nccl")
    with pytest.raises(ValueError, match="NCCL needs GPUs"):
        connect(n=2, backend="nccl", cluster_id=cid, profile_dir=str(tmp_path))
    assert hc.cluster_processes(cid) == []


def test_connect_says_what_to_do_when_no_cluster_can_start(tmp_path):
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the profile dir should be")
    cid = new_cluster_id("nostart")
    with pytest.raises(RuntimeError, match="(?s)could not be started.*launch_cluster.sh start"):
        connect(n=1, cluster_id=cid, profile_dir=str(blocked), start_timeout=20)
    assert hc.cluster_processes(cid) == []


@pytest.mark.gpu
def test_nccl_on_gpus(cluster_factory):
    gpus = hc.visible_gpus()
    if gpus < 1:
        pytest.skip("needs CUDA GPUs")
    tc = cluster_factory.make(n=gpus, tag="gpu")
    assert tc.backend == "nccl"
    assert tc.devices == [f"cuda:{i}" for i in range(gpus)]
    tc.run("t = torch.ones(1, device=device); dist.all_reduce(t); s = t.item()")
    assert tc.pull("s") == [float(gpus)] * gpus


def test_two_simulated_nodes_on_one_host(cluster):
    again = connect(nodes=2)
    try:
        assert again is cluster and cluster.nodes == ["node0", "node0", "node1", "node1"]
        cluster.run("import os; lr = (local_rank, int(os.environ['LOCAL_RANK']), "
                    "int(os.environ['LOCAL_WORLD_SIZE'])); t = torch.ones(1); dist.all_reduce(t); s = t.item()")
        assert cluster.pull("lr") == [(0, 0, 2), (1, 1, 2), (0, 0, 2), (1, 1, 2)]
        assert cluster.pull("s") == [4.0] * 4
        with pytest.raises(ValueError, match="nodes=3 does not divide"):
            connect(n=4, nodes=3)
    finally:
        connect(nodes=None)
    assert cluster.nodes == [cluster.engines[0].host] * 4


def test_a_notebook_needing_more_ranks_refuses_before_any_cell(cluster, tmp_path):
    with pytest.raises(ValueError, match=r"needs at least 5 ranks, but the cluster has 4.*connect\(n=5\)"):
        connect(min_ranks=5)
    cid = new_cluster_id("small")
    with pytest.raises(ValueError, match=r"needs at least 2 ranks, but the cluster has 1"):
        connect(n=1, min_ranks=2, cluster_id=cid, profile_dir=str(tmp_path))
    assert hc.cluster_processes(cid) == []  # refused before anything started


@pytest.mark.gpu
def test_four_ranks_share_one_gpu_over_gloo(cluster_factory, capsys):
    gpus = hc.visible_gpus()
    if gpus < 1:
        pytest.skip("needs a CUDA GPU")
    if gpus >= 4:
        pytest.skip("4 engines on 4 GPUs do not share")
    tc = cluster_factory.make(n=4, tag="shared")
    assert tc.backend == "gloo" and tc.shares_gpus
    assert tc.devices == [f"cuda:{r % gpus}" for r in range(4)]
    assert "share" in capsys.readouterr().out  # connect() said so
    tc.run("t = torch.ones(1 << 20, device=device) * (rank + 1); dist.all_reduce(t); "
           "parts = [torch.empty(2, device=device) for _ in range(world_size)]; "
           "dist.all_gather(parts, torch.full((2,), float(rank), device=device)); "
           "ok = (t[0].item(), torch.cat(parts).tolist(), t.device.type)")
    assert tc.pull("ok") == [(10.0, [0.0, 0.0, 1.0, 1.0, 2.0, 2.0, 3.0, 3.0], "cuda")] * 4


@pytest.mark.gpu
def test_the_session_cluster_on_a_small_gpu_machine_shares_it(cluster):
    """Where 1-3 GPUs are visible, every notebook test of the suite runs in the shared mode."""
    gpus = hc.visible_gpus()
    if not 1 <= gpus <= 3:
        pytest.skip("needs a machine with 1-3 GPUs")
    assert cluster.shares_gpus and all(d.startswith("cuda") for d in cluster.devices)
