"""Counting the bytes each rank sends and receives in its collectives, and the formulas.

Torch only (runs on engines and under torchrun). A :class:`CommCounter` is a plain object a
layer or a cell passes to the counted collectives below; nothing is global::

    counter = CommCounter()
    Y = all_gather(Y_i, counter=counter)        # Y_i: (M, N/p) -> Y: (M, N) on every rank
    counter.sent, counter.received, counter.calls

What is counted is the *payload* each rank puts on (or takes off) the wire under a stated
algorithm model -- the model the formulas use too, so measured == formula exactly when the
code issues the collectives it should:

=============  =====================================================  ===========================
collective     model                                                  per rank, n = tensor bytes
=============  =====================================================  ===========================
broadcast      the root sends its block to each of the g-1 others     root: sent (g-1)·n; others: received n
reduce (sum)   each non-root sends its block to the root              others: sent n; root: received (g-1)·n
all-gather     ring: g-1 steps, one shard per step                    sent = received = (g-1)·n_shard
all-reduce     ring: reduce-scatter + all-gather                      sent = received = 2(g-1)/g·n
=============  =====================================================  ===========================

(n = numel × element size; g = the group's size.) Real libraries pick other algorithms
(trees, pipelines) whose per-rank bytes differ by small factors; the ratios between the
layouts below do not depend on that choice.

The formulas are pure functions of the shapes, for Y = X·W with X (M, K), W (K, N) on p ranks:

* :func:`bytes_1d_column` -- W split by columns, X replicated, Y all-gathered;
* :func:`bytes_1d_row` -- W split by rows, X split by columns, partial sums all-reduced;
* :func:`bytes_summa` -- X and W cut in √p × √p blocks, SUMMA (van de Geijn & Watts 1997).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

__all__ = ["CommCounter", "CommRecord", "nbytes", "broadcast", "reduce", "all_gather",
           "all_reduce", "broadcast_model", "reduce_model", "all_gather_model",
           "all_reduce_model", "bytes_1d_column", "bytes_1d_row", "bytes_summa", "COMM_FORMULAS",
           "grid_side"]


def nbytes(t: torch.Tensor) -> int:
    """Bytes of a tensor's data: numel × element size."""
    return t.numel() * t.element_size()


# ------------------------------------------------------------------ per-collective models
def broadcast_model(n: int, g: int, is_root: bool) -> tuple[float, float]:
    """(sent, received) by one rank in a broadcast of n bytes over g ranks."""
    return ((g - 1) * n, 0) if is_root else (0, n)


def reduce_model(n: int, g: int, is_root: bool) -> tuple[float, float]:
    """(sent, received) by one rank in a sum-reduce of n bytes to a root, over g ranks."""
    return (0, (g - 1) * n) if is_root else (n, 0)


def all_gather_model(n_shard: int, g: int) -> tuple[float, float]:
    """(sent, received) by one rank in a ring all-gather of one n_shard-byte shard per rank."""
    return (g - 1) * n_shard, (g - 1) * n_shard


def all_reduce_model(n: int, g: int) -> tuple[float, float]:
    """(sent, received) by one rank in a ring all-reduce of n bytes over g ranks."""
    v = 2 * (g - 1) * n / g
    return v, v


# ------------------------------------------------------------------ the counter
@dataclass
class CommRecord:
    op: str
    group_size: int
    nbytes: int          # the tensor this rank passed in (its shard, for all-gather)
    sent: float
    received: float
    phase: str = "forward"


@dataclass
class CommCounter:
    """Bytes this rank sent / received, one :class:`CommRecord` per collective it issued."""

    records: list[CommRecord] = field(default_factory=list)

    def record(self, op, group_size, n, sent, received, phase="forward") -> None:
        self.records.append(CommRecord(op, group_size, n, sent, received, phase))

    def _sel(self, phase):
        return [r for r in self.records if phase is None or r.phase == phase]

    def sent_in(self, phase=None) -> float:
        return sum(r.sent for r in self._sel(phase))

    def received_in(self, phase=None) -> float:
        return sum(r.received for r in self._sel(phase))

    def calls_in(self, phase=None) -> int:
        return len(self._sel(phase))

    @property
    def sent(self) -> float:
        return self.sent_in()

    @property
    def received(self) -> float:
        return self.received_in()

    @property
    def calls(self) -> int:
        return self.calls_in()

    def by_op(self, phase=None) -> dict[str, int]:
        """{op: number of calls}, e.g. {"broadcast": 4}."""
        out: dict[str, int] = {}
        for r in self._sel(phase):
            out[r.op] = out.get(r.op, 0) + 1
        return out

    def summary(self, phase=None) -> dict:
        """A plain dict (picklable, for ``cluster.pull``): sent, received, calls, ops."""
        return {"sent": self.sent_in(phase), "received": self.received_in(phase),
                "calls": self.calls_in(phase), "ops": self.by_op(phase)}

    def reset(self) -> None:
        self.records.clear()


def _record(counter, op, group, n, model, phase):
    if counter is not None:
        sent, received = model
        counter.record(op, dist.get_world_size(group), n, sent, received, phase)


# ------------------------------------------------------------------ counted collectives
def broadcast(t: torch.Tensor, src: int, group=None, counter: CommCounter | None = None,
              phase: str = "forward") -> torch.Tensor:
    """``dist.broadcast`` (in place; ``src`` is a global rank), counted; returns ``t``."""
    dist.broadcast(t, src=src, group=group)
    g = dist.get_world_size(group)
    _record(counter, "broadcast", group, nbytes(t),
            broadcast_model(nbytes(t), g, dist.get_rank() == src), phase)
    return t


def reduce(t: torch.Tensor, dst: int, group=None, counter: CommCounter | None = None,
           phase: str = "forward") -> torch.Tensor:
    """Sum ``t`` over ``group`` onto global rank ``dst`` (in place there), counted; returns ``t``.

    gloo reduces CPU tensors only; a CUDA tensor on gloo goes through a CPU copy.
    """
    if t.device.type != "cpu" and dist.get_backend(group) == "gloo":
        buf = t.cpu()
        dist.reduce(buf, dst=dst, group=group)
        t.copy_(buf)
    else:
        dist.reduce(t, dst=dst, group=group)
    g = dist.get_world_size(group)
    _record(counter, "reduce", group, nbytes(t),
            reduce_model(nbytes(t), g, dist.get_rank() == dst), phase)
    return t


def all_gather(t: torch.Tensor, group=None, dim: int = -1, counter: CommCounter | None = None,
               phase: str = "forward") -> torch.Tensor:
    """Concatenate every rank's ``t`` along ``dim`` (rank order), counted."""
    t = t.contiguous()
    g = dist.get_world_size(group)
    parts = [torch.empty_like(t) for _ in range(g)]
    dist.all_gather(parts, t, group=group)  # list form: gloo and NCCL
    _record(counter, "all_gather", group, nbytes(t), all_gather_model(nbytes(t), g), phase)
    return torch.cat(parts, dim=dim)


def all_reduce(t: torch.Tensor, group=None, counter: CommCounter | None = None,
               phase: str = "forward") -> torch.Tensor:
    """Sum ``t`` over the ranks (a new tensor; ``t`` is left alone), counted."""
    out = t.contiguous().clone()
    dist.all_reduce(out, group=group)
    g = dist.get_world_size(group)
    _record(counter, "all_reduce", group, nbytes(out), all_reduce_model(nbytes(out), g), phase)
    return out


# ------------------------------------------------------------------ formulas (pure)
def _check_dims(M, K, N, p, dtype_bytes):
    for name, v in (("M", M), ("K", K), ("N", N), ("p", p), ("dtype_bytes", dtype_bytes)):
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")


def grid_side(p: int) -> int:
    """s with s × s = p; ``ValueError`` when p is not a perfect square."""
    s = math.isqrt(p)
    if s * s != p:
        lo, hi = s * s, (s + 1) ** 2
        raise ValueError(f"2D SUMMA here needs a square grid, but p={p} is not a perfect square; "
                         f"pick p = {lo} ({s}×{s}) or {hi} ({s + 1}×{s + 1})")
    return s


def bytes_1d_column(M: int, K: int, N: int, p: int, dtype_bytes: int = 4) -> dict:
    """Forward of Y = X·W, W split by columns: one all-gather of Y_i (M, N/p) per rank.

    sent = received = (p-1) · M·N/p · bytes. X (M, K) must already be on every rank.
    """
    _check_dims(M, K, N, p, dtype_bytes)
    sent, received = all_gather_model(M * N * dtype_bytes / p, p) if p > 1 else (0, 0)
    return {"sent": sent, "received": received, "calls": 1 if p > 1 else 0}


def bytes_1d_row(M: int, K: int, N: int, p: int, dtype_bytes: int = 4) -> dict:
    """Forward of Y = X·W, W split by rows: one all-reduce of the partial sum (M, N).

    sent = received = 2(p-1)/p · M·N · bytes.
    """
    _check_dims(M, K, N, p, dtype_bytes)
    sent, received = all_reduce_model(M * N * dtype_bytes, p) if p > 1 else (0, 0)
    return {"sent": sent, "received": received, "calls": 1 if p > 1 else 0}


def bytes_summa(M: int, K: int, N: int, p: int, dtype_bytes: int = 4) -> dict:
    """Forward of Y = X·W by SUMMA on an s × s grid (s = √p): per rank, over s steps,

    sent = received = (s-1) · (M/s·K/s + K/s·N/s) · bytes

    At each step k the X block (M/s, K/s) is broadcast along every grid row from column k and
    the W block (K/s, N/s) along every grid column from row k; a rank is the root once in s
    steps for each, and receives in the other s-1. Calls: 2s broadcasts.
    """
    _check_dims(M, K, N, p, dtype_bytes)
    s = grid_side(p)
    blocks = (M * K + K * N) * dtype_bytes / (s * s)
    v = (s - 1) * blocks
    return {"sent": v, "received": v, "calls": 2 * s if p > 1 else 0}


#: The three layouts of notebook 04, by name.
COMM_FORMULAS = {"1D column": bytes_1d_column, "1D row": bytes_1d_row, "2D SUMMA": bytes_summa}
