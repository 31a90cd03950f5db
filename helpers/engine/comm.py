"""Collectives counted *and weighed* on an engine: PyTorch's ``CommDebugMode`` plus bytes.

Imports only torch. ``CommDebugMode`` (torch.distributed.tensor.debug) counts the collectives
DTensor issues; :class:`CommBytes` also adds up each collective's payload, the tensor this
rank hands in, and the bytes a ring algorithm sends per rank for it:

    all_reduce of N bytes            sends 2·(p-1)/p · N      (a reduce-scatter, then an all-gather)
    reduce_scatter of N bytes in     sends   (p-1)/p · N
    all_gather of an N/p-byte shard  sends   (p-1)   · N/p  = (p-1)/p · N

    with CommBytes(p) as comm:
        y = block(x)
    comm.summary()   # {"all_reduce": {"count": 2, "payload": 4096, "sent": 6144}, ...}
"""

from __future__ import annotations

import warnings
from collections import defaultdict

import torch
from torch.distributed.tensor import DTensor
from torch.distributed.tensor.debug import CommDebugMode
from torch.distributed.tensor.debug._comm_mode import c10d_collective_ops

__all__ = ["CommBytes", "short_name", "ring_bytes_sent"]


def short_name(op) -> str:
    """'c10d_functional.all_gather_into_tensor' → 'all_gather'."""
    name = str(op).split(".")[-1].rstrip("_")
    for short in ("all_reduce", "all_gather", "reduce_scatter", "all_to_all", "broadcast"):
        if name.replace("allreduce", "all_reduce").replace("allgather", "all_gather").startswith(short):
            return short
    return name


def ring_bytes_sent(kind: str, payload: int, p: int) -> float:
    """Bytes one rank sends for one collective with a ring algorithm (payload = its input)."""
    if p <= 1:
        return 0.0
    if kind == "all_reduce":
        return 2 * (p - 1) / p * payload
    if kind == "reduce_scatter":
        return (p - 1) / p * payload
    if kind == "all_gather":
        return (p - 1) * payload
    return (p - 1) / p * payload


def _nbytes(x) -> int:
    if isinstance(x, torch.Tensor):
        return x.numel() * x.element_size()
    if isinstance(x, (list, tuple)):
        return sum(_nbytes(t) for t in x)
    return 0


class CommBytes(CommDebugMode):
    """CommDebugMode that also records, per collective kind, its count, payload and ring bytes sent.

    p: the number of ranks in the group the collectives run over.
    """

    def __init__(self, p: int):
        super().__init__()
        self.p = p
        self.payload = defaultdict(int)
        self.sent = defaultdict(float)
        self.count = defaultdict(int)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        packet = getattr(func, "_overloadpacket", None)
        if (packet is not None and not any(t == DTensor for t in types)
                and (packet in self.comm_registry or packet in c10d_collective_ops)):
            kind = short_name(packet)
            n = _nbytes(args[0]) if args else 0
            self.count[kind] += 1
            self.payload[kind] += n
            self.sent[kind] += ring_bytes_sent(kind, n, self.p)
        return super().__torch_dispatch__(func, types, args, kwargs)

    def __enter__(self):
        # CommDebugMode's module tracker uses full backward hooks, which warn when the inputs
        # need no grad (token ids): expected here, not the learner's problem.
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        return super().__enter__()

    def summary(self) -> dict:
        """{kind: {"count", "payload", "sent"}} for every collective kind seen."""
        return {k: {"count": self.count[k], "payload": self.payload[k], "sent": self.sent[k]}
                for k in sorted(self.count)}
