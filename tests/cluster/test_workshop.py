"""A workshop day on one cluster: each notebook starts as a fresh script, one notebook drives the
cluster at a time, and the engines stay flat however often a learner re-runs.

One cluster for the whole file (``./launch_cluster.sh start -n 2``, as a workshop starts it) and
two real Jupyter kernels, A and B, that take the cluster from each other; the last test stops
the cluster as ``./launch_cluster.sh stop`` does after a long day and expects no process killed.
"""

from __future__ import annotations

import ast
import time

import psutil
import pytest
from support import ClusterFactory, jupyter_kernel, launch
from support import kernel_cell as cell
from support import kernel_pull as pulled

pytestmark = pytest.mark.timeout(300)

CONNECT = "from helpers import connect\ncluster = connect()"

# a cell that leaves what notebooks 02-04 leave: meshes, subgroups, DTensors and their caches
MESH_WORKLOAD = """
%%px
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Replicate, Shard, distribute_tensor
mesh = init_device_mesh(device.type, (world_size,), mesh_dim_names=("tp",))
mesh2d = init_device_mesh(device.type, (1, world_size), mesh_dim_names=("dp", "tp"))
group = dist.new_group(list(range(world_size)))
x = distribute_tensor(torch.arange(8.0).reshape(4, 2), mesh, [Shard(0)])
total = x.redistribute(mesh, [Replicate()]).to_local().sum().item()
y = distribute_tensor(torch.ones(2, 2), mesh2d, [Replicate(), Shard(1)])
ones = torch.ones(1)
dist.all_reduce(ones, group=group)
dist.all_reduce(ones, group=mesh2d.get_group("tp"))
"""




@pytest.fixture(scope="module")
def day(tmp_path_factory):
    """A 2-engine cluster from launch_cluster.sh, and kernels A and B (notebooks a, b)."""
    factory = ClusterFactory(tmp_path_factory)
    ref = factory.ref("workshop")
    out = launch("start", "-n", "2", cluster_id=ref.cluster_id, profile_dir=ref.profile_dir)
    assert out.returncode == 0, out.stderr
    folder = tmp_path_factory.mktemp("notebooks")
    env = dict(TP_CLUSTER_ID=ref.cluster_id, TP_PROFILE_DIR=ref.profile_dir)
    try:
        with jupyter_kernel(folder, JPY_SESSION_NAME=str(folder / "a.ipynb"), **env) as (_, a), \
                jupyter_kernel(folder, JPY_SESSION_NAME=str(folder / "b.ipynb"), **env) as (_, b):
            yield {"ref": ref, "a": a, "b": b}
    finally:
        factory.finish()


def test_a_new_notebook_starts_fresh_and_reconnect_keeps_its_names(day):
    a, b = day["a"], day["b"]
    cell(a, CONNECT)
    cell(a, "%%px\nleftover_from_a = 5")
    cell(a, CONNECT)  # the same kernel again: its state is kept
    cell(a, "%%px\nseen = leftover_from_a")
    assert pulled(a, "seen") == [5, 5]

    _, out = cell(b, CONNECT)  # another notebook: the engines start as a fresh script
    said = [line for line in out.splitlines() if "reset" in line]
    assert len(said) == 1 and "'a.ipynb'" in said[0], out
    reply, out = cell(b, "%%px\nseen = leftover_from_a", ok=False)
    assert reply["content"]["status"] == "error" and "leftover_from_a" in out, out
    cell(b, "%%px\nfresh = (rank, world_size, str(device), backend)")  # connect()'s names stay
    assert pulled(b, "fresh") == [(0, 2, "cpu", "gloo"), (1, 2, "cpu", "gloo")]


def test_the_notebook_taken_over_fails_fast_in_one_line(day):
    a, b = day["a"], day["b"]
    cell(a, CONNECT)  # A takes the cluster (back)
    cell(b, CONNECT)  # and B takes it over
    t0 = time.monotonic()
    reply, out = cell(a, "%%px\nt = torch.ones(1)\ndist.all_reduce(t)", ok=False)
    took = time.monotonic() - t0
    assert reply["content"]["status"] == "error" and took <= 2.0, (took, out)
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1 and "ClusterTakenError" in lines[0], out
    assert "'b.ipynb'" in lines[0] and "connect()" in lines[0], out
    cell(b, "%%px\nt = torch.ones(1)\ndist.all_reduce(t)\nv = t.item()")  # B's collectives run
    assert pulled(b, "v") == [2.0, 2.0]
    assert [d["notebook"] for d in pulled(b, "_tp_driver")] == ["b.ipynb", "b.ipynb"]  # engines know


def engine_counts(kc) -> list[tuple[int, int, int]]:
    """(open files, threads, RSS MiB) of each engine process, by rank."""
    _, out = cell(kc, "print([e['pid'] for e in cluster.info()])")
    pids = ast.literal_eval(out.strip().splitlines()[-1])
    procs = [psutil.Process(pid) for pid in pids]
    return [(len(p.open_files()) + len(p.net_connections()), p.num_threads(),
             p.memory_info().rss >> 20) for p in procs]


def test_engines_stay_flat_across_notebooks(day):
    a, b = day["a"], day["b"]
    runs = 4
    counts = []
    for i in range(runs):
        kc = a if i % 2 == 0 else b
        cell(kc, CONNECT)
        cell(kc, MESH_WORKLOAD)
        assert pulled(kc, "total") == [28.0, 28.0]
        counts.append(engine_counts(kc))
    print(f"\n(open files + sockets, threads, RSS MiB) per engine after runs 1..{runs}: {counts}")
    for rank, (first, last) in enumerate(zip(counts[0], counts[-1])):
        assert last[0] <= first[0] * 1.1, f"rank {rank}: open files {first[0]} -> {last[0]}"
        assert last[1] <= first[1] * 1.1, f"rank {rank}: threads {first[1]} -> {last[1]}"


def test_stop_after_the_day_kills_no_engine(day):
    ref = day["ref"]
    out = launch("stop", cluster_id=ref.cluster_id, profile_dir=ref.profile_dir)
    assert out.returncode == 0, out.stderr
    assert "stopped" in out.stdout and "killed" not in out.stdout + out.stderr, out.stdout
