"""Engine-side code of tests/cluster/test_tp_cluster.py: plain functions, shipped by reference.

The test module loads this file on every engine once (what a notebook's first ``%%px``
cells would do)::

    cluster.apply(load_module, "tp_cluster_engine", __file__)   # helpers.engine.namespace
    cluster.apply(tp_cluster_engine.setup)                       # the TP groups, see below

and then calls its functions on every rank with ``cluster.apply(tp_cluster_engine.primitive,
...)``: ipyparallel sends a module-level function with its module's name, and the engine
runs it with the globals of the module registered under that name, so every call sees the
groups that :func:`setup` stored in this module (``GROUPS``).  Results come back as a list
ordered by rank.  Nothing here is defined in the engines' interactive namespace.

TP degrees 1, 2 and 4 are all exercised on the same 4 ranks:

    degree 4: the world group (``group=None``)        ranks {0, 1, 2, 3}
    degree 2: ``dist.new_group([0, 1])``, ``([2, 3])`` ranks {0, 1} and {2, 3}
    degree 1: ``dist.new_group([r])`` for every r       one rank each

The worker functions of ``tests/torchrun/tp_torchrun_worker.py`` are loaded the same way (module
``tp_torchrun_worker``) and run with this module's groups by :func:`with_group`.
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist
import torch.nn as nn

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if REPO not in sys.path:  # the engines' cwd and sys.path need not contain this checkout
    sys.path.insert(0, REPO)
from helpers import tp  # noqa: E402
from helpers.models import MLP  # noqa: E402

# ------------------------------------------------------------------ state (set by setup)
GROUPS: dict = {}        # {degree: this rank's group}; None = the world group
OTHER_PAIR = None        # a degree-2 group this rank is NOT in
_MADE: list = []         # every group setup() created, for teardown()


def setup() -> dict:
    """Create the TP groups (collective: every rank creates every group, in the same order).

    Returns where this engine imports ``helpers.tp`` from, for itself and for the
    torchrun worker (the fixture checks both are the test process's checkout).
    """
    global OTHER_PAIR
    from torch.distributed.tensor.debug import CommDebugMode  # noqa: F401  (slow first import)

    rank, world = dist.get_rank(), dist.get_world_size()
    pairs = [dist.new_group([0, 1]), dist.new_group([2, 3])]
    singles = [dist.new_group([r]) for r in range(world)]
    _MADE[:] = pairs + singles
    GROUPS.clear()
    GROUPS.update({4: None, 2: pairs[rank // 2], 1: singles[rank]})
    OTHER_PAIR = pairs[1 - rank // 2]
    worker = sys.modules.get("tp_torchrun_worker")
    return dict(tp=os.path.realpath(tp.__file__),
                worker_tp=os.path.realpath(worker.tp.__file__) if worker else None)


def teardown(modules=("tp_torchrun_worker", "tp_cluster_engine")) -> list[str]:
    """Destroy the subgroups (local), forget the state, unregister the loaded modules.

    Returns the modules still registered afterwards (empty: the engine is as it was).
    """
    global OTHER_PAIR
    for g in _MADE:
        if g is not dist.GroupMember.NON_GROUP_MEMBER:
            try:
                dist.destroy_process_group(g)
            except Exception:
                pass
    _MADE.clear()
    GROUPS.clear()
    OTHER_PAIR = None
    for name in modules:
        sys.modules.pop(name, None)
    return [name for name in modules if name in sys.modules]


# ------------------------------------------------------------------ small helpers
def counts(mode) -> dict:
    """{op: n} from a CommDebugMode, e.g. {"allreduce": 1} (the worker's naming)."""
    return {str(op).split(".")[-1].rstrip("_"): n for op, n in mode.get_comm_counts().items()}


def base(*shape) -> torch.Tensor:
    """1, 2, 3, ... in the given shape (float32, exact small integers)."""
    n = 1
    for s in shape:
        n *= s
    return torch.arange(1, n + 1, dtype=torch.float32).reshape(*shape)


def group_facts() -> dict:
    """{degree: (global ranks of this rank's group, group rank, group size, tp_degree_and_rank)}."""
    out = {}
    for degree, g in GROUPS.items():
        pg = dist.group.WORLD if g is None else g
        out[degree] = (dist.get_process_group_ranks(pg), dist.get_rank(g),
                       dist.get_world_size(g), tp.tp_degree_and_rank(g))
    return out


def world_all_reduce() -> float:
    """All-reduce a one on the world group: completes only if no rank is stuck elsewhere."""
    t = torch.ones(1)
    dist.all_reduce(t)
    return t.item()


def with_group(func, degree, *args, **kwargs):
    """``func(group, *args, **kwargs)`` with this rank's group at ``degree``; ``degree="other"``:
    the pair this rank is not in.  ``func`` is shipped by reference (a worker function)."""
    group = OTHER_PAIR if degree == "other" else GROUPS[degree]
    return func(group, *args, **kwargs)


def check_layers(degree: int, bias: bool) -> str:
    """The torchrun worker's checks, unchanged, with this rank's group (assert_close here)."""
    import tp_torchrun_worker as worker  # registered by load_module on the engines

    g = GROUPS[degree]
    for flag in (True, False):
        worker.check_column(g, bias=bias, gather_output=flag, seed=3)
        worker.check_row(g, bias=bias, input_is_parallel=flag, seed=4)
    worker.check_mlp(g, bias=bias, seed=5)
    return "ok"


# ------------------------------------------------------------------ the four primitives
def primitive(name: str, degree: int, lead: tuple, k: int) -> dict:
    """Run one primitive forward + backward; inputs are hand-computable (see the tests)."""
    from torch.distributed.tensor.debug import CommDebugMode

    rank = dist.get_rank()
    g = GROUPS[degree]
    p = dist.get_world_size(g)
    if name == "f":
        x, dy = base(*lead, k), (rank + 1) * base(*lead, k)
        fn = tp.copy_to_tp_region
    elif name == "g":
        x, dy = (rank + 1) * base(*lead, k), 10 * (rank + 1) * base(*lead, k)
        fn = tp.reduce_from_tp_region
    elif name == "gather":
        x, dy = (rank + 1) * base(*lead, k), (rank + 1) * base(*lead, k * p)
        fn = tp.gather_from_tp_region
    elif name == "scatter":
        x, dy = base(*lead, k * p), (rank + 1) * base(*lead, k)
        fn = tp.scatter_to_tp_region
    else:
        raise ValueError(name)
    x = x.requires_grad_()
    with CommDebugMode() as fwd:
        y = fn(x, group=g)
    with CommDebugMode() as bwd:
        y.backward(dy)
    return dict(y=y.detach().clone(), x_grad=x.grad.clone(), fwd=counts(fwd), bwd=counts(bwd))


# ------------------------------------------------------------------ layers
def layer_case(kind, degree, bias, flag, d_in, d_out, seed, x, dy) -> dict:
    """Shard a dense layer built from ``seed``, run forward + backward; return this rank's
    output, input grad and parameter grads (shards), for the kernel to compare."""
    g = GROUPS[degree]
    p, r = tp.tp_degree_and_rank(g)
    torch.manual_seed(seed)          # the same master weights on every rank (and kernel)
    if kind == "mlp":
        dense = MLP(d_in, d_out, bias=bias)
        layer = tp.ParallelMLP.from_dense(dense.w1, dense.w2, group=g)
    elif kind == "column":
        dense = nn.Linear(d_in, d_out, bias=bias)
        layer = tp.ColumnParallelLinear.from_linear(dense, gather_output=flag, group=g)
    elif kind == "row":
        dense = nn.Linear(d_in, d_out, bias=bias)
        layer = tp.RowParallelLinear.from_linear(dense, input_is_parallel=flag, group=g)
    else:
        raise ValueError(kind)
    del dense                        # the engine keeps its shard only
    # X: (B, d_in) on every rank; row-parallel with input_is_parallel takes X_r (B, d_in/p)
    if kind == "row" and flag:
        w = d_in // p
        x = x[:, r * w:(r + 1) * w]
    # dY: (B, d_out); column-parallel without gather_output gets its dY_r (B, d_out/p)
    if kind == "column" and not flag:
        w = d_out // p
        dy = dy[:, r * w:(r + 1) * w]
    x = x.detach().clone().requires_grad_()
    y = layer(x)
    y.backward(dy)
    return dict(y=y.detach().clone(), x_grad=x.grad.clone(),
                grads={n: q.grad.clone() for n, q in layer.named_parameters()})


# ------------------------------------------------------------------ refusals
def _build(what, a, b, g) -> None:
    """Build the thing named ``what`` (a refused one raises ValueError)."""
    if what == "column":
        tp.ColumnParallelLinear(a, b, group=g)
    elif what == "column.from_linear":
        tp.ColumnParallelLinear.from_linear(nn.Linear(a, b), group=g)
    elif what == "row":
        tp.RowParallelLinear(a, b, group=g)
    elif what == "row.from_linear":
        tp.RowParallelLinear.from_linear(nn.Linear(a, b), group=g)
    elif what == "mlp":
        tp.ParallelMLP(a, b, group=g)
    elif what == "mlp.from_dense":
        m = MLP(a, b)
        tp.ParallelMLP.from_dense(m.w1, m.w2, group=g)
    elif what == "scatter":
        tp.scatter_to_tp_region(torch.ones(2, a, requires_grad=True), group=g)
    elif what == "row.forward_full_input":   # input_is_parallel but full X given
        tp.RowParallelLinear(a, b, group=g)(torch.ones(2, a))
    else:
        raise KeyError(what)


def refusals(degree: int, cases) -> dict:
    """Build each refused thing (expect ValueError on every rank, before any collective),
    then prove no rank is stuck in a collective: real all-reduces on the group and world."""
    from torch.distributed.tensor.debug import CommDebugMode

    g = GROUPS[degree]
    out = []
    for what, a, b in cases:
        with CommDebugMode() as mode:
            try:
                _build(what, a, b, g)
            except ValueError as e:
                err, msg = "ValueError", str(e)
            except Exception as e:                      # reported, not raised: see kernel
                err, msg = type(e).__name__, str(e)
            else:
                err, msg = None, None
        out.append(dict(what=what, error=err, msg=msg, comms=counts(mode)))
    t = torch.ones(1)
    dist.all_reduce(t, group=g)                         # completes: no peer is stuck
    w = torch.tensor([float(dist.get_rank())])
    dist.all_reduce(w)
    return dict(refusals=out, group_sum=t.item(), world_sum=w.item())
