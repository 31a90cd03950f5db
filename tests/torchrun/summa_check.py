"""One SUMMA case run the same way on every rank: for the tests, on the cluster and under torchrun.

``summa_case`` builds the dense layer, the input and the upstream gradient from a seed (the
same numbers on every rank), cuts them for this rank's grid position, runs
:class:`~helpers.tp.summa.SummaLinear` forward and backward with a byte counter, and returns
this rank's blocks as CPU tensors. ``dense_case`` computes the full dense answers from the
same seed, so a caller (the notebook kernel, a test, rank 0 of a batch job) can compare.
Torch only; tests/cluster/test_summa_cluster.py loads it on the engines by path
(``helpers.engine.namespace.load_module``) and calls it by reference (``cluster.apply(summa_case, ...)``).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from helpers.measure.comm import CommRecorder
from helpers.tp.summa import SummaLinear, block_of, cut_block, make_grid

__all__ = ["summa_case", "dense_case", "default_grid"]

_GRIDS: dict = {}  # this process's grids by shape: a mesh is made once (it creates groups)


def default_grid(shape=(2, 2)):
    """The grid of ``shape`` for this process, made on first use (collective then)."""
    shape = tuple(shape)
    if shape not in _GRIDS:
        _GRIDS[shape] = make_grid(shape)
    return _GRIDS[shape]


def _inputs(M, K, N, bias, seed):
    torch.manual_seed(seed)
    dense = nn.Linear(K, N, bias=bias)
    X = torch.randn(M, K)                        # X: (M, K)
    dY = torch.randn(M, N)                       # upstream gradient: (M, N)
    return dense, X, dY


def dense_case(M: int, K: int, N: int, bias: bool = True, seed: int = 0) -> dict:
    """Full dense Y, dX, dW (chapter orientation, (K, N)) and db for the seeded case."""
    dense, X, dY = _inputs(M, K, N, bias, seed)
    X = X.requires_grad_()
    Y = dense(X)
    Y.backward(dY)
    out = {"Y": Y.detach(), "dX": X.grad, "dW": dense.weight.grad.T.contiguous()}
    if bias:
        out["db"] = dense.bias.grad
    return out


def summa_case(M: int, K: int, N: int, bias: bool = True, seed: int = 0, grid=None) -> dict:
    """This rank's SUMMA blocks (CPU) for the seeded case, and its byte counts by phase."""
    grid = grid if grid is not None else default_grid()
    dense, X, dY = _inputs(M, K, N, bias, seed)
    device = torch.device(grid.mesh.device_type) if grid.mesh is not None else torch.device("cpu")
    counter = CommRecorder()
    layer = SummaLinear.from_linear(dense.to(device), grid, counter=counter)
    x_blk = block_of(X.to(device), grid).requires_grad_()
    y_blk = layer(x_blk)                                           # Y_ij: (M/s, N/s)
    fwd = counter.summary("forward")
    y_blk.backward(cut_block(dY.to(device), grid.shape, grid.coords, "dY"))
    out = {"coords": grid.coords, "Y": y_blk.detach().cpu(), "dX": x_blk.grad.cpu(),
           "dW": layer.weight.grad.cpu(), "forward": fwd, "backward": counter.summary("backward")}
    if bias:
        out["db"] = layer.bias.grad.cpu()
    return out
