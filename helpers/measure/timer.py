"""Where a TP step's time goes: each local matmul and each collective, timed on every rank.

Torch only (runs on engines and under torchrun). A :class:`StepTimer` measures wall-clock time
between two device synchronisations (``torch.cuda.synchronize`` on a GPU, whose kernels run
asynchronously; nothing on a CPU), so a span covers the work itself, not just its launch. The
timed pieces are autograd Functions, so the backward pass is timed too:

* :func:`timed_linear` -- ``F.linear`` forward, and the two matmuls of its backward
  (dL/dX = dL/dY·W, dL/dW = dL/dYᵀ·X), counted as ``"matmul"``;
* Megatron's *f* and *g* themselves, ``helpers.tp.ops.copy_to_tp_region(x, group, timer=t,
  name=...)`` and ``reduce_from_tp_region(...)``: their collective runs inside
  ``timer.span("communication", ...)``. A collective's time includes waiting for the slowest
  rank of the group: that wait is what TP costs in practice.

Everything else in a step (attention's softmax, GELU, the norms, autograd's bookkeeping) is
``"other"``: the step's time minus the timed spans. With ``timer=None`` the functions compute
the same thing and time nothing.

Shoeybi et al. 2019, "Megatron-LM", arXiv:1909.08053, Section 3 and Figure 3 (*f* and *g*).
"""

from __future__ import annotations

import contextlib
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..common.numbers import divisors
from ..costmodel.dims import check_whole

__all__ = ["StepTimer", "timed_linear", "timing_degrees", "tp_subgroup", "turns", "matmul_tflops", "KINDS"]

#: the parts of a step, in the order the figures stack them
KINDS = ("matmul", "other", "communication")


class StepTimer:
    """Seconds per step, split into ``matmul``, ``communication`` and ``other``.

    ::

        timer = StepTimer(device)
        with timer.step():                     # one forward + backward
            block(X, timer=timer).sum().backward()
        timer.split()   # {'step': 0.031, 'matmul': 0.022, 'communication': 0.006, 'other': 0.003, ...}

    Spans opened outside :meth:`step` are ignored (a warm-up step can run untimed).
    """

    def __init__(self, device):
        self.device = torch.device(device)
        self.steps: list[dict] = []
        self._current: dict | None = None

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # wait until the GPU has finished what was queued

    @contextlib.contextmanager
    def step(self):
        """Time one whole step; the spans inside it are attributed to it."""
        self._current = {"matmul": 0.0, "communication": 0.0, "spans": []}
        self.sync()
        t0 = time.perf_counter()
        try:
            yield self
        finally:
            self.sync()
            cur, self._current = self._current, None
            cur["step"] = time.perf_counter() - t0
            cur["other"] = max(0.0, cur["step"] - cur["matmul"] - cur["communication"])
            self.steps.append(cur)

    @contextlib.contextmanager
    def span(self, kind: str, name: str):
        """Time one piece of work of ``kind`` ("matmul" or "communication")."""
        cur = self._current
        if cur is None:
            yield
            return
        self.sync()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.sync()
            dt = time.perf_counter() - t0
            cur[kind] += dt
            cur["spans"].append((kind, name, dt))

    def split(self) -> dict:
        """The median step (by total time) and its parts, in seconds; ``spans`` lists its pieces."""
        if not self.steps:
            raise RuntimeError("no step was timed yet: run the work inside `with timer.step():`")
        median = sorted(self.steps, key=lambda s: s["step"])[(len(self.steps) - 1) // 2]
        return {**{k: median[k] for k in ("step", *KINDS)}, "spans": list(median["spans"])}


# ------------------------------------------------------------------------------ matmuls
class _TimedLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, timer, name):
        ctx.save_for_backward(x, weight)
        ctx.timer, ctx.name = timer, name
        with timer.span("matmul", f"{name} forward"):
            return F.linear(x, weight, bias)          # (..., in) @ (out, in)ᵀ -> (..., out)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        gx = gw = gb = None
        with ctx.timer.span("matmul", f"{ctx.name} backward"):
            g2 = grad.reshape(-1, grad.shape[-1])     # (tokens, out)
            if ctx.needs_input_grad[0]:
                gx = grad @ weight                    # dL/dX: (..., in)
            if ctx.needs_input_grad[1]:
                gw = g2.T @ x.reshape(-1, x.shape[-1])  # dL/dW: (out, in)
            if ctx.needs_input_grad[2]:               # False for bias=None
                gb = g2.sum(0)                        # dL/db: (out,)
        return gx, gw, gb, None, None


def timed_linear(x, weight, bias=None, timer: StepTimer | None = None, name: str = "linear"):
    """``F.linear(x, weight, bias)`` whose forward and backward matmuls are timed as "matmul"."""
    return F.linear(x, weight, bias) if timer is None else _TimedLinear.apply(x, weight, bias, timer, name)


# ------------------------------------------------------------------------------ TP groups
def timing_degrees(world_size: int, limit: int | None = None) -> list[int]:
    """The TP degrees this cluster can time side by side: the divisors of ``world_size``.

    At degree p the ranks form world_size/p TP groups that all run at once, so every degree
    keeps the machine equally busy. Refused, before any collective, on a single rank:

    >>> timing_degrees(4), timing_degrees(6, limit=4)
    ([1, 2, 4], [1, 2, 3])
    >>> timing_degrees(1)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ValueError: timing TP needs at least 2 ranks, and this cluster has 1: ... helpers.connect(n=4) ...
    """
    check_whole("world_size", world_size)
    if world_size < 2:
        raise ValueError(f"timing TP needs at least 2 ranks, and this cluster has {world_size}: "
                         "there would be no collective to time. Start one with "
                         "helpers.connect(n=4) (or launch_cluster.sh start -n 4)")
    return divisors(world_size, upto=limit)


def tp_subgroup(degree: int):
    """This rank's TP group when the world is cut into groups of ``degree`` consecutive ranks.

    Ranks 0..p-1 form the first group, p..2p-1 the next, and so on. Every rank must call it (with
    the same degree): creating groups is itself collective. ``degree == world_size`` returns
    ``None`` (the world group). A degree that does not divide the world is refused first.
    """
    world = dist.get_world_size()
    if isinstance(degree, bool) or not isinstance(degree, int) or degree < 1 or world % degree:
        ok = ", ".join(str(d) for d in divisors(world))
        raise ValueError(f"tp degree {degree!r} does not divide the {world} ranks into equal groups; "
                         f"pick one of {{{ok}}}")
    return None if degree == world else dist.new_subgroups(group_size=degree)[0]   # (this rank's group, all groups)


def turns(degree: int):
    """One TP group at a time: yields True on the turn of this rank's group, False on the
    others', with a barrier after each turn (every rank must iterate to the end).

    On a GPU cluster every rank has its own device, so TP groups never compete; on a few CPU
    cores they would, and a group that waits in a collective would lend its core to one that
    computes. Taking turns keeps each group's timing its own.
    """
    world, rank = dist.get_world_size(), dist.get_rank()
    for turn in range(world // degree):
        yield rank // degree == turn
        dist.barrier()


# ------------------------------------------------------------------------------ one matmul's rate
def matmul_tflops(tokens: int, d_in: int, d_out: int, dtype=torch.float32, device="cpu",
                  repeats: int = 3, min_time: float = 0.01) -> float:
    """TFLOP/s of one (tokens × d_in)·(d_in × d_out) matmul on ``device``: the best of ``repeats``
    timings, each repeating the matmul until it lasts ``min_time`` seconds (synchronised on a GPU)."""
    x = torch.randn(tokens, d_in, device=device, dtype=dtype)
    w = torch.randn(d_in, d_out, device=device, dtype=dtype)
    timer = StepTimer(device)
    x @ w                                               # warm-up (allocations, kernel selection)
    best = float("inf")
    for _ in range(repeats):
        n = 1
        while True:                                     # double n until one timing lasts min_time
            with timer.step():
                for _ in range(n):
                    x @ w
            if timer.steps[-1]["step"] >= min_time:
                break
            n *= 2
        best = min(best, timer.steps[-1]["step"] / n)
    return 2 * tokens * d_in * d_out / best / 1e12
