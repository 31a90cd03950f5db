"""helpers.tp on the real 4-engine cluster, checked against dense the way the notebooks do.

Every test runs code on the session's ipyparallel engines (gloo, one process per rank, a
real process group) and, where the notebooks would, pulls the results back *by rank* into
this process (the "notebook kernel") and checks them there against a dense layer built from
the same seed, with ``helpers.reference.compare``.  Nothing is mocked.

TP degrees 1, 2 and 4 are all exercised on the same 4 ranks:

    degree 4: the world group (``group=None``)        ranks {0, 1, 2, 3}
    degree 2: ``dist.new_group([0, 1])``, ``([2, 3])`` ranks {0, 1} and {2, 3}
    degree 1: ``dist.new_group([r])`` for every r       one rank each

The engine-side code is a real module, tests/cluster/tp_cluster_engine.py, loaded once on every
engine (``helpers.engine.namespace.load_module``) and called by reference:
``tpc.apply(eng.primitive, ...)`` returns one result per rank, in rank order.  The groups are
made once for this module by ``eng.setup()`` (``new_group`` is collective: every rank creates
every group, in the same order) and live in that module on each engine (``eng.GROUPS``,
``{degree: this rank's group}``); nothing is defined in the engines' interactive namespace.

Each group at degree 2 or 1 is an independent replica of the same TP computation, so each
group is compared with dense on its own.

Costs: one cluster round trip (an apply) per engine call of a test or hypothesis example; every
test carries its own timeout, and the PG timeout (30 s) ends a stuck collective first.
"""

from __future__ import annotations

import math
import os
import re
import sys

import pytest
import torch
import torch.nn as nn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import reference, tp
from helpers.engine import namespace
from helpers.models import MLP

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(os.path.dirname(HERE), "torchrun", "tp_torchrun_worker.py")   # the torchrun checks
ENGINE = os.path.join(HERE, "tp_cluster_engine.py")                                  # the engine-side functions
# Both are loaded by path here and on every engine (the tpc fixture), so their functions ship by reference.
worker = sys.modules[namespace.load_module("tp_torchrun_worker", WORKER)]
eng = sys.modules[namespace.load_module("tp_cluster_engine", ENGINE)]
DEGREES = (1, 2, 4)
WORLD = 4

HYPO = settings(max_examples=10, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def tpc(cluster):
    """The session cluster with this module's groups made on every engine (tp_cluster_engine)."""
    if cluster.world_size != WORLD:
        pytest.skip(f"these tests need {WORLD} ranks, the cluster has {cluster.world_size}")
    names_before = cluster.apply(namespace.user_names)
    # What a notebook's first %%px cells would do: load the engine-side code, make the groups.
    cluster.apply(namespace.load_module, "tp_torchrun_worker", WORKER)
    cluster.apply(namespace.load_module, "tp_cluster_engine", ENGINE)
    where = cluster.apply(eng.setup)
    mine = os.path.realpath(tp.__file__)
    assert all(w == dict(tp=mine, worker_tp=mine) for w in where), (
        f"engines use helpers.tp from {where}, this kernel from {mine}: they must be the same "
        "checkout (an engine cwd in another checkout?)")
    yield cluster
    # Leave the engines as we found them: our subgroups destroyed (local), our modules
    # unregistered, no new names in the engines' namespace.
    assert cluster.apply(eng.teardown) == [[]] * WORLD
    assert cluster.apply(namespace.user_names) == names_before


# ------------------------------------------------------------------ kernel-side helpers
def groups_of(degree: int) -> list[list[int]]:
    """The TP groups (global ranks) at a degree: [[0,1,2,3]], [[0,1],[2,3]], [[0],...,[3]]."""
    return [list(range(s, s + degree)) for s in range(0, WORLD, degree)]


def members(rank: int, degree: int) -> list[int]:
    start = rank - rank % degree
    return list(range(start, start + degree))


def base(*shape) -> torch.Tensor:
    return torch.arange(1, math.prod(shape) + 1, dtype=torch.float32).reshape(*shape)


# ------------------------------------------------------------------ the groups
@pytest.mark.timeout(120)
def test_groups_have_the_expected_members_on_every_rank(tpc):
    facts = tpc.apply(eng.group_facts)
    for r, f in enumerate(facts):
        for d in DEGREES:
            ranks, grank, size, dr = f[d]
            assert ranks == members(r, d), (r, d, ranks)
            assert (grank, size) == (r % d, d) == (dr[1], dr[0]), (r, d, f[d])


@pytest.mark.timeout(120)
def test_a_group_this_rank_is_not_in_is_refused(tpc):
    # worker's check_not_member: ColumnParallelLinear(group=other pair) -> "not a member"
    tpc.apply(eng.with_group, worker.check_not_member, "other")
    assert tpc.apply(eng.world_all_reduce) == [4.0] * WORLD  # nobody was left waiting


# ------------------------------------------------------------------ the four primitives
def expected_primitive(name: str, degree: int, lead: tuple, k: int, r: int) -> dict:
    """Hand-computed result of one primitive on global rank r (mirrors eng.primitive's inputs)."""
    grp, gr, p = members(r, degree), r % degree, degree
    many = p > 1
    if name == "f":        # copy-to: identity forward; backward sums the group's dY
        y = base(*lead, k)
        x_grad = sum(m + 1 for m in grp) * base(*lead, k)
        counts = ({}, {"allreduce": 1} if many else {})
    elif name == "g":      # reduce-from: all-reduce forward; identity backward
        y = sum(m + 1 for m in grp) * base(*lead, k)
        x_grad = 10 * (r + 1) * base(*lead, k)
        counts = ({"allreduce": 1} if many else {}, {})
    elif name == "gather":  # all-gather last dim forward (group-rank order); keep own slice back
        y = torch.cat([(m + 1) * base(*lead, k) for m in grp], dim=-1)
        x_grad = ((r + 1) * base(*lead, k * p))[..., gr * k:(gr + 1) * k]
        counts = ({"allgather": 1} if many else {}, {})
    elif name == "scatter":  # keep own slice forward; all-gather last dim backward
        y = base(*lead, k * p)[..., gr * k:(gr + 1) * k]
        x_grad = torch.cat([(m + 1) * base(*lead, k) for m in grp], dim=-1)
        counts = ({}, {"allgather": 1} if many else {})
    return dict(y=y, x_grad=x_grad, fwd=counts[0], bwd=counts[1])


@pytest.mark.timeout(120)
@pytest.mark.parametrize("degree", DEGREES)
@pytest.mark.parametrize("name", ["f", "g", "gather", "scatter"])
def test_primitive_matches_hand_computed(tpc, name, degree):
    lead, k = (2, 3), 2  # a 3-d tensor: the split/gather is along the last dim only
    got = tpc.apply(eng.primitive, name, degree, lead, k)
    for r, res in enumerate(got):
        exp = expected_primitive(name, degree, lead, k, r)
        assert torch.equal(res["y"], exp["y"]), (name, degree, r, res["y"], exp["y"])
        assert torch.equal(res["x_grad"], exp["x_grad"]), (name, degree, r, res["x_grad"], exp["x_grad"])
        assert (res["fwd"], res["bwd"]) == (exp["fwd"], exp["bwd"]), (
            f"{name} at degree {degree}, rank {r}: collectives forward {res['fwd']}, "
            f"backward {res['bwd']}; expected {exp['fwd']}, {exp['bwd']}")


# ------------------------------------------------------------------ layers, checked on the engines
@pytest.mark.timeout(120)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("degree", DEGREES)
def test_layers_match_dense_on_engines(tpc, degree, bias):
    """The torchrun worker's checks, unchanged, on the engines (assert_close there)."""
    assert tpc.apply(eng.check_layers, degree, bias) == ["ok"] * WORLD


# ------------------------------------------------------------------ layers, checked in the kernel
# Layouts of what each rank returns (DTensor vocabulary, as in helpers.reference).
PARAM_LAYOUTS = {
    "column": {"weight": "Shard(0)", "bias": "Shard(0)"},
    "row": {"weight": "Shard(-1)", "bias": "Replicate()"},
    "mlp": {"w1.weight": "Shard(0)", "w1.bias": "Shard(0)",
            "w2.weight": "Shard(-1)", "w2.bias": "Replicate()"},
}


def dense_reference(kind, bias, d_in, d_out, seed, x, dy):
    """The kernel's dense layer from the same seed: output, input grad, parameter grads."""
    torch.manual_seed(seed)
    dense = MLP(d_in, d_out, bias=bias) if kind == "mlp" else nn.Linear(d_in, d_out, bias=bias)
    x = x.clone().requires_grad_()
    y = dense(x)
    y.backward(dy)
    return y.detach(), x.grad, {n: q.grad for n, q in dense.named_parameters()}


def check_layer_in_kernel(cluster, kind, degree, bias, flag, shape, seed):
    """Engines compute; the kernel pulls by rank, reassembles each group and compares."""
    B, d_in, d_out = shape
    out_dim = d_in if kind == "mlp" else d_out           # the MLP maps D -> H -> D
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(B, d_in, generator=g)                # X: (B, d_in), pushed to every rank
    dy = torch.randn(B, out_dim, generator=g)            # dY: (B, out), pushed to every rank
    got = cluster.apply(eng.layer_case, kind, degree, bias, flag, d_in, d_out, seed, x=x, dy=dy)
    y, x_grad, grads = dense_reference(kind, bias, d_in, d_out, seed, x, dy)

    y_layout = "Shard(-1)" if kind == "column" and not flag else "Replicate()"
    x_layout = "Shard(-1)" if kind == "row" and flag else "Replicate()"
    for grp in groups_of(degree):
        pulled = [got[r] for r in grp]
        assert all(set(p["grads"]) == set(grads) for p in pulled), (
            f"{kind} bias={bias}: parameters {[sorted(p['grads']) for p in pulled]} vs dense "
            f"{sorted(grads)}")
        tag = f"{kind} p={degree} ranks {grp} bias={bias} flag={flag} shape={shape}"
        pairs = [(f"Y [{tag}]", [p["y"] for p in pulled], y, y_layout),
                 (f"dX [{tag}]", [p["x_grad"] for p in pulled], x_grad, x_layout)]
        pairs += [(f"d{n} [{tag}]", [p["grads"][n] for p in pulled], grads[n], PARAM_LAYOUTS[kind][n])
                  for n in grads]
        reference.compare_grads(pairs, show=False)
        # shards really are shards: each rank holds 1/p of the split dim
        if degree > 1 and kind in ("column", "mlp"):
            w = "weight" if kind == "column" else "w1.weight"
            assert all(p["grads"][w].shape[0] == grads[w].shape[0] // degree for p in pulled)


SHAPES = [(3, 8, 16), (1, 5, 12), (4, 12, 4)]  # (B, d_in, d_out); d_in=5 only for column/mlp


@pytest.mark.timeout(120)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("degree", DEGREES)
@pytest.mark.parametrize("kind", ["column", "row", "mlp"])
def test_layer_pulled_by_rank_matches_dense_in_kernel(tpc, kind, degree, bias):
    for i, (B, d_in, d_out) in enumerate(SHAPES):
        if kind == "row" and d_in % degree:
            d_in = 4 * d_in            # row splits in_features: keep it divisible
        flags = [True, False] if kind != "mlp" else [True]
        for flag in flags:
            check_layer_in_kernel(tpc, kind, degree, bias, flag, (B, d_in, d_out), seed=10 + i)


@st.composite
def layer_cases(draw):
    degree = draw(st.sampled_from(DEGREES))
    kind = draw(st.sampled_from(["column", "row", "mlp"]))
    B = draw(st.integers(1, 4))
    d_in = degree * draw(st.integers(1, 4))
    d_out = degree * draw(st.integers(1, 4))
    return dict(kind=kind, degree=degree, bias=draw(st.booleans()), flag=draw(st.booleans()),
                shape=(B, d_in, d_out), seed=draw(st.integers(0, 2**16)))


@pytest.mark.timeout(120)
@HYPO
@given(case=layer_cases())
def test_layer_matches_dense_for_generated_shapes(tpc, case):
    check_layer_in_kernel(tpc, **case)


# ------------------------------------------------------------------ uneven splits are refused
def assert_refusal(rec, name, size, degree, r):
    """The documented message: the numbers, the working degrees and the padding fix."""
    where = f"rank {r}, {rec['what']}"
    assert rec["error"] == "ValueError", f"{where}: expected ValueError, got {rec}"
    msg = rec["msg"]
    assert f"{name}={size} is not divisible by tp degree {degree}" in msg, f"{where}: {msg}"
    m = re.search(r"pick a degree in \{([\d, ]+)\}", msg)
    assert m, f"{where}: no working degrees in {msg!r}"
    assert [int(v) for v in m.group(1).split(",")] == [d for d in range(1, size + 1) if size % d == 0], msg
    assert f"pad {name} to {math.ceil(size / degree) * degree}" in msg, f"{where}: {msg}"
    assert rec["comms"] == {}, f"{where}: collectives before the refusal: {rec['comms']}"


def refusal_cases(size: int):
    """(what, a, b) built on the engines; (name, size) the message must name."""
    return [
        (("column", 8, size), "out_features"),
        (("column.from_linear", 8, size), "out_features"),
        (("row", size, 8), "in_features"),
        (("row.from_linear", size, 8), "in_features"),
        (("mlp", 8, size), "d_hidden"),
        (("mlp.from_dense", 8, size), "d_hidden"),
        (("scatter", size, 0), "input last dim"),
    ]


def check_refusals(cluster, degree, size):
    cases = refusal_cases(size)
    got = cluster.apply(eng.refusals, degree, [c for c, _ in cases])
    for r, res in enumerate(got):
        assert [x["what"] for x in res["refusals"]] == [c[0] for c, _ in cases]
        for rec, (_, name) in zip(res["refusals"], cases):
            assert_refusal(rec, name, size, degree, r)
        # the all-reduces right after the refusals completed with the right sums
        assert res["group_sum"] == degree and res["world_sum"] == 6.0, (r, res)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("degree,size", [(2, 5), (2, 7), (4, 6), (4, 10)])
def test_uneven_split_refused_on_every_rank_before_any_collective(tpc, degree, size):
    check_refusals(tpc, degree, size)


@pytest.mark.timeout(120)
@HYPO
@given(data=st.data())
def test_uneven_split_refused_for_generated_sizes(tpc, data):
    degree = data.draw(st.sampled_from([2, 4]), label="degree")
    size = data.draw(st.integers(1, 40).filter(lambda s: s % degree), label="size")
    check_refusals(tpc, degree, size)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("degree", [2, 4])
def test_row_parallel_refuses_a_full_input_before_any_collective(tpc, degree):
    got = tpc.apply(eng.refusals, degree, [("row.forward_full_input", 8, 3)])
    for r, res in enumerate(got):
        (rec,) = res["refusals"]
        assert rec["error"] == "ValueError", (r, rec)
        assert "input has last dim 8" in rec["msg"], rec["msg"]
        assert f"in_features/p = 8/{degree} = {8 // degree}" in rec["msg"], rec["msg"]
        assert rec["comms"] == {}, (r, rec)
        assert res["group_sum"] == degree and res["world_sum"] == 6.0, (r, res)


@pytest.mark.timeout(120)
def test_degree_1_accepts_every_size(tpc):
    """The flip side: a single-rank group splits nothing, so odd sizes are fine."""
    got = tpc.apply(eng.refusals, 1, [("column", 7, 5), ("row", 5, 7), ("mlp", 3, 7)])
    for r, res in enumerate(got):
        assert [x["error"] for x in res["refusals"]] == [None] * 3, (r, res)
        assert all(x["comms"] == {} for x in res["refusals"]), (r, res)
        assert res["group_sum"] == 1.0 and res["world_sum"] == 6.0


# ------------------------------------------------------------------ Megatron's collective count
@pytest.mark.timeout(120)
@pytest.mark.parametrize("degree", DEGREES)
def test_parallel_mlp_issues_one_all_reduce_forward_and_one_backward(tpc, degree):
    if degree > 1:  # the worker's own check raises on the engines if the count is off
        tpc.apply(eng.with_group, worker.check_mlp_collective_count, degree)
    counts = tpc.apply(eng.with_group, worker.count_mlp_collectives, degree)
    expected = ({"forward": {"allreduce": 1}, "backward": {"allreduce": 1}} if degree > 1
                else {"forward": {}, "backward": {}})  # degree 1: no communication at all
    assert counts == [expected] * WORLD
