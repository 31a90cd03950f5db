"""Megatron's communication operators as autograd Functions, one per role, and the collectives
under them.

Shoeybi et al. 2019, "Megatron-LM: Training Multi-Billion Parameter Language Models
Using Model Parallelism", arXiv:1909.08053, Section 3 and Figure 3: *f* (identity
forward, all-reduce backward) and *g* (all-reduce forward, identity backward), plus
the gather/scatter pair of a column-parallel layer that gathers its output.

Two optional instruments, both duck-typed (nothing here imports them):

* ``counter=`` on :func:`all_reduce`, :func:`all_gather`, :func:`broadcast`, :func:`reduce`:
  anything with ``record(op, n, p, *, root, phase)`` (:class:`helpers.measure.comm.CommRecorder`),
  told each collective with n = the bytes of the full tensor;
* ``timer=`` on the ``*_tp_region`` functions: anything with ``span(kind, name)``
  (:class:`helpers.measure.timer.StepTimer`); the collective inside the autograd Function runs
  inside ``timer.span("communication", ...)``.
"""

from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist

from .checks import check_divisible, tp_degree_and_rank

__all__ = [
    "CopyToModelParallelRegion", "ReduceFromModelParallelRegion",
    "GatherFromModelParallelRegion", "ScatterToModelParallelRegion",
    "copy_to_tp_region", "reduce_from_tp_region", "gather_from_tp_region",
    "scatter_to_tp_region", "all_reduce", "all_gather", "broadcast", "reduce",
]


# ------------------------------------------------------------------ collectives (optionally counted)
def _record(counter, op, group, n, phase, root=False):
    if counter is not None:
        counter.record(op, n, dist.get_world_size(group), root=root, phase=phase)


def all_reduce(t: torch.Tensor, group=None, counter=None, phase: str = "forward") -> torch.Tensor:
    """Sum ``t`` over the ranks (a new tensor: all_reduce is in place, autograd's ``t`` is left alone)."""
    out = t.contiguous().clone()
    dist.all_reduce(out, group=group)
    _record(counter, "all_reduce", group, out.nbytes, phase)
    return out


def all_gather(t: torch.Tensor, group=None, dim: int = -1, counter=None, phase: str = "forward") -> torch.Tensor:
    """Concatenate every rank's ``t`` along ``dim`` (rank order)."""
    t = t.contiguous()
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, t, group=group)  # list form: works on gloo and NCCL
    _record(counter, "all_gather", group, t.nbytes * len(parts), phase)
    return torch.cat(parts, dim=dim)


def broadcast(t: torch.Tensor, src: int, group=None, counter=None, phase: str = "forward") -> torch.Tensor:
    """``dist.broadcast`` (in place; ``src`` is a global rank); returns ``t``."""
    dist.broadcast(t, src=src, group=group)
    _record(counter, "broadcast", group, t.nbytes, phase, root=dist.get_rank() == src)
    return t


def reduce(t: torch.Tensor, dst: int, group=None, counter=None, phase: str = "forward") -> torch.Tensor:
    """Sum ``t`` over ``group`` onto global rank ``dst`` (in place there); returns ``t``.

    gloo reduces CPU tensors only; a CUDA tensor on gloo goes through a CPU copy.
    """
    buf = t.cpu() if t.device.type != "cpu" and dist.get_backend(group) == "gloo" else t
    dist.reduce(buf, dst=dst, group=group)
    t.copy_(buf)                                          # from the CPU copy (copying t onto itself is a no-op)
    _record(counter, "reduce", group, t.nbytes, phase, root=dist.get_rank() == dst)
    return t


def _split_last(x, group):
    """This rank's slice of the last dim (scatter_to_tp_region has checked that it divides)."""
    return x.chunk(dist.get_world_size(group), dim=-1)[dist.get_rank(group)].contiguous()


def _span(timer, name):
    return timer.span("communication", name) if timer is not None else contextlib.nullcontext()


# ------------------------------------------------------------------ f, g and the gather/scatter pair
class CopyToModelParallelRegion(torch.autograd.Function):
    """The paper's *f* (Fig. 3a): identity forward, all-reduce backward.

        forward:   X ──┬──> X   (rank 0)       backward:  dX = dX_0 + dX_1 + ... (all-reduce)
                       └──> X   (rank 1) ...
    Every rank uses the full input, so each one's gradient is only a partial sum.
    """

    @staticmethod
    def forward(ctx, x, group, timer=None, name="f"):
        ctx.group, ctx.timer, ctx.name = group, timer, name
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        with _span(ctx.timer, f"{ctx.name} (f, backward all-reduce)"):
            return all_reduce(grad, ctx.group), None, None, None


class ReduceFromModelParallelRegion(torch.autograd.Function):
    """The paper's *g* (Fig. 3a): all-reduce forward, identity backward.

        forward:   Y_0 + Y_1 + ... + Y_{p-1} = Y on every rank     backward: dY passes through
    Each rank holds a partial sum; the all-reduce completes it.
    """

    @staticmethod
    def forward(ctx, x, group, timer=None, name="g"):
        with _span(timer, f"{name} (g, forward all-reduce)"):
            return all_reduce(x, group)

    @staticmethod
    def backward(ctx, grad):
        return grad, None, None, None


class GatherFromModelParallelRegion(torch.autograd.Function):
    """All-gather along the last dim forward; split (keep own slice) backward.

        forward:  [Y_0] [Y_1] ... [Y_{p-1}]  ──>  [Y_0 | Y_1 | ... | Y_{p-1}] on every rank
        backward: [dY_0 | dY_1 | ...]        ──>  dY_i on rank i
    """

    @staticmethod
    def forward(ctx, x, group, timer=None, name="gather"):
        ctx.group = group
        with _span(timer, f"{name} (forward all-gather)"):
            return all_gather(x, group)

    @staticmethod
    def backward(ctx, grad):
        return _split_last(grad, ctx.group), None, None, None


class ScatterToModelParallelRegion(torch.autograd.Function):
    """Split along the last dim forward (keep own slice); all-gather backward.

        forward:  [X_0 | X_1 | ... | X_{p-1}]  ──>  X_i on rank i
        backward: [dX_0] [dX_1] ...            ──>  [dX_0 | dX_1 | ...] on every rank
    """

    @staticmethod
    def forward(ctx, x, group, timer=None, name="scatter"):
        ctx.group, ctx.timer, ctx.name = group, timer, name
        return _split_last(x, group)

    @staticmethod
    def backward(ctx, grad):
        with _span(ctx.timer, f"{ctx.name} (backward all-gather)"):
            return all_gather(grad, ctx.group), None, None, None


def _apply(fn, x, group, timer, name):
    return x if tp_degree_and_rank(group)[0] == 1 else fn.apply(x, group, timer, name)  # degree 1: no collective at all


def copy_to_tp_region(x, group=None, *, timer=None, name: str = "f"):
    """*f*: identity forward, all-reduce backward (timed as ``name`` when a timer is given)."""
    return _apply(CopyToModelParallelRegion, x, group, timer, name)


def reduce_from_tp_region(x, group=None, *, timer=None, name: str = "g"):
    """*g*: all-reduce forward, identity backward (timed as ``name`` when a timer is given)."""
    return _apply(ReduceFromModelParallelRegion, x, group, timer, name)


def gather_from_tp_region(x, group=None, *, timer=None, name: str = "gather"):
    """All-gather along the last dim forward, split backward."""
    return _apply(GatherFromModelParallelRegion, x, group, timer, name)


def scatter_to_tp_region(x, group=None, *, timer=None, name: str = "scatter"):
    """Split along the last dim forward, all-gather backward (checks divisibility first)."""
    check_divisible("input last dim", x.shape[-1], tp_degree_and_rank(group)[0])
    return _apply(ScatterToModelParallelRegion, x, group, timer, name)
