"""Overlapping TP's communication with compute, as small autograd Functions (notebook 08).

Two patterns, both checked against dense in outputs and gradients:

* **Backward overlap** (:class:`ColumnLinearAsyncAllReduce`): a column-parallel linear's input
  gradient dX = dY_i · W_i is a partial sum that must be all-reduced (Megatron's *f* backward).
  Launch that all-reduce with ``async_op=True`` *first*, compute dW_i = dY_iᵀ · X while it is in
  flight, and wait only before returning. Megatron-LM's asynchronous gradient all-reduce
  (Narayanan et al. 2021, arXiv:2104.04473) and picotron's ``LinearWithAsyncAllReduce``
  (huggingface/picotron, ``picotron/tensor_parallel/tp_communications.py`` at commit
  12e81c32687e09a7a96cff46770bdb2f783df6d9) do exactly this.
* **Forward overlap, collective matmul** (:class:`AllGatherMatmul`): instead of "all-gather X,
  then X · W_iᵀ", p ring steps, each multiplying the block of rows already present while the
  next block arrives (``dist.batch_isend_irecv``). This is what JAX's collective matmul
  (docs.jax.dev, "Collective matrix multiplication", pallas/gpu/collective_matmul) and torch's
  micro-pipelined TP (``torch._inductor.config._micro_pipeline_tp``, switched on by torchtitan's
  ``enable_async_tensor_parallel`` in ``torchtitan/distributed/tensor_parallel.py``, CUDA with
  symmetric memory) do inside a compiler. Its backward is the simplest correct one: dW_i from
  the gathered X, dX by an all-reduce of the partial dX, then this rank's rows.

Every Function may record spans ``(lane, label, t_start, t_end)`` with ``time.perf_counter``
into a list you pass (``spans=``): the timestamps are taken on the rank, around the launch and
the wait of the collective and around the matmul, so a timeline can show whether they overlapped.
``perf_counter`` is the system's monotonic clock: ranks on one machine share it.

Shapes (p ranks, this rank r): X (N, D) on every rank (column layer) or X_r (N/p, D) (collective
matmul); W_r (H/p, D), this rank's rows of the dense weight (H, D); Y_r (N, H/p).
"""

from __future__ import annotations

import time

import torch
import torch.distributed as dist

from .checks import check_divisible
from .ops import all_gather, all_reduce

__all__ = ["ColumnLinearAsyncAllReduce", "column_linear", "AllGatherMatmul", "all_gather_matmul",
           "gathered_matmul", "CustomBackwardColumn", "TracedAllReduce", "check_rows"]


def _span(spans, lane, label, t0, t1):
    if spans is not None:
        spans.append((lane, label, t0, t1))


def check_rows(n_rows: int, p: int) -> None:
    """Refuse a row count of X that does not split over p ranks (before any collective)."""
    check_divisible("X rows", n_rows, p)


# ------------------------------------------------------------------------------ backward overlap
class ColumnLinearAsyncAllReduce(torch.autograd.Function):
    """Y_r = X · W_rᵀ forward (no communication); backward: dX = Σ_r dY_r · W_r (all-reduce).

    ``overlap=True``: the all-reduce of dX is launched (``async_op=True``) before dW_r = dY_rᵀ · X
    is computed and waited for after it. ``overlap=False``: the blocking order of a plain *f*
    (all-reduce, then dW), for comparison.
    """

    @staticmethod
    def forward(ctx, x, w, group, overlap, spans):
        ctx.save_for_backward(x, w)
        ctx.group, ctx.overlap, ctx.spans = group, overlap, spans
        return x @ w.t()                                               # (N, H/p)

    @staticmethod
    def backward(ctx, dy):
        x, w = ctx.saved_tensors
        dx = dy @ w                                                    # (N, D): this rank's partial sum
        t0 = time.perf_counter()
        work = dist.all_reduce(dx, group=ctx.group, async_op=ctx.overlap)  # overlap: in flight from here ...
        t1 = time.perf_counter()
        dw = dy.flatten(0, -2).t() @ x.flatten(0, -2)                  # ... while dW_r is computed (rows: all leading dims)
        t2 = time.perf_counter()
        if ctx.overlap:
            work.wait()                                                # needed only now
        t3 = time.perf_counter()
        label, end = ("all-reduce dX (async)", t3) if ctx.overlap else ("all-reduce dX", t1)
        _span(ctx.spans, "collective", label, t0, end)
        _span(ctx.spans, "matmul", "dW = dYᵀX", t1, t2)
        return dx, dw, None, None, None


def column_linear(x, w, group=None, *, overlap: bool = True, spans: list | None = None):
    """A column-parallel linear (no bias) whose backward all-reduce overlaps the dW matmul."""
    return ColumnLinearAsyncAllReduce.apply(x, w, group, overlap, spans)


class CustomBackwardColumn(torch.autograd.Function):
    """A column-parallel linear whose backward is *your* function ``backward_fn(x, w, dy, group)``
    returning (dX, dW) (notebook 08's exercise). Forward: Y_r = X · W_rᵀ."""

    @staticmethod
    def forward(ctx, x, w, group, backward_fn):
        ctx.save_for_backward(x, w)
        ctx.group, ctx.fn = group, backward_fn
        return x @ w.t()

    @staticmethod
    def backward(ctx, dy):
        x, w = ctx.saved_tensors
        out = ctx.fn(x, w, dy, ctx.group)
        if not (isinstance(out, tuple) and len(out) == 2
                and all(t is None or isinstance(t, torch.Tensor) for t in out)):
            raise RuntimeError(f"the backward must return (dX, dW) as two tensors, got {type(out).__name__}")
        dx, dw = out                                                   # a None: an unfinished exercise, no gradient
        if dx is not None and dw is not None and (dx.shape != x.shape or dw.shape != w.shape):
            raise RuntimeError(f"dX must be {tuple(x.shape)} and dW {tuple(w.shape)}; "
                               f"got {tuple(dx.shape)} and {tuple(dw.shape)}")
        return dx, dw, None, None


class TracedAllReduce:
    """``dist.all_reduce`` that remembers how it was used: call it like ``dist.all_reduce``; it
    logs ("launch", async_op) and, for an async launch, ("wait",) when the handle is waited on.
    ``overlapped()``: launched asynchronously and waited for afterwards."""

    def __init__(self):
        self.events: list[tuple] = []

    def __call__(self, tensor, op=dist.ReduceOp.SUM, group=None, async_op: bool = False):
        self.events.append(("launch", bool(async_op)))
        work = dist.all_reduce(tensor, op=op, group=group, async_op=async_op)
        if not async_op:
            return work
        events = self.events

        class _Handle:
            def wait(self_inner):
                events.append(("wait",))
                return work.wait()
        return _Handle()

    def overlapped(self) -> bool:
        return self.events[-2:] == [("launch", True), ("wait",)]


# ------------------------------------------------------------------------------ forward overlap
class AllGatherMatmul(torch.autograd.Function):
    """Y_r = all_gather(X) · W_rᵀ computed in p ring steps: at step s rank r holds the rows of rank
    (r − s) mod p, multiplies them, and meanwhile sends them on to rank r + 1 and receives the
    next block from rank r − 1 (``batch_isend_irecv``). Backward: dW_r = dY_rᵀ · X (the gathered
    X, kept from the forward); dX_r = this rank's rows of the all-reduced dY_r · W_r."""

    @staticmethod
    def forward(ctx, x_r, w, group, spans):
        p, r = dist.get_world_size(group), dist.get_rank(group)
        glob = (lambda i: i) if group is None else (lambda i: dist.get_global_rank(group, i))
        nxt, prv = glob((r + 1) % p), glob((r - 1) % p)                # my ring neighbours, as P2POp's global ranks
        n = x_r.shape[0]
        y = x_r.new_empty(p * n, w.shape[0])                           # (N, H/p)
        x_full = x_r.new_empty(p * n, x_r.shape[1])                    # (N, D), filled as blocks arrive
        cur = x_r.contiguous()
        for s in range(p):
            src = (r - s) % p                                          # whose rows `cur` holds
            reqs, t0 = [], time.perf_counter()
            if s < p - 1:
                nxt_buf = torch.empty_like(cur)
                reqs = dist.batch_isend_irecv([dist.P2POp(dist.isend, cur, nxt, group),
                                               dist.P2POp(dist.irecv, nxt_buf, prv, group)])
            t1 = time.perf_counter()
            y[src * n:(src + 1) * n] = cur @ w.t()                     # the block present, while the next arrives
            x_full[src * n:(src + 1) * n] = cur
            t2 = time.perf_counter()
            for q in reqs:
                q.wait()
            t3 = time.perf_counter()
            _span(spans, "matmul", f"X[{src}]·Wᵀ", t1, t2)
            if reqs:
                _span(spans, "collective", f"send/recv block {(r - s - 1) % p}", t0, t3)
                cur = nxt_buf
        ctx.save_for_backward(x_full, w)
        ctx.group, ctx.n, ctx.r = group, n, r
        return y

    @staticmethod
    def backward(ctx, dy):
        x_full, w = ctx.saved_tensors
        dw = dy.t() @ x_full                                           # (H/p, D)
        dx = all_reduce(dy @ w, ctx.group)                             # (N, D): the ranks' partial sums, summed
        return dx[ctx.r * ctx.n:(ctx.r + 1) * ctx.n].contiguous(), dw, None, None


def all_gather_matmul(x_r, w, group=None, *, spans: list | None = None):
    """Collective matmul: all_gather(X_r) · W_rᵀ with the gather overlapped (see :class:`AllGatherMatmul`)."""
    check_rows(x_r.shape[0] * dist.get_world_size(group), dist.get_world_size(group))
    return AllGatherMatmul.apply(x_r, w, group, spans)


class _GatherRows(torch.autograd.Function):
    """All-gather rows forward; backward: the gathered gradient is partial on each rank (each used
    the rows with its own columns), so all-reduce it and keep this rank's rows. (Written out here:
    ``torch.distributed.nn.functional.all_gather``'s backward fails on gloo subgroups in torch 2.13.)"""

    @staticmethod
    def forward(ctx, x_r, group):
        ctx.group, ctx.r, ctx.n = group, dist.get_rank(group), x_r.shape[0]
        return all_gather(x_r, group, dim=0)

    @staticmethod
    def backward(ctx, g):
        return all_reduce(g, ctx.group)[ctx.r * ctx.n:(ctx.r + 1) * ctx.n], None


def gathered_matmul(x_r, w, group=None, *, spans: list | None = None):
    """The plain way, for comparison: all-gather X (autograd-aware), then one matmul."""
    t0 = time.perf_counter()
    x_full = _GatherRows.apply(x_r, group)                             # (N, D)
    t1 = time.perf_counter()
    y = x_full @ w.t()
    t2 = time.perf_counter()
    _span(spans, "collective", "all-gather X", t0, t1)
    _span(spans, "matmul", "X·Wᵀ", t1, t2)
    return y
