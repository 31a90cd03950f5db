"""Worker for test_overlap_torchrun.py: helpers.tp.overlap against dense on 4 gloo processes.

Checks, at TP degree 4 (world) and 2 (subgroups [0, 1] and [2, 3]): the column layer with the async
dX all-reduce (overlapped and blocking) and the collective matmul, outputs and every gradient;
the overlapped spans really overlap in order (launch, matmul, wait); the exercise's traced
all-reduce; the refusals of helpers.tp.checkpoint before any collective.
"""

import os
import tempfile

import torch
import torch.distributed as dist

from helpers.tp.checkpoint import check_reshard
from helpers.tp.overlap import (
    CustomBackwardColumn,
    TracedAllReduce,
    all_gather_matmul,
    check_rows,
    column_linear,
    gathered_matmul,
)


def close(a, b, what):
    if a.shape != b.shape or not torch.allclose(a, b, atol=1e-5, rtol=1e-4):
        raise SystemExit(f"rank {dist.get_rank()}: {what} differs from dense")


def run(group, p, r):
    torch.manual_seed(0)
    N, D, H = 8, 6, 12
    X, W, DY = torch.randn(N, D), torch.randn(H, D), torch.randn(N, H)
    h, n = H // p, N // p
    Xd, Wd = X.clone().requires_grad_(), W.clone().requires_grad_()
    (Xd @ Wd.t()).backward(DY)
    for overlap in (True, False):
        x, w = X.clone().requires_grad_(), W[r * h:(r + 1) * h].clone().requires_grad_()
        spans = []
        y = column_linear(x, w, group, overlap=overlap, spans=spans)
        y.backward(DY[:, r * h:(r + 1) * h])
        close(y, (X @ W.t())[:, r * h:(r + 1) * h], f"column y (overlap={overlap})")
        close(x.grad, Xd.grad, f"column dX (overlap={overlap})")
        close(w.grad, Wd.grad[r * h:(r + 1) * h], f"column dW (overlap={overlap})")
        coll = [s for s in spans if s[0] == "collective"][0]
        mm = [s for s in spans if s[0] == "matmul"][0]
        if overlap and not (coll[2] <= mm[2] and mm[3] <= coll[3]):
            raise SystemExit("the dW matmul did not run inside the all-reduce's span")
        if not overlap and mm[2] < coll[3]:
            raise SystemExit("blocking mode computed dW before the all-reduce ended")
    for fn in (all_gather_matmul, gathered_matmul):
        x, w = X[r * n:(r + 1) * n].clone().requires_grad_(), W[r * h:(r + 1) * h].clone().requires_grad_()
        y = fn(x, w, group)
        y.backward(DY[:, r * h:(r + 1) * h])
        close(y, (X @ W.t())[:, r * h:(r + 1) * h], f"{fn.__name__} y")
        close(x.grad, Xd.grad[r * n:(r + 1) * n], f"{fn.__name__} dX")
        close(w.grad, Wd.grad[r * h:(r + 1) * h], f"{fn.__name__} dW")
    trace = TracedAllReduce()

    def bwd(x, w, dy, g):
        dx = dy @ w
        handle = trace(dx, group=g, async_op=True)
        dw = dy.t() @ x
        handle.wait()
        return dx, dw
    x, w = X.clone().requires_grad_(), W[r * h:(r + 1) * h].clone().requires_grad_()
    CustomBackwardColumn.apply(x, w, group, bwd).backward(DY[:, r * h:(r + 1) * h])
    close(x.grad, Xd.grad, "custom backward dX")
    if not trace.overlapped():
        raise SystemExit(f"trace says not overlapped: {trace.events}")


def main():
    dist.init_process_group("gloo")
    r, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)
    run(None, world, r)
    groups = [dist.new_group([0, 1]), dist.new_group([2, 3])]
    run(groups[r // 2], 2, r % 2)
    for bad in (lambda: check_rows(10, 4), lambda: check_reshard(tempfile.gettempdir() + "/no-such-dcp-dir", {}, 2)):
        try:
            bad()
            raise SystemExit("a refusal was accepted")
        except ValueError:
            pass
    dist.barrier()
    if r == 0:
        print("all overlap checks passed")
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
