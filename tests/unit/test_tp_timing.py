"""The timing pieces of notebook 06 in one process (a gloo world of one rank): the timed block
equals the dense block, the timer splits a step, and a single rank is refused before any collective.
Multi-rank timing runs in tests/notebooks/test_notebook_06.py on the real cluster."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from helpers.measure.timer import StepTimer, matmul_tflops, timing_degrees
from helpers.models import Block
from helpers.models.parallel_block import ParallelBlock


def test_timing_needs_two_ranks_and_says_so():
    with pytest.raises(ValueError, match="timing TP needs at least 2 ranks, and this cluster has 1"):
        timing_degrees(1)
    assert timing_degrees(4) == [1, 2, 4] and timing_degrees(8, limit=4) == [1, 2, 4]


def test_timed_block_matches_dense_and_is_split(world1):
    torch.manual_seed(0)
    dense = Block(32, 4, 64, causal=True)
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
    assert_close(block.attn.wq.weight.grad, dense.attn.wq.weight.grad)
    assert_close(block.mlp.w1.bias.grad, dense.mlp.w1.bias.grad)
    s = timer.split()
    assert s["communication"] == 0 and s["matmul"] > 0
    assert s["step"] == pytest.approx(s["matmul"] + s["other"] + s["communication"])
    kinds = [(k, n) for k, n, _ in s["spans"]]
    # six linear layers, each with a forward and a backward span
    assert len(kinds) == 12 and {k for k, _ in kinds} == {"matmul"}
    assert ("matmul", "w2 backward") in kinds


def test_block_refuses_uneven_heads_before_any_collective(world1):
    with pytest.raises(ValueError, match="d_model=30 is not divisible by n_heads=4"):
        Block(30, 4, 64)
    with pytest.raises(TypeError, match="ParallelBlock.from_dense needs a Block"):
        ParallelBlock.from_dense(Block(32, 4, 64, gated=True))


def test_timer_needs_a_step_and_helpers_give_positive_rates():
    with pytest.raises(RuntimeError, match="no step was timed"):
        StepTimer("cpu").split()
    assert matmul_tflops(8, 16, 16, repeats=1, min_time=0.001) > 0
