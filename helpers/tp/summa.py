"""2D tensor parallelism: a linear layer on an s × s process grid, multiplied by SUMMA.

van de Geijn & Watts 1997, "SUMMA: Scalable Universal Matrix Multiplication Algorithm",
Concurrency: Practice and Experience 9(4), 255-274.

Orientation is the chapter's: Y = X·W + b with X (M, K), W (K, N), Y (M, N); an
``nn.Linear(K, N)`` stores ``weight`` = Wᵀ (N, K). On an s × s grid, the rank at grid
position (i, j) holds one block of each::

    X_ij = X[i·M/s : (i+1)·M/s,  j·K/s : (j+1)·K/s]     (M/s, K/s)
    W_ij = W[i·K/s : (i+1)·K/s,  j·N/s : (j+1)·N/s]     (K/s, N/s)
    Y_ij = Σ_k X_ik · W_kj                              (M/s, N/s)

SUMMA computes that sum in s steps. At step k, the owner of X_ik (grid column k) broadcasts
it along its grid row, the owner of W_kj (grid row k) broadcasts it along its grid column,
and every rank adds X_ik · W_kj to its Y_ij. The backward runs the same pattern with a
reduce instead of the product's broadcast (paper, Section 3: C = A·Bᵀ and C = Aᵀ·B).

Grid groups come from a 2D ``DeviceMesh`` with dims ("row", "col") = (i, j): the ranks of my
**grid row** i are the ranks whose *column index* varies, ``mesh.get_group("col")``; the ranks
of my **grid column** j are ``mesh.get_group("row")``. :class:`SummaGrid` names them
``row_group`` and ``col_group`` so no one has to think about it twice.

Every check (grid size, square grid, divisibility, a block from another grid) runs before any
collective, so no rank is left waiting for a peer that failed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn

from .checks import check_divisible, check_initialized, check_input, check_mesh_shape, degrees_text, shard_range
from .ops import all_reduce, broadcast, reduce

__all__ = ["SummaGrid", "BlockTag", "check_grid_shape", "make_grid", "cut_block", "cut_blocks", "assemble_blocks",
           "block_of", "row_broadcast", "col_broadcast", "summa_matmul", "summa_grad_x", "summa_grad_w",
           "SummaMatmul", "ColumnBlockBias", "SummaLinear", "summa_trace"]


# ------------------------------------------------------------------ the grid
def check_grid_shape(shape, world_size: int) -> tuple[int, int]:
    """Refuse a grid that is not s × s with s·s = world_size (pure; no collective).

    >>> check_grid_shape((1, 4), 4)
    Traceback (most recent call last):
    ValueError: SUMMA here needs a square grid s × s, got (1, 4); with 4 ranks use (2, 2), or 1D tensor parallelism over (4,)
    """
    dims = check_mesh_shape(shape, world_size)
    if len(dims) != 2:
        raise ValueError(f"SUMMA needs a 2D grid (rows, cols), got {dims}")
    if dims[0] != dims[1]:
        s = math.isqrt(world_size)
        fix = (f"use ({s}, {s})" if s * s == world_size else
               f"{world_size} is not a perfect square: use {s * s} or {(s + 1) ** 2} ranks")
        raise ValueError(f"SUMMA here needs a square grid s × s, got {dims}; with {world_size} "
                         f"ranks {fix}, or 1D tensor parallelism over ({world_size},)")
    return dims


@dataclass(frozen=True)
class SummaGrid:
    """This rank's place on an s × s grid, and the two groups SUMMA broadcasts in.

    ``ranks[i][j]`` is the global rank at grid position (i, j); ``coords`` = my (i, j).
    ``row_group``: the s ranks of my grid row (same i); ``col_group``: of my grid column.
    """

    shape: tuple[int, int]
    coords: tuple[int, int]
    ranks: tuple[tuple[int, ...], ...]
    row_group: Any = None
    col_group: Any = None
    mesh: Any = None

    @property
    def s(self) -> int:
        return self.shape[0]

    @property
    def i(self) -> int:
        return self.coords[0]

    @property
    def j(self) -> int:
        return self.coords[1]

    def rank_at(self, i: int, j: int) -> int:
        return self.ranks[i][j]

    def __repr__(self) -> str:
        return (f"SummaGrid({self.s}×{self.s}, rank {self.rank_at(*self.coords)} at "
                f"(i={self.i}, j={self.j}), ranks {[list(r) for r in self.ranks]})")


def make_grid(shape=(2, 2), device_type: str | None = None) -> SummaGrid:
    """Check ``shape`` against the world size, then build the (row, col) DeviceMesh.

    Collective (every rank calls it, in the same order): ``init_device_mesh`` creates one
    group per grid row and per grid column. The checks come first, so a wrong shape raises
    the same ``ValueError`` on every rank and nobody waits.
    """
    from torch.distributed.device_mesh import init_device_mesh

    check_initialized()
    dims = check_grid_shape(shape, dist.get_world_size())
    if device_type is None:
        device_type = "cuda" if dist.get_backend() == "nccl" else "cpu"
    mesh = init_device_mesh(device_type, dims, mesh_dim_names=("row", "col"))   # every rank is on it
    # the group along mesh dim 1 (j varies) is my grid ROW; along dim 0, my grid COLUMN
    return SummaGrid(dims, tuple(mesh.get_coordinate()), tuple(map(tuple, mesh.mesh.tolist())),
                     row_group=mesh.get_group(1), col_group=mesh.get_group(0), mesh=mesh)


# ------------------------------------------------------------------ blocks
@dataclass(frozen=True)
class BlockTag:
    """Where a block was cut: the grid's ranks, the position, and the full tensor's shape."""

    ranks: tuple[tuple[int, ...], ...]
    coords: tuple[int, int]
    full_shape: tuple[int, int]


def _check_2d(t, what):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 2:
        raise ValueError(f"{what} must be 2-D (rows, cols), got shape {tuple(t.shape)}; "
                         "flatten leading dims first: t.reshape(-1, t.shape[-1])")


def cut_block(t: torch.Tensor, grid_shape, coords, name: str = "tensor") -> torch.Tensor:
    """Block (i, j) of the 2-D tensor ``t`` on ``grid_shape`` (a contiguous copy)."""
    _check_2d(t, name)
    for size, n, what, side in zip(t.shape, grid_shape, ("rows", "cols"), ("rows", "columns")):
        if size % n:
            raise ValueError(f"{name} has {size} {what}, not divisible by the grid's {n} {side} (grid "
                             f"{tuple(grid_shape)}); pick a grid side in {degrees_text(size)} or pad {name}")
    (r0, r1), (c0, c1) = (shard_range(size, n, c, name=f"{name} {what}")
                          for size, n, c, what in zip(t.shape, grid_shape, coords, ("rows", "cols")))
    return t[r0:r1, c0:c1].contiguous().clone()


def cut_blocks(t: torch.Tensor, grid_shape, name: str = "tensor") -> list[torch.Tensor]:
    """Every block of ``t``, in rank order for a row-major grid: [(0,0), (0,1), ..., (1,0), ...]."""
    p, q = grid_shape
    return [cut_block(t, grid_shape, (i, j), name) for i in range(p) for j in range(q)]


def assemble_blocks(blocks, grid_shape) -> torch.Tensor:
    """Inverse of :func:`cut_blocks`: blocks in row-major rank order -> the full 2-D tensor."""
    p, q = (int(d) for d in grid_shape)
    blocks = [torch.as_tensor(b) for b in blocks]
    if len(blocks) != p * q:
        raise ValueError(f"a {p}×{q} grid has {p * q} blocks, got {len(blocks)}")
    return torch.cat([torch.cat(blocks[i * q:(i + 1) * q], dim=1) for i in range(p)], dim=0)


def block_of(t: torch.Tensor, grid: SummaGrid, name: str = "X") -> torch.Tensor:
    """This rank's block of the full 2-D ``t`` on ``grid``, tagged with where it was cut.

    A SUMMA layer refuses a tagged block cut for another grid or another position.
    """
    blk = cut_block(t, grid.shape, grid.coords, name)
    blk.summa_tag = BlockTag(grid.ranks, grid.coords, (int(t.shape[0]), int(t.shape[1])))
    return blk


def _check_block(x, grid: SummaGrid, cols: int, what: str) -> None:
    """A block's shape and tag must fit this grid; raised before any collective."""
    _check_2d(x, what)
    tag = getattr(x, "summa_tag", None)
    if tag is not None and (tag.ranks != grid.ranks or tag.coords != grid.coords):
        s_tag = (len(tag.ranks), len(tag.ranks[0]))
        raise ValueError(
            f"{what} was cut for grid {s_tag} with ranks {[list(r) for r in tag.ranks]} at position "
            f"{tag.coords}, but this rank is at {grid.coords} of grid {grid.shape} with ranks "
            f"{[list(r) for r in grid.ranks]}; cut it again with block_of(X, grid)")
    if x.shape[1] != cols:
        hint = f" (it was cut from a full tensor of shape {tag.full_shape})" if tag is not None else ""
        raise ValueError(f"{what} has {x.shape[1]} columns but this {grid.s}×{grid.s} grid expects "
                         f"K/s = {cols * grid.s}/{grid.s} = {cols}{hint}; is it a block from a "
                         "different grid? cut the full X with block_of(X, grid)")


# ------------------------------------------------------------------ one step, by hand
def row_broadcast(x_blk: torch.Tensor, grid: SummaGrid, k: int,
                  counter=None, phase: str = "forward") -> torch.Tensor:
    """Step k: X_ik, broadcast along my grid row from its owner, the rank at (i, k).

    Returns X_ik on every rank of row i (the owner's own block, a fresh buffer elsewhere).
    """
    src = grid.rank_at(grid.i, k)
    buf = x_blk.detach().contiguous().clone() if grid.j == k else torch.empty_like(x_blk)
    return broadcast(buf, src, grid.row_group, counter, phase) if grid.s > 1 else buf


def col_broadcast(w_blk: torch.Tensor, grid: SummaGrid, k: int,
                  counter=None, phase: str = "forward") -> torch.Tensor:
    """Step k: W_kj, broadcast along my grid column from its owner, the rank at (k, j)."""
    src = grid.rank_at(k, grid.j)
    buf = w_blk.detach().contiguous().clone() if grid.i == k else torch.empty_like(w_blk)
    return broadcast(buf, src, grid.col_group, counter, phase) if grid.s > 1 else buf


# ------------------------------------------------------------------ the three products
def summa_matmul(x_blk, w_blk, grid: SummaGrid, counter=None) -> torch.Tensor:
    """Y_ij = Σ_k X_ik · W_kj in s steps (the forward). x_blk: (M/s, K/s), w_blk: (K/s, N/s)."""
    acc = x_blk.new_zeros(x_blk.shape[0], w_blk.shape[1])   # Y_ij: (M/s, N/s)
    for k in range(grid.s):                                  # step k: X_ik: (M/s, K/s), W_kj: (K/s, N/s)
        acc = acc + row_broadcast(x_blk, grid, k, counter) @ col_broadcast(w_blk, grid, k, counter)
    return acc


def summa_grad_x(dy_blk, w_blk, grid: SummaGrid, counter=None) -> torch.Tensor:
    """dX_ik = Σ_j dY_ij · W_kjᵀ (the paper's C = A·Bᵀ).

    Step t: W_tj is broadcast down grid column j from (t, j); each rank of row i forms
    dY_ij · W_tjᵀ, and row i reduces (sums) these onto its rank at (i, t).
    """
    out = None
    for t in range(grid.s):
        w_t = col_broadcast(w_blk, grid, t, counter, "backward")       # W_tj: (K/s, N/s)
        part = (dy_blk @ w_t.T).contiguous()                           # (M/s, K/s)
        if grid.s > 1:
            reduce(part, grid.rank_at(grid.i, t), grid.row_group, counter, "backward")
        if grid.j == t:
            out = part                                                  # dX_it, summed over j
    return out


def summa_grad_w(x_blk, dy_blk, grid: SummaGrid, counter=None) -> torch.Tensor:
    """dW_kj = Σ_i X_ikᵀ · dY_ij (the paper's C = Aᵀ·B).

    Step t: X_it is broadcast along grid row i from (i, t); each rank of column j forms
    X_itᵀ · dY_ij, and column j reduces these onto its rank at (t, j).
    """
    out = None
    for t in range(grid.s):
        x_t = row_broadcast(x_blk, grid, t, counter, "backward")       # X_it: (M/s, K/s)
        part = (x_t.T @ dy_blk).contiguous()                           # (K/s, N/s)
        if grid.s > 1:
            reduce(part, grid.rank_at(t, grid.j), grid.col_group, counter, "backward")
        if grid.i == t:
            out = part                                                  # dW_tj, summed over i
    return out


class SummaMatmul(torch.autograd.Function):
    """Y_ij = Σ_k X_ik · W_kj on an s × s grid (van de Geijn & Watts 1997, SUMMA).

        forward:  for k in 0..s-1: X_ik ──broadcast along row i──▶ ; W_kj ──broadcast down column j──▶
                                   Y_ij += X_ik · W_kj
        backward: dX_ik = Σ_j dY_ij · W_kjᵀ   (broadcast W, reduce along the row)
                  dW_kj = Σ_i X_ikᵀ · dY_ij   (broadcast X, reduce down the column)

    Forward: 2s broadcasts. Backward: 2s broadcasts and 2s reduces.
    """

    @staticmethod
    def forward(ctx, x_blk, w_blk, grid, counter):
        ctx.grid, ctx.counter = grid, counter
        ctx.save_for_backward(x_blk, w_blk)
        return summa_matmul(x_blk.detach(), w_blk.detach(), grid, counter)

    @staticmethod
    def backward(ctx, dy):
        x_blk, w_blk = ctx.saved_tensors
        dy = dy.contiguous()
        dx = summa_grad_x(dy, w_blk, ctx.grid, ctx.counter) if ctx.needs_input_grad[0] else None
        dw = summa_grad_w(x_blk, dy, ctx.grid, ctx.counter) if ctx.needs_input_grad[1] else None
        return dx, dw, None, None


class ColumnBlockBias(torch.autograd.Function):
    """Y_ij + b_j: the bias block of grid column j, held by every rank of that column.

        forward:  Y_ij + b_j (no communication)
        backward: db_j = Σ_i Σ_rows dY_ij, summed down grid column j (an all-reduce), so every
                  copy of b_j gets the full gradient, as in the dense layer.
    """

    @staticmethod
    def forward(ctx, y_blk, b_blk, grid, counter):
        ctx.grid, ctx.counter = grid, counter
        return y_blk + b_blk

    @staticmethod
    def backward(ctx, dy):
        db = dy.sum(0)
        if ctx.grid.s > 1:
            db = all_reduce(db, ctx.grid.col_group, ctx.counter, "backward")
        return dy, db, None, None


# ------------------------------------------------------------------ the layer
class SummaLinear(nn.Module):
    """Y = X·W + b on an s × s grid; rank (i, j) holds W_ij (K/s, N/s) and b_j (N/s,).

    Input: this rank's block X_ij (M/s, K/s) (cut it with :func:`block_of`); output: Y_ij
    (M/s, N/s). ``weight`` is in the chapter's orientation (a block of W = dense.weight.T).
    ``counter`` (a :class:`helpers.measure.comm.CommRecorder`) records the bytes of every collective, if given.

    Example::

        grid = make_grid((2, 2))
        layer = SummaLinear.from_linear(dense, grid)      # dense: nn.Linear(K, N)
        Y_blk = layer(block_of(X, grid))                  # (M/2, N/2) on every rank
    """

    def __init__(self, weight_block: torch.Tensor, bias_block: torch.Tensor | None,
                 grid: SummaGrid, in_features: int, out_features: int,
                 counter=None):
        super().__init__()
        self.grid, self.counter = grid, counter
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(weight_block)                       # W_ij: (K/s, N/s)
        self.bias = nn.Parameter(bias_block) if bias_block is not None else None   # b_j: (N/s,)

    @classmethod
    def from_linear(cls, dense: nn.Linear, grid: SummaGrid, counter=None):
        """Cut ``dense`` (nn.Linear(K, N), weight (N, K)) into this rank's W_ij and b_j."""
        if not isinstance(dense, nn.Linear):
            raise TypeError(f"SummaLinear.from_linear needs an nn.Linear, got {type(dense).__name__}")
        s = grid.s
        check_divisible("in_features K", dense.in_features, s)
        check_divisible("out_features N", dense.out_features, s)
        w_blk = cut_block(dense.weight.detach().T, grid.shape, grid.coords, "W")   # W (K, N) -> W_ij: (K/s, N/s), a copy
        b_blk = None if dense.bias is None else dense.bias.detach().chunk(s)[grid.j].clone()   # b_j: (N/s,)
        return cls(w_blk, b_blk, grid, dense.in_features, dense.out_features, counter)

    def forward(self, x_blk: torch.Tensor) -> torch.Tensor:
        cols = self.in_features // self.grid.s
        _check_block(x_blk, self.grid, cols, "the X block")
        check_input(x_blk, cols, f"this grid expects K/s = {cols}", self.weight)   # its device and dtype
        y = SummaMatmul.apply(x_blk, self.weight, self.grid, self.counter)
        if self.bias is not None:
            y = ColumnBlockBias.apply(y, self.bias, self.grid, self.counter)
        return y

    def extra_repr(self) -> str:
        s = self.grid.s
        return (f"in_features K={self.in_features}, out_features N={self.out_features}, grid "
                f"{s}×{s} at {self.grid.coords}: W_ij {tuple(self.weight.shape)}, "
                f"bias={self.bias is not None}")


# ------------------------------------------------------------------ for drawing
def summa_trace(x_blk, w_blk, grid: SummaGrid) -> list[dict]:
    """Run SUMMA step by step and keep what this rank received and accumulated (CPU copies).

    One dict per step k: ``k``, ``x_from`` / ``w_from`` (grid positions of the owners),
    ``x`` = X_ik, ``w`` = W_kj, ``acc`` = Y_ij after step k.
    """
    acc = x_blk.new_zeros(x_blk.shape[0], w_blk.shape[1])
    steps = []
    for k in range(grid.s):
        x_k = row_broadcast(x_blk, grid, k)               # X_ik: (M/s, K/s)
        w_k = col_broadcast(w_blk, grid, k)               # W_kj: (K/s, N/s)
        acc = acc + x_k @ w_k
        steps.append({"k": k, "x_from": (grid.i, k), "w_from": (k, grid.j),
                      "x": x_k.detach().cpu(), "w": w_k.detach().cpu(),
                      "acc": acc.detach().cpu(), "coords": grid.coords})
    return steps
