"""Dense-vs-tensor-parallel checks for helpers.tp, run by torchrun (4 ranks, gloo).

    python -m torch.distributed.run --standalone --nproc_per_node=4 tests/torchrun/tp_torchrun_worker.py

The check_* functions are plain: each takes a ``group`` (None = world), builds the dense
layer from the same seed on every rank, shards it with ``from_linear``, runs forward and
backward on both, and raises AssertionError on a mismatch. An ipyparallel engine that has
a process group can import and call them unchanged. Exit code 0 means every check passed.
"""

import os
import sys

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.testing import assert_close

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from helpers import tp  # noqa: E402
from helpers.models import MLP  # noqa: E402

B, D, H = 3, 8, 16  # batch, model dim, hidden dim (divisible by 1, 2 and 4)


def _dense(in_f, out_f, bias, seed):
    torch.manual_seed(seed)  # same numbers on every rank
    return nn.Linear(in_f, out_f, bias=bias)


def _input(shape, seed):
    torch.manual_seed(seed + 1000)
    return torch.randn(*shape, requires_grad=True)


def _slice(group, size):
    degree, rank = tp.tp_degree_and_rank(group)
    return slice(*tp.shard_range(size, degree, rank))


def check_column(group=None, bias=True, gather_output=True, seed=0):
    """ColumnParallelLinear vs nn.Linear: output, input grad, weight/bias shard grads."""
    dense = _dense(D, H, bias, seed)
    layer = tp.ColumnParallelLinear.from_linear(dense, gather_output=gather_output, group=group)
    x, x_tp = _input((B, D), seed), _input((B, D), seed)
    cols = _slice(group, H)
    y, y_tp = dense(x), layer(x_tp)
    assert_close(y_tp, y if gather_output else y[..., cols])
    torch.manual_seed(seed + 2000)
    dy = torch.randn_like(y)                      # the same upstream gradient on every rank
    y.backward(dy)
    y_tp.backward(dy if gather_output else dy[..., cols])
    assert_close(x_tp.grad, x.grad)               # f's all-reduce makes it the full grad
    assert_close(layer.weight.grad, dense.weight.grad[cols])
    if bias:
        assert_close(layer.bias.grad, dense.bias.grad[cols])


def check_row(group=None, bias=True, input_is_parallel=True, seed=0):
    """RowParallelLinear vs nn.Linear: output, input grad, weight shard grad, full bias grad."""
    dense = _dense(H, D, bias, seed)
    layer = tp.RowParallelLinear.from_linear(dense, input_is_parallel=input_is_parallel, group=group)
    x = _input((B, H), seed)
    cols = _slice(group, H)
    x_tp = (x.detach()[:, cols] if input_is_parallel else x.detach()).clone().requires_grad_()
    y, y_tp = dense(x), layer(x_tp)
    assert_close(y_tp, y)
    torch.manual_seed(seed + 2000)
    dy = torch.randn_like(y)
    y.backward(dy)
    y_tp.backward(dy)
    assert_close(x_tp.grad, x.grad[:, cols] if input_is_parallel else x.grad)
    assert_close(layer.weight.grad, dense.weight.grad[:, cols])
    if bias:
        assert_close(layer.bias.grad, dense.bias.grad)


def check_mlp(group=None, bias=True, seed=0):
    """ParallelMLP vs the dense MLP: output, input grad, and every shard's grads."""
    torch.manual_seed(seed)
    dense = MLP(D, H, bias=bias)
    mlp = tp.ParallelMLP.from_dense(dense.w1, dense.w2, group=group)
    x, x_tp = _input((2, B, D), seed), _input((2, B, D), seed)  # a leading extra dim, too
    rows = _slice(group, H)
    y, y_tp = dense(x), mlp(x_tp)
    assert_close(y_tp, y)
    y.sum().backward()
    y_tp.sum().backward()
    assert_close(x_tp.grad, x.grad)
    assert_close(mlp.w1.weight.grad, dense.w1.weight.grad[rows])
    assert_close(mlp.w2.weight.grad, dense.w2.weight.grad[:, rows])
    if bias:
        assert_close(mlp.w1.bias.grad, dense.w1.bias.grad[rows])
        assert_close(mlp.w2.bias.grad, dense.w2.bias.grad)


def count_mlp_collectives(group=None):
    """Collectives issued by one ParallelMLP forward and one backward: {phase: {op: n}}.

    Uses CommDebugMode, which (torch >= 2.4) counts c10d ops such as all_reduce issued
    through torch.distributed, not only functional collectives.
    """
    from torch.distributed.tensor.debug import CommDebugMode

    torch.manual_seed(0)
    dense = MLP(D, H)
    mlp = tp.ParallelMLP.from_dense(dense.w1, dense.w2, group=group)
    x = torch.randn(B, D, requires_grad=True)
    counts = {}
    with CommDebugMode() as fwd:
        y = mlp(x)
    with CommDebugMode() as bwd:
        y.sum().backward()
    for phase, mode in (("forward", fwd), ("backward", bwd)):
        counts[phase] = {str(op).split(".")[-1].rstrip("_"): n
                         for op, n in mode.get_comm_counts().items()}
    return counts


def check_mlp_collective_count(group=None):
    """Megatron's claim: exactly one all-reduce forward, one backward, no all-gather."""
    counts = count_mlp_collectives(group)
    expected = {"forward": {"allreduce": 1}, "backward": {"allreduce": 1}}
    if counts != expected:
        raise AssertionError(f"ParallelMLP collectives {counts}, expected {expected}")
    return counts


def check_not_member(group):
    """Using a group this rank is not part of is refused before any collective."""
    try:
        tp.ColumnParallelLinear(D, H, group=group)
    except ValueError as e:
        if "not a member" not in str(e):
            raise AssertionError(f"unexpected message: {e}") from e
    else:
        raise AssertionError("ColumnParallelLinear accepted a group this rank is not in")


def run_all(group, label):
    for bias in (True, False):
        for gather_output in (True, False):
            check_column(group, bias=bias, gather_output=gather_output)
        for input_is_parallel in (True, False):
            check_row(group, bias=bias, input_is_parallel=input_is_parallel)
        check_mlp(group, bias=bias)
    if dist.get_rank() == 0:
        print(f"[{label}] column/row/mlp vs dense: ok", flush=True)


def checks(rank, world):
    run_all(None, "degree 4, world group")
    counts = check_mlp_collective_count(None)
    if rank == 0:
        print(f"[degree 4] ParallelMLP collectives: {counts}", flush=True)
    # new_group is collective: every rank creates both subgroups, in the same order.
    pairs = [dist.new_group([0, 1]), dist.new_group([2, 3])]
    mine, other = pairs[rank // 2], pairs[1 - rank // 2]
    run_all(mine, "degree 2, subgroups [0,1] and [2,3]")
    check_mlp_collective_count(mine)
    check_not_member(other)


if __name__ == "__main__":
    from worker import run_checks  # beside this script; torchrun puts its folder on sys.path

    run_checks(checks, "tp")
