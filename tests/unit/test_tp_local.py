"""Single-process tests of helpers.tp: degree 1 equals dense, and the refusals.

A gloo "world" of one rank (HashStore, no network) is enough for degree-1 layers; the
degree>1 refusals are checked through the helpers that the layers call before any
collective (check_divisible, shard_range).
"""

import re

import pytest
import torch
import torch.distributed as dist
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.testing import assert_close

from helpers import tp
from helpers.models import MLP


def _pair(dense, layer, shape):
    torch.manual_seed(1)
    x = torch.randn(*shape, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    y, y2 = dense(x), layer(x2)
    assert_close(y2, y)
    y.sum().backward()
    y2.sum().backward()
    assert_close(x2.grad, x.grad)


# ------------------------------------------------------------------ degree 1 == dense
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("gather_output", [True, False])
def test_column_degree1_equals_dense(world1, bias, gather_output):
    torch.manual_seed(0)
    dense = nn.Linear(8, 12, bias=bias)
    layer = tp.ColumnParallelLinear.from_linear(dense, gather_output=gather_output)
    assert (layer.tp_degree, layer.tp_rank) == (1, 0)
    assert_close(layer.weight, dense.weight)
    _pair(dense, layer, (3, 8))
    assert_close(layer.weight.grad, dense.weight.grad)
    if bias:
        assert_close(layer.bias.grad, dense.bias.grad)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("input_is_parallel", [True, False])
def test_row_degree1_equals_dense(world1, bias, input_is_parallel):
    torch.manual_seed(0)
    dense = nn.Linear(12, 8, bias=bias)
    layer = tp.RowParallelLinear.from_linear(dense, input_is_parallel=input_is_parallel)
    _pair(dense, layer, (2, 3, 12))
    assert_close(layer.weight.grad, dense.weight.grad)
    if bias:
        assert_close(layer.bias.grad, dense.bias.grad)


def test_mlp_degree1_equals_dense(world1):
    torch.manual_seed(0)
    dense = MLP(8, 32)
    mlp = tp.ParallelMLP.from_dense(dense.w1, dense.w2)
    _pair(dense, mlp, (4, 8))
    assert_close(mlp.w1.weight.grad, dense.w1.weight.grad)
    assert_close(mlp.w2.bias.grad, dense.w2.bias.grad)


def test_fresh_layers_have_shard_shapes(world1):
    col = tp.ColumnParallelLinear(8, 12, dtype=torch.float64)
    row = tp.RowParallelLinear(12, 8, bias=False)
    mlp = tp.ParallelMLP(8, 32)
    assert col.weight.shape == (12, 8) and col.bias.shape == (12,)
    assert col.weight.dtype == torch.float64
    assert row.weight.shape == (8, 12) and row.bias is None
    assert mlp(torch.randn(5, 8)).shape == (5, 8)


def test_primitives_are_identities_at_degree1(world1):
    x = torch.randn(2, 4, requires_grad=True)
    for fn in (tp.copy_to_tp_region, tp.reduce_from_tp_region,
               tp.gather_from_tp_region, tp.scatter_to_tp_region):
        assert fn(x) is x


def test_primitive_functions_at_world1(world1):
    """The autograd Functions themselves (what degree>1 uses) on a group of one."""
    x = torch.randn(2, 4, requires_grad=True)
    for F in (tp.CopyToModelParallelRegion, tp.ReduceFromModelParallelRegion,
              tp.GatherFromModelParallelRegion, tp.ScatterToModelParallelRegion):
        x.grad = None
        y = F.apply(x, None)
        assert_close(y, x)
        (y * 3).sum().backward()
        assert_close(x.grad, torch.full_like(x, 3.0))


# -------------------------------------------------------------------------- refusals
def test_uneven_split_message():
    with pytest.raises(ValueError) as e:
        tp.check_divisible("out_features", 10, 4)
    assert str(e.value) == ("out_features=10 is not divisible by tp degree 4; "
                            "pick a degree in {1, 2, 5, 10} or pad out_features to 12")


def test_check_divisible_returns_shard_size():
    assert tp.check_divisible("in_features", 12, 4) == 3


@pytest.mark.parametrize("size, degree, match", [
    (0, 2, "out_features=0 must be a positive integer"),
    (8, 0, "tp degree must be a positive integer, got 0"),
])
def test_check_divisible_rejects_nonpositive(size, degree, match):
    with pytest.raises(ValueError, match=re.escape(match)):
        tp.check_divisible("out_features", size, degree)


def test_shard_range():
    assert [tp.shard_range(12, 4, r) for r in range(4)] == [(0, 3), (3, 6), (6, 9), (9, 12)]
    with pytest.raises(ValueError, match="rank 4 is outside 0..3"):
        tp.shard_range(12, 4, 4)
    with pytest.raises(ValueError, match="in_features=10 is not divisible by tp degree 3"):
        tp.shard_range(10, 3, 0, name="in_features")


@pytest.mark.parametrize("cls", [tp.ColumnParallelLinear, tp.RowParallelLinear])
@pytest.mark.parametrize("in_f, out_f, bad", [(0, 4, "in_features"), (4, -2, "out_features")])
def test_nonpositive_features(world1, cls, in_f, out_f, bad):
    with pytest.raises(ValueError, match=f"{bad} must be a positive integer"):
        cls(in_f, out_f)


@pytest.mark.parametrize("make", [
    lambda m: tp.ColumnParallelLinear.from_linear(m),
    lambda m: tp.RowParallelLinear.from_linear(m),
    lambda m: tp.ParallelMLP.from_dense(m, nn.Linear(4, 4)),
])
def test_from_linear_rejects_non_linear(world1, make):
    with pytest.raises(TypeError, match="needs an nn.Linear, got Conv1d"):
        make(nn.Conv1d(4, 4, 1))


def test_from_dense_mismatched_hidden(world1):
    with pytest.raises(ValueError, match="w1.out_features=16 must equal w2.in_features=12"):
        tp.ParallelMLP.from_dense(nn.Linear(8, 16), nn.Linear(12, 8))


def test_wrong_last_dim_column(world1):
    layer = tp.ColumnParallelLinear(8, 4)
    with pytest.raises(ValueError, match=re.escape(
            "input has last dim 6 but ColumnParallelLinear expects in_features=8")):
        layer(torch.randn(2, 6))


def test_wrong_last_dim_row(world1):
    with pytest.raises(ValueError, match=re.escape(
            "input has last dim 5 but RowParallelLinear (input_is_parallel=True) expects "
            "in_features/p = 12/1 = 12")):
        tp.RowParallelLinear(12, 4)(torch.randn(2, 5))
    with pytest.raises(ValueError, match="RowParallelLinear expects in_features=12"):
        tp.RowParallelLinear(12, 4, input_is_parallel=False)(torch.randn(2, 5))


def test_scalar_and_non_tensor_input(world1):
    layer = tp.ColumnParallelLinear(8, 4)
    with pytest.raises(ValueError, match="input has last dim"):
        layer(torch.tensor(1.0))
    with pytest.raises(TypeError, match="input must be a torch.Tensor, got list"):
        layer([1.0] * 8)


def test_wrong_dtype(world1):
    layer = tp.ColumnParallelLinear(8, 4)
    with pytest.raises(ValueError, match=re.escape(
            "input has dtype torch.float64 but the weight shard has torch.float32")):
        layer(torch.randn(2, 8, dtype=torch.float64))


def test_wrong_device(world1):
    layer = tp.RowParallelLinear(8, 4, device="meta")
    with pytest.raises(ValueError, match=re.escape(
            "input is on cpu but the weight shard is on meta; move it with x.to('meta')")):
        layer(torch.randn(2, 8))


def test_group_not_member(world1):
    with pytest.raises(ValueError, match="not a member of the given group"):
        tp.ColumnParallelLinear(8, 4, group=dist.GroupMember.NON_GROUP_MEMBER)


def test_not_initialized_message(monkeypatch):
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    with pytest.raises(RuntimeError, match="torch.distributed is not initialized"):
        tp.copy_to_tp_region(torch.ones(2))


# --------------------------------------------------------------------------- property
_SET = re.compile(r"pick a degree in \{([0-9, ]+)\} or pad (\w+) to (\d+)$")


@settings(max_examples=300, deadline=None)
@given(size=st.integers(1, 4096), degree=st.integers(1, 64),
       name=st.sampled_from(["in_features", "out_features", "d_hidden"]))
def test_check_divisible_property(size, degree, name):
    if size % degree == 0:
        assert tp.check_divisible(name, size, degree) * degree == size
        return
    with pytest.raises(ValueError) as e:
        tp.check_divisible(name, size, degree)
    msg = str(e.value)
    assert msg.startswith(f"{name}={size} is not divisible by tp degree {degree};")
    m = _SET.search(msg)
    assert m, msg
    suggested = [int(d) for d in m.group(1).split(", ")]
    assert all(size % d == 0 for d in suggested)
    assert suggested == [d for d in range(1, size + 1) if size % d == 0]  # all of them
    padded = int(m.group(3))
    assert m.group(2) == name and padded % degree == 0 and size < padded < size + degree


@settings(max_examples=100, deadline=None)
@given(shape=st.lists(st.integers(min_value=-2, max_value=9), min_size=0, max_size=3),
       world=st.integers(min_value=1, max_value=16))
def test_mesh_shape_must_match_world_size(shape, world):
    import math

    if shape and all(d > 0 for d in shape) and math.prod(shape) == world:
        assert tp.check_mesh_shape(shape, world) == tuple(shape)
    else:
        with pytest.raises(ValueError, match=r"mesh shape") as e:
            tp.check_mesh_shape(shape, world)
        if shape and all(d > 0 for d in shape):
            assert f"world_size is {world}" in str(e.value)


def test_mesh_shape_refuses_non_numbers():
    with pytest.raises(TypeError, match="tuple of ints"):
        tp.check_mesh_shape("2x2", 4)
