"""Notebook 04's 1D vs 2D bytes per MLP block and notebook 05's loss-parallel bytes, held to
cases computed by hand (fp32, bytes sent per rank; the byte convention of
helpers.costmodel.collectives). The notebooks check the same formulas against CommRecorder."""

from __future__ import annotations

import math

import pytest

from helpers.costmodel import LLAMA2_70B, loss_parallel_bytes, mlp_bytes_1d, mlp_bytes_2d, mlp_crossover_tokens

M, D, H = 1024, 64, 256            # notebook 04's "many tokens" MLP block


def test_1d_mlp_is_one_all_reduce_each_way():
    # 2(p-1)/p · M·D · 4 bytes = 1.5 · 1024 · 64 · 4
    b = mlp_bytes_1d(M, D, H, 4)
    assert b["forward"] == {"sent": 393216.0, "received": 393216.0, "calls": 1}
    assert b["backward"] == b["forward"]
    assert mlp_bytes_1d(M, D, H, 4, n_in=2) == b            # a gated MLP: still one each way
    assert mlp_bytes_1d(M, D, H, 16)["forward"]["sent"] == 2 * 15 / 16 * M * D * 4 == 491520.0


def test_2d_mlp_summa_both_matmuls_by_hand():
    # s = 2: (s-1)/p · (M·D + M·H + 2·D·H) · 4 = (65536 + 262144 + 32768) bytes
    b = mlp_bytes_2d(M, D, H, 4)
    assert b["forward"] == {"sent": 360448.0, "received": 360448.0, "calls": 8}   # 2 products × 2s
    assert b["backward"] == {"sent": 720896.0, "received": 720896.0, "calls": 16}
    # biases: all-reduce of b1 (H/2) and b2 (D/2) down a grid column of 2: 2·½·(128 + 32)·4
    bb = mlp_bytes_2d(M, D, H, 4, bias=True)["backward"]
    assert (bb["sent"], bb["calls"]) == (720896.0 + 640.0, 18)
    assert mlp_bytes_2d(M, D, H, 16)["forward"]["sent"] == 3 / 16 * 1441792 == 270336.0
    assert mlp_bytes_2d(M, D, H, 64)["forward"]["sent"] == 7 / 64 * 1441792 == 157696.0
    with pytest.raises(ValueError, match="perfect square"):
        mlp_bytes_2d(M, D, H, 8)


def test_crossover_by_hand_and_consistent():
    assert mlp_crossover_tokens(D, H, 4) == 8 * D == 512.0            # M > 2DH / (5D - H)
    assert mlp_crossover_tokens(D, H, 4, training=True) == math.inf   # 3·5D < 3(D + H): never
    assert mlp_crossover_tokens(D, H, 16) == pytest.approx(32768 / 320)
    assert mlp_crossover_tokens(D, H, 16, training=True) == pytest.approx(98304 / 320)
    assert mlp_crossover_tokens(D, H, 64) == pytest.approx(32768 / 832)
    for p in (16, 64):                              # at the crossover the two send the same
        for training in (False, True):
            phases = ("forward", "backward") if training else ("forward",)

            def sent(fn, m, p=p, phases=phases):     # bytes are linear in M: interpolate
                return sum(fn(m, D, H, p)[ph]["sent"] for ph in phases)
            m = mlp_crossover_tokens(D, H, p, training=training)
            one = sent(mlp_bytes_1d, 1) * m
            two = sent(mlp_bytes_2d, 1) + (m - 1) * (sent(mlp_bytes_2d, 2) - sent(mlp_bytes_2d, 1))
            assert one == pytest.approx(two)


def test_crossover_llama2_70b_gated():
    d, h = LLAMA2_70B.d_model, LLAMA2_70B.d_ff                       # 8192, 28672
    assert mlp_crossover_tokens(d, h, 4, n_in=2) == 3 * d * h / (5 * d - h) == 57344.0
    assert mlp_crossover_tokens(d, h, 16, n_in=2) == pytest.approx(3 * d * h / (9 * d - h))
    assert mlp_crossover_tokens(d, h, 4, training=True, n_in=2) == math.inf
    assert mlp_crossover_tokens(d, h, 64, training=True, n_in=2) == pytest.approx(9 * d * h / (33 * d - 3 * h))


def test_scaling_per_rank_and_in_total():
    ps = (4, 16, 64, 256, 1024)
    one = [mlp_bytes_1d(M, D, H, p)["forward"]["sent"] for p in ps]
    two = [mlp_bytes_2d(M, D, H, p)["forward"]["sent"] for p in ps]
    assert all(abs(x / (2 * M * D * 4) - 1) < 0.5 for x in one)              # per rank: O(1)
    sqrt_scaled = [x * math.sqrt(p) for x, p in zip(two, ps)]                # per rank: O(1/√p)
    assert max(sqrt_scaled) / min(sqrt_scaled) < 2
    total_1d = [x * p / p for x, p in zip(one, ps)]                          # total/p: O(1) → O(p)
    total_2d = [x * p / math.sqrt(p) for x, p in zip(two, ps)]               # total/√p: O(1) → O(√p)
    assert max(total_1d) / min(total_1d) < 2 and max(total_2d) / min(total_2d) < 2


def test_loss_parallel_bytes_by_hand():
    # notebook 05: B=8, T=16, V=40, p=4, fp32
    b = loss_parallel_bytes(8, 16, 40, 4)
    # three all-reduces of B·T·4 = 512 bytes: 3 · 2·¾·512
    assert b["loss_parallel"]["forward"] == {"sent": 2304.0, "received": 2304.0, "calls": 3}
    assert b["loss_parallel"]["backward"] == {"sent": 0.0, "received": 0.0, "calls": 0}
    # one all-gather of the (B, T, V) logits: ¾ · 8·16·40·4
    assert b["gathered"]["forward"] == {"sent": 15360.0, "received": 15360.0, "calls": 1}
    assert b["gathered"]["backward"]["sent"] == 0.0
    # GPT-2's vocabulary: the gather grows with V, the loss-parallel all-reduces do not
    big = loss_parallel_bytes(8, 1024, 50257, 4)
    assert big["loss_parallel"]["forward"]["sent"] == 3 * 1.5 * 8 * 1024 * 4
    assert big["gathered"]["forward"]["sent"] == 0.75 * 8 * 1024 * 50257 * 4
