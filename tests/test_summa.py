"""helpers.tp.summa (2D tensor parallelism, SUMMA), its byte formulas (helpers.costmodel.collectives)
and the recorder that counts them (helpers.measure.comm).

* pure: the byte formulas, grid-shape refusals, block cutting and reassembly (hypothesis);
* on the session's real 4-engine gloo cluster: SUMMA forward and backward against dense on
  hypothesis-chosen shapes, engine code shipped by reference (``cluster.apply(summa_case)``),
  compared in this process the way the notebook does; measured bytes == formula;
* under real torchrun (tests/summa_torchrun_worker.py): the same checks, the 1D byte counts and
  the refusals raised on every rank before any collective.
"""

from __future__ import annotations

import os
import site
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from summa_check import dense_case, summa_case

from helpers.costmodel import collectives as cc
from helpers.reference import compare
from helpers.tp import summa

REPO = Path(__file__).resolve().parents[1]
WORKER = REPO / "tests" / "summa_torchrun_worker.py"
GRID = (2, 2)

HYPO = settings(max_examples=8, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


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


# ------------------------------------------------------------------ on the cluster
def _compare_case(results, M, K, N, bias, seed):
    want = dense_case(M, K, N, bias, seed)
    coords = [r["coords"] for r in results]
    assert coords == [(0, 0), (0, 1), (1, 0), (1, 1)], "ranks are not laid out row-major"
    for name in ("Y", "dX", "dW"):
        full = summa.assemble_blocks([r[name] for r in results], GRID)
        compare(name, [full], want[name], show=False)
    if bias:
        # b_j lives on both ranks of grid column j: (0, j) and (1, j) must agree with dense
        for r in results:
            j = r["coords"][1]
            compare("db_j", [r["db"]], want["db"][j * N // 2:(j + 1) * N // 2], show=False)


@pytest.mark.timeout(240)
@HYPO
@given(M=st.integers(1, 4), K=st.integers(1, 4), N=st.integers(1, 4), bias=st.booleans(),
       seed=st.integers(0, 1000))
def test_summa_matches_dense_on_cluster(cluster, M, K, N, bias, seed):
    M, K, N = 2 * M, 2 * K, 2 * N  # divisible by the grid side
    cluster.apply(site.addsitedir, str(REPO / "tests"))   # the engines import summa_check
    results = cluster.apply(summa_case, M, K, N, bias, seed)
    _compare_case(results, M, K, N, bias, seed)
    formula = cc.bytes_summa(M, K, N, 4)
    for r in results:
        assert r["forward"]["sent"] == formula["sent"]
        assert r["forward"]["received"] == formula["received"]
        assert r["forward"]["ops"] == {"broadcast": 4}
        want_bwd = {"broadcast": 4, "reduce": 4, **({"all_reduce": 1} if bias else {})}
        assert r["backward"]["ops"] == want_bwd


# ------------------------------------------------------------------ under torchrun
@pytest.mark.timeout(150)
def test_summa_under_torchrun():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4",
           str(WORKER)]
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"torchrun worker hung for 120 s\nstdout:\n{e.stdout}\nstderr:\n{e.stderr}")
    assert proc.returncode == 0, (f"worker exited with {proc.returncode}\nstdout:\n{proc.stdout}\n"
                                  f"stderr:\n{proc.stderr[-6000:]}")
    assert "all summa checks passed" in proc.stdout


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
