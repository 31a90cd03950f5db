"""helpers.tp.mesh and helpers.tp.plan: pure checks, no process group (notebook 02, reused by 03)."""

from __future__ import annotations

import warnings

import pytest
import torch.nn as nn
from torch.distributed.tensor import Replicate, Shard
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

from helpers.models import MLP, Block, GatedMLP, interleave_qkv
from helpers.models.plans import block_plan
from helpers.tp import (
    TPLayoutWarning,
    check_mesh_shape,
    check_placements,
    check_plan,
    check_tp_in_node,
    mesh_groups,
    tp_groups_across_hosts,
    warn_if_tp_crosses_hosts,
)

TWO_NODES = ["node0", "node0", "node1", "node1"]
PLAN = block_plan(sequence_parallel=False, prepare_input=False)   # notebook 02's six-layer plan


def plain_block(d_model=16, n_heads=4, d_ff=32, **kw):
    return Block(d_model, n_heads, d_ff, norms=False, **kw)


# ------------------------------------------------------------------ groups of a row-major mesh
def test_groups_of_1d_and_2d_meshes():
    assert mesh_groups((4,), ("tp",)) == {"tp": [[0, 1, 2, 3]]}
    assert mesh_groups((2, 2), ("dp", "tp")) == {"dp": [[0, 2], [1, 3]], "tp": [[0, 1], [2, 3]]}
    g = mesh_groups((2, 4), ("dp", "tp"))
    assert g["tp"] == [[0, 1, 2, 3], [4, 5, 6, 7]] and g["dp"] == [[0, 4], [1, 5], [2, 6], [3, 7]]


def test_groups_of_a_3d_mesh_partition_the_ranks():
    g = mesh_groups((2, 3, 2), ("pp", "dp", "tp"))
    for groups in g.values():
        assert sorted(r for grp in groups for r in grp) == list(range(12))
    assert g["tp"][0] == [0, 1] and g["dp"][0] == [0, 2, 4] and g["pp"][0] == [0, 6]


# ------------------------------------------------------------------ TP groups that cross hosts
def test_dp_tp_order_keeps_tp_inside_each_node():
    assert tp_groups_across_hosts((2, 2), ("dp", "tp"), TWO_NODES) == []


def test_tp_dp_order_puts_tp_partners_on_different_nodes():
    crossing = tp_groups_across_hosts((2, 2), ("tp", "dp"), TWO_NODES)
    assert crossing == [{"ranks": [0, 2], "hosts": ["node0", "node1"]},
                        {"ranks": [1, 3], "hosts": ["node0", "node1"]}]


def test_real_host_names_by_rank_eight_ranks_on_two_derecho_nodes():
    hosts = ["dec0001"] * 4 + ["dec0002"] * 4
    assert tp_groups_across_hosts((2, 4), ("dp", "tp"), hosts) == []
    assert len(tp_groups_across_hosts((4, 2), ("tp", "dp"), hosts)) == 2
    # TP degree 8 on 4-GPU nodes: the one group must span both nodes
    assert tp_groups_across_hosts((8,), ("tp",), hosts) == [{"ranks": list(range(8)),
                                                              "hosts": ["dec0001", "dec0002"]}]


def test_warning_names_groups_hosts_and_the_fix():
    with pytest.warns(TPLayoutWarning) as rec:
        crossing = warn_if_tp_crosses_hosts((2, 2), ("tp", "dp"), TWO_NODES)
    msg = str(rec[0].message)
    assert len(crossing) == 2
    assert "[0, 2]" in msg and "node0, node1" in msg and "('dp', 'tp')" in msg


def test_no_warning_for_a_good_layout():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert warn_if_tp_crosses_hosts((2, 2), ("dp", "tp"), TWO_NODES) == []


@pytest.mark.parametrize("args, words", [
    (((2, 2), ("dp", "tp"), ["a", "b", "c"]), ["4 ranks", "3 host names"]),
    (((2, 2), ("dp", "pp"), TWO_NODES), ["no dim named 'tp'", "('dp', 'pp')"]),
    (((2, 2), ("tp",), TWO_NODES), ["2 dims", "1 dim names"]),
    (((2, 2), ("tp", "tp"), TWO_NODES), ["different"]),
    (((0, 4), ("dp", "tp"), TWO_NODES), ["positive"]),
])
def test_bad_layouts_are_refused_with_the_numbers(args, words):
    with pytest.raises(ValueError) as e:
        tp_groups_across_hosts(*args)
    for w in words:
        assert w in str(e.value)


def test_tp_in_node_uses_the_same_groups_as_the_host_check():
    check_tp_in_node((2, 4), ("fsdp", "tp"), ranks_per_node=4)          # Derecho's (2, 4): fine
    with pytest.raises(ValueError, match=r"TP degree 4 does not divide the 2 ranks per node.*\{1, 2\}"):
        check_tp_in_node((1, 4), ("fsdp", "tp"), ranks_per_node=2)
    with pytest.raises(ValueError, match=r"ranks \[0, 4\] would span nodes \[0, 1\].*\('fsdp', 'tp'\)"):
        check_tp_in_node((2, 4), ("tp", "fsdp"), ranks_per_node=4)
    with pytest.raises(ValueError, match="no dim named 'tp'"):
        check_tp_in_node((2, 2), ("dp", "pp"), ranks_per_node=2)


def test_mesh_shape_not_the_world_size():
    with pytest.raises(ValueError, match=r"mesh shape \(2, 4\) needs 8 ranks but world_size is 4"):
        check_mesh_shape((2, 4), 4)
    assert check_mesh_shape((2, 2), 4) == (2, 2)


# ------------------------------------------------------------------ placements
def test_shard_on_a_dim_the_tensor_lacks():
    with pytest.raises(ValueError, match=r"Shard\(2\) but the tensor has shape \(6, 4\) with 2 dim"):
        check_placements((6, 4), [Shard(2)], 1)
    with pytest.raises(ValueError, match="one placement per mesh dim"):
        check_placements((6, 4), [Shard(0)], 2)
    check_placements((6, 4), [Shard(-1), Replicate()], 2)  # fine


# ------------------------------------------------------------------ plans
def test_plan_naming_a_missing_module_lists_the_submodules():
    with pytest.raises(ValueError) as e:
        check_plan(plain_block(), {"attn.query": ColwiseParallel()})
    msg = str(e.value)
    assert "'attn.query'" in msg and "Did you mean 'attn.wq'" in msg
    assert "attn_norm, attn, attn.wq, attn.wk, attn.wv, attn.wo, mlp_norm, mlp, mlp.w1, mlp.act, mlp.w2" in msg


def test_plan_values_must_be_parallel_styles():
    with pytest.raises(TypeError, match="ParallelStyle"):
        check_plan(plain_block(), {"attn.wq": ColwiseParallel})


def test_heads_not_divisible_by_the_degree():
    with pytest.raises(ValueError, match=r"attn.n_heads=6 is not divisible by tp degree 4; pick a degree in \{1, 2, 3, 6\}"):
        check_plan(plain_block(d_model=24, n_heads=6, d_ff=48), PLAN, degree=4)
    with pytest.raises(ValueError, match=r"attn.n_kv_heads=2 is not divisible by tp degree 4"):
        check_plan(plain_block(d_model=32, n_heads=8, d_ff=32, n_kv_heads=2), PLAN, degree=4)
    check_plan(plain_block(d_model=32, n_heads=8, d_ff=32, n_kv_heads=4), PLAN, degree=4)


def test_features_not_divisible_by_the_degree():
    with pytest.raises(ValueError, match=r"w1.out_features=10 is not divisible by tp degree 4"):
        check_plan(MLP(8, 10), {"w1": ColwiseParallel(), "w2": RowwiseParallel()}, degree=4)
    with pytest.raises(ValueError, match=r"w2.in_features=10 is not divisible by tp degree 4"):
        check_plan(MLP(8, 10), {"w2": RowwiseParallel()}, degree=4)


def test_good_plans_pass_and_wildcards_match_one_level():
    block = plain_block()
    assert check_plan(block, PLAN, degree=4) is PLAN
    for sp in (False, True):
        check_plan(Block(16, 4, 32), block_plan(sequence_parallel=sp), degree=4)
    check_plan(Block(16, 4, 32, gated=True), block_plan(gated=True), degree=4)
    stack = nn.Module()
    stack.layers = nn.ModuleList([GatedMLP(8, 16) for _ in range(2)])
    check_plan(stack, {"layers.*.w1": ColwiseParallel()}, degree=4)
    with pytest.raises(ValueError):
        check_plan(stack, {"layers.*.w9": ColwiseParallel()})


def test_interleave_qkv_gives_each_rank_its_own_q_k_v_rows():
    D, p = 8, 4
    w = torch_arange_rows(3 * D)
    out = interleave_qkv(w, p)
    block = out.chunk(p)[1].flatten().tolist()          # rank 1's rows
    assert block == [2, 3, 10, 11, 18, 19]              # q rows 2-3, k rows 10-11, v rows 18-19
    with pytest.raises(ValueError, match="not divisible"):
        interleave_qkv(torch_arange_rows(3 * 6), 4)


def torch_arange_rows(n):
    import torch

    return torch.arange(n, dtype=torch.float32).reshape(n, 1)


# ------------------------------------------------------------------ the drawings built on these groups
def test_mesh_map_shows_every_rank_in_its_colour_and_refuses_bad_input():
    from helpers.viz import count_rank_colors, mesh_map

    assert count_rank_colors(mesh_map((4,), ("tp",))) == {0, 1, 2, 3}
    fig = mesh_map((2, 2), ("tp", "dp"), hosts=TWO_NODES, devices=["cpu"] * 4)
    assert count_rank_colors(fig) == {0, 1, 2, 3}
    assert "cross hosts" in "".join(t.get_text() for t in fig.texts)
    with pytest.raises(ValueError, match="one entry per rank"):
        mesh_map((2, 2), ("dp", "tp"), hosts=["a"])
    with pytest.raises(ValueError, match="not a dim of this mesh"):
        mesh_map((2, 2), ("dp", "tp"), group_dim="pp")


def test_comm_chart_orders_modules_and_uses_no_rank_colour():
    from helpers.viz import comm_chart, count_rank_colors

    trace = {"Block": {"forward": {"all_reduce": 2}, "backward": {"all_reduce": 4}},
             "Block.ffn.w2": {"forward": {"all_reduce": 1}, "backward": {}},
             "Block.attn.q": {"forward": {}, "backward": {"all_reduce": 1}}}
    fig = comm_chart(trace, order=["", "attn.q", "ffn.w2"])
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels == ["Block (whole)", "attn.q", "ffn.w2"]
    assert count_rank_colors(fig) == set()
    with pytest.raises(ValueError, match="empty"):
        comm_chart({})
