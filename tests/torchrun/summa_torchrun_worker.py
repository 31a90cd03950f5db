"""SUMMA (helpers.tp.summa) against dense nn.Linear on 4 real processes (torchrun, gloo).

    python -m torch.distributed.run --standalone --nproc_per_node=4 tests/torchrun/summa_torchrun_worker.py

Every rank builds the same dense case from a seed, runs its block through SummaLinear forward
and backward on the (2, 2) grid, and compares its blocks with the dense answers' blocks; then
the byte counts of 1D column, 1D row and 2D SUMMA against the formulas, then the refusals
(each raised on every rank before any collective). Exit code 0 means every check passed.
"""

import os
import sys

import torch
import torch.distributed as dist
from torch.testing import assert_close

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from summa_check import default_grid, dense_case, summa_case  # noqa: E402

from helpers.costmodel.collectives import COMM_FORMULAS  # noqa: E402
from helpers.measure.comm import CommRecorder  # noqa: E402
from helpers.tp import summa  # noqa: E402
from helpers.tp.ops import all_gather, all_reduce  # noqa: E402

CASES = [(4, 6, 8, True), (2, 2, 2, False), (6, 4, 10, True), (8, 8, 8, True)]


def check_against_dense(M, K, N, bias, seed=0):
    grid = default_grid()
    got, want = summa_case(M, K, N, bias, seed, grid), dense_case(M, K, N, bias, seed)
    g, c = grid.shape, grid.coords
    for name in ("Y", "dX", "dW"):
        assert_close(got[name], summa.cut_block(want[name], g, c), msg=lambda m: f"{name}: {m}")
    if bias:
        lo, hi = c[1] * N // 2, (c[1] + 1) * N // 2
        assert_close(got["db"], want["db"][lo:hi])
    formula = COMM_FORMULAS["2D SUMMA"](M, K, N, 4)
    fwd = got["forward"]
    if (fwd["sent"], fwd["received"], fwd["calls"]) != (formula["sent"], formula["received"],
                                                       formula["calls"]):
        raise AssertionError(f"SUMMA bytes {fwd} != formula {formula}")


def check_1d_bytes(M=4, K=8, N=12):
    p, r = dist.get_world_size(), dist.get_rank()
    torch.manual_seed(0)
    X, W = torch.randn(M, K), torch.randn(K, N)
    col, row = CommRecorder(), CommRecorder()
    n = N // p
    Y = all_gather(X @ W[:, r * n:(r + 1) * n], counter=col)     # 1D column
    assert_close(Y, X @ W)
    k = K // p
    Y = all_reduce(X[:, r * k:(r + 1) * k] @ W[r * k:(r + 1) * k], counter=row)   # 1D row
    assert_close(Y, X @ W)
    for name, c in (("1D column", col), ("1D row", row)):
        f = COMM_FORMULAS[name](M, K, N, p)
        if (c.sent, c.received, c.calls) != (f["sent"], f["received"], f["calls"]):
            raise AssertionError(f"{name}: measured {c.summary()} != formula {f}")


def expect_error(fn, *needles):
    try:
        fn()
    except (ValueError, TypeError) as e:
        for n in needles:
            if n not in str(e):
                raise AssertionError(f"message {str(e)!r} lacks {n!r}") from e
        return
    raise AssertionError(f"{fn} did not refuse")


def check_refusals():
    import torch.nn as nn

    grid = default_grid()
    expect_error(lambda: summa.make_grid((2, 4)), "needs 8 ranks", "world_size is 4")
    expect_error(lambda: summa.make_grid((1, 4)), "square grid", "(2, 2)")
    expect_error(lambda: summa.SummaLinear.from_linear(nn.Linear(5, 4), grid), "in_features K=5")
    layer = summa.SummaLinear.from_linear(nn.Linear(4, 4), grid)
    expect_error(lambda: summa.block_of(torch.randn(3, 4), grid), "3 rows")
    expect_error(lambda: layer(torch.randn(2, 1)), "1 columns", "K/s = 4/2 = 2")
    # a block cut for another grid position (as if from a transposed grid)
    i, j = grid.coords
    other = summa.SummaGrid(grid.shape, (j, i) if i != j else (1 - i, j), grid.ranks)
    blk = summa.block_of(torch.randn(4, 4), other)
    expect_error(lambda: layer(blk), "was cut for grid", "block_of(X, grid)")


def checks(rank, world):
    for case in CASES:
        check_against_dense(*case)
    if rank == 0:
        print("SUMMA vs dense (Y, dX, dW, db) and bytes vs formula: ok", flush=True)
    check_1d_bytes()
    check_refusals()
    if rank == 0:
        print("1D bytes vs formula, refusals: ok", flush=True)


if __name__ == "__main__":
    from worker import run_checks  # beside this script; torchrun puts its folder on sys.path

    run_checks(checks, "summa")
