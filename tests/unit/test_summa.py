"""helpers.tp.summa (2D tensor parallelism, SUMMA) and its byte formulas
(helpers.costmodel.collectives), in one process: the byte formulas, grid-shape refusals, block
cutting and reassembly (hypothesis), the drawings.

On the session's real 4-engine cluster: tests/cluster/test_summa_cluster.py; under real torchrun:
tests/torchrun/test_summa_torchrun.py.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers.costmodel import collectives as cc
from helpers.tp import summa

GRID = (2, 2)


# ------------------------------------------------------------------ formulas (pure)
def test_formulas_by_hand():
    M = K = N = 8
    # 1D column: (p-1) · M·N/p · 4 bytes = 3 · 16 · 4
    assert cc.bytes_1d_column(M, K, N, 4) == {"sent": 192, "received": 192, "calls": 1}
    # 1D row: 2(p-1)/p · M·N · 4 = 1.5 · 64 · 4
    assert cc.bytes_1d_row(M, K, N, 4) == {"sent": 384, "received": 384, "calls": 1}
    # SUMMA 2×2: (s-1) · (M·K + K·N)/p · 4 = 1 · 32 · 4, in 2s = 4 broadcasts
    assert cc.bytes_summa(M, K, N, 4) == {"sent": 128, "received": 128, "calls": 4}
    for f in cc.COMM_FORMULAS.values():
        assert f(M, K, N, 1)["sent"] == 0


@given(st.integers(1, 64), st.integers(1, 64), st.integers(1, 64), st.sampled_from([4, 16, 64, 256]))
@settings(max_examples=50, deadline=None)
def test_formulas_scale(M, K, N, p):
    s = int(p ** 0.5)
    assert cc.bytes_summa(M, K, N, p)["sent"] == pytest.approx((s - 1) * (M * K + K * N) * 4 / p)
    # 1D per-rank bytes do not shrink with p; 2D's shrink like (√p-1)/p
    assert cc.bytes_1d_column(M, K, N, p)["sent"] >= cc.bytes_1d_column(M, K, N, 4)["sent"]
    assert cc.bytes_1d_row(M, K, N, p)["sent"] >= cc.bytes_1d_row(M, K, N, 4)["sent"]
    assert cc.bytes_summa(M, K, N, p)["sent"] == pytest.approx(
        cc.bytes_summa(M, K, N, 4)["sent"] * (s - 1) * 4 / p)
    assert cc.bytes_summa(M, K, N, p)["calls"] == 2 * s


def test_formula_refusals():
    with pytest.raises(ValueError, match=r"p=8 is not a perfect square; pick p = 4 \(2×2\) or 9"):
        cc.bytes_summa(8, 8, 8, 8)
    with pytest.raises(ValueError, match="M must be a positive integer"):
        cc.bytes_1d_row(0, 8, 8, 4)


def test_collective_models():
    def both(kind, n, root=False):
        return cc.bytes_sent(kind, n, 4, root=root), cc.bytes_received(kind, n, 4, root=root)
    assert both("broadcast", 10, True) == (30, 0) and both("broadcast", 10) == (0, 10)
    assert both("reduce", 10, True) == (0, 30) and both("reduce", 10) == (10, 0)
    assert both("all_gather", 40) == (30, 30)      # n = the gathered tensor: 4 shards of 10 bytes
    assert both("all_reduce", 10) == (15, 15)


# ------------------------------------------------------------------ grid and blocks (pure)
@pytest.mark.parametrize("shape, world, needle", [
    ((2, 4), 4, "mesh shape (2, 4) needs 8 ranks but world_size is 4"),
    ((1, 4), 4, "square grid s × s, got (1, 4); with 4 ranks use (2, 2)"),
    ((2, 3), 6, "6 is not a perfect square"),
    ((2, 2, 1), 4, "needs a 2D grid"),
])
def test_grid_refusals(shape, world, needle):
    with pytest.raises(ValueError) as e:
        summa.check_grid_shape(shape, world)
    assert needle in str(e.value)


@given(st.integers(1, 4), st.integers(1, 4), st.integers(1, 4), st.integers(1, 4))
@settings(max_examples=30, deadline=None)
def test_cut_and_assemble(p, q, r, c):
    t = torch.arange(p * r * q * c, dtype=torch.float32).reshape(p * r, q * c)
    blocks = summa.cut_blocks(t, (p, q))
    assert len(blocks) == p * q and all(b.shape == (r, c) for b in blocks)
    assert blocks[q * (p - 1)][0, 0] == t[(p - 1) * r, 0]   # rank order is row-major
    assert torch.equal(summa.assemble_blocks(blocks, (p, q)), t)


def _grid(coords=(0, 1)):
    return summa.SummaGrid((2, 2), coords, ((0, 1), (2, 3)))  # no groups: enough for checks


def test_block_refusals():
    g = _grid()
    with pytest.raises(ValueError, match="X has 5 cols, not divisible by the grid's 2 columns"):
        summa.block_of(torch.zeros(4, 5), g)
    with pytest.raises(ValueError, match="must be 2-D"):
        summa.block_of(torch.zeros(4), g)
    with pytest.raises(ValueError, match="a 2×2 grid has 4 blocks, got 3"):
        summa.assemble_blocks([torch.zeros(1, 1)] * 3, (2, 2))
    blk = summa.block_of(torch.zeros(4, 4), _grid((1, 0)))
    layer = summa.SummaLinear(torch.zeros(2, 2), None, g, 4, 4)
    with pytest.raises(ValueError, match=r"cut for grid \(2, 2\) .* at position \(1, 0\), but this "
                                         r"rank is at \(0, 1\)"):
        layer(blk)
    with pytest.raises(ValueError, match="K/s = 4/2 = 2"):
        layer(torch.zeros(2, 4))


def test_layer_needs_divisible_features():
    with pytest.raises(ValueError, match="in_features K=6 is not divisible by tp degree 4"):
        summa.SummaLinear.from_linear(torch.nn.Linear(6, 8), summa.SummaGrid((4, 4), (0, 0), ()))


# ------------------------------------------------------------------ drawings (pure)
def _fake_traces(X, W):
    traces = []
    for r in range(4):
        i, j = divmod(r, 2)
        acc, steps = torch.zeros(X.shape[0] // 2, W.shape[1] // 2), []
        for k in range(2):
            xk, wk = summa.cut_block(X, GRID, (i, k)), summa.cut_block(W, GRID, (k, j))
            acc = acc + xk @ wk
            steps.append({"k": k, "x_from": (i, k), "w_from": (k, j), "x": xk, "w": wk,
                          "acc": acc, "coords": (i, j)})
        traces.append(steps)
    return traces


def test_grid_drawings_use_rank_colours():
    from helpers.viz import (
        count_rank_colors,
        grid_blocks_figure,
        grid_layout_explorer,
        grid_layout_figure,
        summa_step_figure,
        summa_stepper,
    )

    X, W = torch.randn(4, 4), torch.randn(4, 6)
    assert count_rank_colors(grid_blocks_figure(summa.cut_blocks(W, GRID), "W")) == {0, 1, 2, 3}
    assert count_rank_colors(summa_step_figure(_fake_traces(X, W), 1, X, W)) == {0, 1, 2, 3}
    for mode in ("1D column", "1D row", "2D SUMMA"):
        assert count_rank_colors(grid_layout_figure(4, 16, 16, 16, mode)) == {0, 1, 2, 3}
    assert count_rank_colors(grid_layout_figure(8, 16, 16, 16, "2D SUMMA")) == set()  # refused
    ex = grid_layout_explorer()
    n = ex.redraw_count
    ex.mode.value = "1D row"
    ex.p.value = 2
    assert ex.redraw_count == n + 2 and ex.image.value
    st = summa_stepper(_fake_traces(X, W), X, W)
    st.step.value = 2
    assert st.redraw_count == 2 and st.image.value
