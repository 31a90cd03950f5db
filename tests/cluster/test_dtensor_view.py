"""``cluster.pull_dtensor(name)`` on the session's real 4-engine gloo cluster.

The engines build real DTensors (``distribute_tensor`` / ``DTensor.from_local``) on a (4,) and a
(2, 2) DeviceMesh; this process (the "notebook kernel") pulls every rank's local shard and
rebuilds the global tensor by the placements, which must equal the dense tensor made here from
the same seed -- for every placement combination, uneven and empty shards included. Engine-side
code is shipped as functions (``cluster.apply``), never as strings.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers.reference.dtensor import DTensorView, chunk_range
from helpers.viz import count_rank_colors, draw_dtensor

MESHES = {(4,): ("tp",), (2, 2): ("dp", "tp")}
KINDS = ("S0", "S1", "R", "P")          # Shard(0), Shard(1), Replicate(), Partial()
HYPO = settings(max_examples=8, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


# ------------------------------------------------------------------ engine side (shipped by value)
def shipped(f):
    """ipyparallel sends a function's code; with a module name it would also import that module on the
    engine for the globals (this test file is not importable there). These functions import what they
    use, so they run in the engine's own namespace."""
    f.__module__ = "__main__"
    return f


@shipped
def _engine_make(name, shape, mesh_shape, kinds, seed):
    """On every rank: the DTensor ``name`` of torch.randn(shape) (seed) with the given placements.

    Partial mesh dims hold shares (c + 1) / (1 + 2 + ... + n) of the value at coordinate c, so
    the shares sum to the dense tensor."""
    import torch
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Partial, Replicate, Shard, distribute_tensor

    from helpers.engine.namespace import user_ns

    ns = user_ns()
    meshes = ns.setdefault("_dtv_meshes", {})
    names = {(4,): ("tp",), (2, 2): ("dp", "tp")}[tuple(mesh_shape)]
    if tuple(mesh_shape) not in meshes:
        meshes[tuple(mesh_shape)] = init_device_mesh("cpu", tuple(mesh_shape), mesh_dim_names=names)
    mesh = meshes[tuple(mesh_shape)]
    torch.manual_seed(seed)
    t = torch.randn(*shape)
    place = {"S0": Shard(0), "S1": Shard(1), "R": Replicate(), "P": Partial()}
    no_partial = [Replicate() if k == "P" else place[k] for k in kinds]
    local = distribute_tensor(t, mesh, no_partial).to_local()
    coord = mesh.get_coordinate()
    for i, k in enumerate(kinds):
        if k == "P":
            n = mesh_shape[i]
            local = local * (coord[i] + 1) / (n * (n + 1) / 2)
    ns[name] = DTensor.from_local(local, mesh, [place[k] for k in kinds], shape=t.shape, stride=t.stride())
    return tuple(local.shape)


@shipped
def _engine_set_mixed(name):
    """A DTensor on ranks 0 and 1, a plain tensor on rank 2, nothing on rank 3."""
    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    from helpers.engine.namespace import user_ns

    ns = user_ns()
    mesh = init_device_mesh("cpu", (4,), mesh_dim_names=("tp",))
    dt = distribute_tensor(torch.ones(4, 2), mesh, [Shard(0)])
    ns.pop(name, None)
    if dist.get_rank() < 2:
        ns[name] = dt
    elif dist.get_rank() == 2:
        ns[name] = torch.ones(2)


@shipped
def _engine_refuse_then_all_reduce():
    """A bad plan is refused on every rank; a collective right after still works (nobody is stuck)."""
    import torch
    import torch.distributed as dist
    from torch.distributed.tensor.parallel import ColwiseParallel

    from helpers.models import Block
    from helpers.tp import check_plan

    try:
        check_plan(Block(24, 6, 48, norms=False), {"attn.wq": ColwiseParallel()}, degree=4)
        msg = "accepted"
    except ValueError as e:
        msg = str(e)
    t = torch.ones(1)
    dist.all_reduce(t)
    return msg, float(t)


def dense(shape, seed):
    torch.manual_seed(seed)
    return torch.randn(*shape)


def make(cluster, name, shape, mesh_shape, kinds, seed=0):
    cluster.apply(_engine_make, name, tuple(shape), tuple(mesh_shape), tuple(kinds), seed)
    return cluster.pull_dtensor(name)


# ------------------------------------------------------------------ every combination, uneven shape
COMBOS = [((4,), (k,)) for k in KINDS] + [((2, 2), ks) for ks in itertools.product(KINDS, repeat=2)]


@pytest.mark.parametrize("mesh_shape, kinds", COMBOS, ids=lambda v: "x".join(map(str, v)))
def test_full_equals_dense_for_every_placement_combination(cluster, mesh_shape, kinds):
    shape = (7, 5)                      # uneven on 4 ranks (2, 2, 2, 1) and on 2 (4, 3); columns (2, 2, 1, 0)
    view = make(cluster, "_dtv_x", shape, mesh_shape, kinds)
    assert view.mesh_shape == mesh_shape and view.mesh_dim_names == MESHES[mesh_shape]
    assert view.shape == shape and len(view.local_shards) == 4
    assert view.full().dtype == torch.float32, "full() keeps the DTensor's dtype, like full_tensor()"
    assert torch.allclose(view.full(), dense(shape, 0), atol=1e-6)


def test_view_facts_and_uneven_last_shard(cluster):
    view = make(cluster, "_dtv_u", (6, 4), (4,), ("S0",))
    assert view.placements == ("Shard(0)",) and view.spec == "Shard(0)" and view.layout == "Shard(0)"
    assert [tuple(t.shape) for t in view.local_shards] == [(2, 4), (2, 4), (2, 4), (0, 4)]
    assert view.coordinates == [(0,), (1,), (2,), (3,)]
    two = make(cluster, "_dtv_2", (6, 4), (2, 2), ("S0", "R"))
    assert two.placements == ("Shard(0)", "Replicate()") and two.layout is None
    assert two.coordinates == [(0, 0), (0, 1), (1, 0), (1, 1)] and two.mesh_ranks == [[0, 1], [2, 3]]


@HYPO
@given(mesh_shape=st.sampled_from(sorted(MESHES)), data=st.data())
def test_full_equals_dense_for_random_shapes(cluster, mesh_shape, data):
    ndim = data.draw(st.integers(1, 3), label="ndim")
    shape = tuple(data.draw(st.lists(st.integers(1, 9), min_size=ndim, max_size=ndim), label="shape"))
    kinds = tuple(data.draw(st.sampled_from([k for k in KINDS if k != "S1" or ndim > 1]), label=f"p{i}")
                  for i in range(len(mesh_shape)))
    seed = data.draw(st.integers(0, 1000), label="seed")
    view = make(cluster, "_dtv_h", shape, mesh_shape, kinds, seed)
    assert torch.allclose(view.full(), dense(shape, seed), atol=1e-6)


def test_chunk_range_is_torch_chunk():
    for size in range(0, 12):
        for parts in range(1, 6):
            got = [chunk_range(size, parts, i) for i in range(parts)]
            pieces = torch.arange(size).chunk(parts) if size else ()
            want = [(int(p[0]), int(p[-1]) + 1) for p in pieces]
            want += [(size, size)] * (parts - len(want))
            assert [g for g in got if g[0] < g[1]] == [w for w in want if w[0] < w[1]], (size, parts)


# ------------------------------------------------------------------ drawing the real shards
@pytest.mark.parametrize("shape, mesh_shape, kinds, owners", [
    ((6, 4), (4,), ("S0",), {0, 1, 2}),        # rank 3's shard is empty
    ((8,), (4,), ("S0",), {0, 1, 2, 3}),
    ((6, 4), (2, 2), ("S0", "S1"), {0, 1, 2, 3}),
    ((3, 5), (4,), ("P",), {0, 1, 2, 3}),
])
def test_draw_dtensor_paints_exactly_the_ranks_that_hold_data(cluster, shape, mesh_shape, kinds, owners):
    view = make(cluster, "_dtv_d", shape, mesh_shape, kinds)
    assert count_rank_colors(draw_dtensor(view)) == owners


# ------------------------------------------------------------------ bad input, refused clearly
def test_pull_dtensor_says_which_ranks_have_what(cluster):
    cluster.apply(_engine_set_mixed, "_dtv_mixed")
    with pytest.raises(NameError, match="'_dtv_mixed' is not defined on rank 3:"):  # as pull() says it
        cluster.pull_dtensor("_dtv_mixed")
    cluster.run("if rank == 3:\n    _dtv_mixed = 'text'")
    with pytest.raises(ValueError) as e:
        cluster.pull_dtensor("_dtv_mixed")
    msg = str(e.value)
    assert "ranks 0, 1: a DTensor" in msg and "rank 2: a plain torch.Tensor of shape (2,)" in msg
    assert "rank 3: a str" in msg and "distribute_tensor" in msg
    with pytest.raises(NameError, match="not defined on ranks 0, 1, 2, 3"):
        cluster.pull_dtensor("_dtv_nothing_here")


def test_bad_plan_is_refused_before_any_collective(cluster):
    results = cluster.apply(_engine_refuse_then_all_reduce)
    for msg, total in results:
        assert "attn.n_heads=6 is not divisible by tp degree 4" in msg
        assert total == 4.0          # the group still works: no rank was left in a collective


def test_inconsistent_descriptions_are_refused():
    base = {"kind": "dtensor", "placements": ["Shard(0)"], "shape": (4,),
            "local": torch.ones(1), "mesh": {"shape": (4,), "dim_names": ("tp",), "ranks": [0, 1, 2, 3],
                                             "coordinate": (0,), "device_type": "cpu"}}
    descs = [dict(base, mesh=dict(base["mesh"], coordinate=(r,))) for r in range(4)]
    assert DTensorView.from_descriptions("x", descs).full().tolist() == [1.0] * 4
    descs[2] = dict(descs[2], shape=(5,))
    with pytest.raises(ValueError, match="rank 2 has shape"):
        DTensorView.from_descriptions("x", descs)
    descs[2] = dict(descs[0], local=torch.ones(3), mesh=dict(base["mesh"], coordinate=(2,)))
    with pytest.raises(ValueError, match="rank 2's local shard has shape"):
        DTensorView.from_descriptions("x", descs)
