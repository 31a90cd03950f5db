"""The timing pieces of notebook 06 in one process (a gloo world of one rank): the timed block
equals the dense block, the timer splits a step, and a single rank is refused before any collective.
Multi-rank timing runs in tests/test_notebook_06.py on the real cluster."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from torch.testing import assert_close

from helpers.costmodel.dims import ModelDims
from helpers.costmodel.flops import block_flops
from helpers.measure.timer import StepTimer, matmul_tflops, timing_degrees
from helpers.tp.ops import copy_to_tp_region, reduce_from_tp_region
from helpers.tp.timed_block import DenseBlock, ParallelBlock


@pytest.fixture(scope="module")
def world1():
    if dist.is_initialized():
        pytest.skip("a process group already exists in this process")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield None
    dist.destroy_process_group()


def test_timing_needs_two_ranks_and_says_so():
    with pytest.raises(ValueError, match="timing TP needs at least 2 ranks, and this cluster has 1"):
        timing_degrees(1)
    assert timing_degrees(4) == [1, 2, 4] and timing_degrees(8, limit=4) == [1, 2, 4]


def test_timed_block_matches_dense_and_is_split(world1):
    torch.manual_seed(0)
    dense = DenseBlock(32, 4, 64)
    x = torch.randn(2, 8, 32)
    block = ParallelBlock.from_dense(dense)                 # degree 1: no collective at all
    timer = StepTimer("cpu")
    xd, xt = x.clone().requires_grad_(), x.clone().requires_grad_()
    yd = dense(xd)
    yd.pow(2).sum().backward()
    with timer.step():
        yt = block(xt, timer=timer)
        yt.pow(2).sum().backward()
    assert_close(yt, yd)
    assert_close(xt.grad, xd.grad)
    assert_close(block.q.weight.grad, dense.q.weight.grad)
    assert_close(block.mlp.fc1.bias.grad, dense.mlp.fc1.bias.grad)
    s = timer.split()
    assert s["communication"] == 0 and s["matmul"] > 0
    assert s["step"] == pytest.approx(s["matmul"] + s["other"] + s["communication"])
    kinds = [(k, n) for k, n, _ in s["spans"]]
    # six linear layers, each with a forward and a backward span
    assert len(kinds) == 12 and {k for k, _ in kinds} == {"matmul"}
    assert ("matmul", "fc2 backward") in kinds


def test_block_refuses_uneven_heads_before_any_collective(world1):
    with pytest.raises(ValueError, match="d_model=30 is not divisible by n_heads=4"):
        DenseBlock(30, 4, 64)


def test_timer_needs_a_step_and_helpers_give_positive_rates():
    with pytest.raises(RuntimeError, match="no step was timed"):
        StepTimer("cpu").split()
    assert matmul_tflops(8, 16, 16, repeats=1, min_time=0.001) > 0
    # DenseBlock(d_model 4, d_ff 8): 3 · (2·2·(4·16 + 2·32) + 2·2·2·2·4) = 3 · 576
    assert block_flops(ModelDims("t", 4, 1, 1, 8, bias=False), tokens=2, seq_len=2) == 1728


def test_tp_ops_time_their_collective_when_given_a_timer(world1):
    # tp.ops' f and g, applied directly (a group of 1 would skip them): the collective runs in a span
    from helpers.tp.ops import CopyToModelParallelRegion, ReduceFromModelParallelRegion

    timer = StepTimer("cpu")
    x = torch.randn(2, 3, requires_grad=True)
    with timer.step():
        y = ReduceFromModelParallelRegion.apply(CopyToModelParallelRegion.apply(x, None, timer, "in"),
                                                None, timer, "out")
        y.sum().backward()
    spans = [(k, n) for k, n, _ in timer.split()["spans"]]
    assert spans == [("communication", "out (g, forward all-reduce)"),
                     ("communication", "in (f, backward all-reduce)")]
    assert_close(x.grad, torch.ones(2, 3))
    # the public functions take the timer keyword-only, and at degree 1 run no collective at all
    assert copy_to_tp_region(x, None, timer=timer, name="f") is x
    assert reduce_from_tp_region(x, timer=timer) is x
