"""ONE comm recorder for every collective a rank issues: counts and bytes, per collective kind,
per module, forward and backward. Torch only (an engine or torchrun).

:class:`CommRecorder` hears about collectives two ways, and weighs both with the one byte
convention of :mod:`helpers.costmodel.collectives` (n = bytes of the full tensor; bytes sent and
received per rank):

* explicitly: pass it as ``counter=`` to the collectives of :mod:`helpers.tp.ops` (``all_gather``,
  ``all_reduce``, ``broadcast``, ``reduce``; SUMMA uses them), which call :meth:`CommRecorder.record`::

      rec = CommRecorder()
      Y = all_gather(Y_i, counter=rec)         # Y_i: (M, N/p) -> Y: (M, N) on every rank
      rec.summary()                            # {"sent": ..., "received": ..., "calls": 1, "ops": {"all_gather": 1}}

* as PyTorch's ``CommDebugMode`` (it is one): every collective DTensor (or ``torch.distributed``)
  issues inside ``with`` is recorded, with the module that issued it and the pass::

      with CommRecorder() as rec:
          block(x).sum().backward()
      rec.by_op()     # {"all_reduce": {"count": 4, "bytes": ..., "sent": ..., "received": ...}}
      comm_trace(rec) # {"Block.attn": {"forward": {"all_reduce": 1}, "backward": {...}}, ...}

  Use one way or the other for a given piece of code: an explicit collective run inside ``with``
  would be heard twice.
"""

from __future__ import annotations

import contextlib
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor
from torch.distributed.tensor.debug import CommDebugMode
from torch.distributed.tensor.debug._comm_mode import c10d_collective_ops

from ..costmodel.collectives import KINDS, bytes_received, bytes_sent

__all__ = ["CommRecord", "CommRecorder", "op_name", "comm_counts", "comm_trace"]


def op_name(op) -> str:
    """``c10d_functional.all_gather_into_tensor`` -> ``all_gather``; ``c10d.allreduce_`` -> ``all_reduce``."""
    s = str(op).split(".")[-1].strip("_").replace("allreduce", "all_reduce").replace("allgather", "all_gather")
    s = s.replace("alltoall", "all_to_all")
    return next((kind for kind in (*KINDS, "scatter") if s.startswith(kind)), s)  # reduce_scatter before reduce


@dataclass
class CommRecord:
    """One collective this rank took part in; ``nbytes``: the full tensor (the byte convention)."""

    op: str
    group_size: int
    nbytes: int
    sent: float
    received: float
    phase: str = "forward"
    module: str = ""


def _nbytes(x) -> int:
    if isinstance(x, (list, tuple)):
        return sum(map(_nbytes, x))
    return x.nbytes if isinstance(x, torch.Tensor) else 0


def _group_size(args, default) -> int:
    """The group size of a functional collective (its group name is the last str argument)."""
    names = [a for a in args if isinstance(a, str)]
    if names:
        with contextlib.suppress(Exception):  # an unknown name, or a torch without it: the recorder's p
            from torch.distributed.distributed_c10d import _resolve_process_group

            return _resolve_process_group(names[-1]).size()
    for a in args:
        if callable(getattr(a, "size", None)) and not isinstance(a, torch.Tensor):
            return a.size()                                # a c10d op's ProcessGroup
    return default if default is not None else dist.get_world_size()


class CommRecorder(CommDebugMode):
    """Every collective this rank issued, one :class:`CommRecord` each (see the module docstring).

    p: the group size to assume for a collective heard through ``CommDebugMode`` whose group
    cannot be read from its arguments (default: the world size).
    """

    def __init__(self, p: int | None = None):
        super().__init__()
        self.p = p
        self.records: list[CommRecord] = []

    # ------------------------------------------------------------------ hearing collectives
    def record(self, op: str, n: int, p: int, *, root: bool = False, phase: str = "forward",
               module: str = "") -> None:
        """One collective ``op`` of a full tensor of ``n`` bytes over ``p`` ranks."""
        self.records.append(CommRecord(op, p, n, bytes_sent(op, n, p, root=root),
                                       bytes_received(op, n, p, root=root), phase, module))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        packet = getattr(func, "_overloadpacket", None)
        if (packet is not None and DTensor not in types
                and (packet in self.comm_registry or packet in c10d_collective_ops)):
            self._hear(op_name(packet), "functional" in str(packet), args)
        return super().__torch_dispatch__(func, types, args, kwargs)

    def _hear(self, op, functional, args):
        if op not in KINDS:
            return
        p = _group_size(args, self.p)
        # functional ops take the input first; c10d ops take the output first, then the input
        inp = args[0] if functional or op in ("all_reduce", "broadcast", "reduce") else args[1]
        root = False
        if op in ("broadcast", "reduce") and not functional and len(args) > 2:   # (tensors, group, root, ...)
            root = isinstance(args[2], int) and args[2] == dist.get_rank(args[1])
        tracker = self.advanced_module_tracker
        self.record(op, _nbytes(inp) * (p if op == "all_gather" else 1), p, root=root,
                    phase="backward" if tracker.is_bw else "forward", module=str(tracker.name))

    def __enter__(self):
        # CommDebugMode's module tracker uses full backward hooks, which warn when the inputs
        # need no grad (token ids): expected here, not the learner's problem.
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        return super().__enter__()

    # ------------------------------------------------------------------ reading them
    def _sel(self, phase):
        return [r for r in self.records if phase is None or r.phase == phase]

    sent = property(lambda self: self.summary()["sent"])
    received = property(lambda self: self.summary()["received"])
    calls = property(lambda self: len(self.records))

    def by_op(self, phase=None) -> dict[str, dict]:
        """``{op: {"count", "bytes", "sent", "received"}}`` (picklable, for ``cluster.pull``)."""
        out: dict[str, Counter] = defaultdict(Counter)
        for r in self._sel(phase):
            out[r.op].update(count=1, bytes=r.nbytes, sent=r.sent, received=r.received)
        return {op: dict(totals) for op, totals in sorted(out.items())}

    def summary(self, phase=None) -> dict:
        """A plain dict: ``{"sent", "received", "calls", "ops": {op: count}}``."""
        sel = self._sel(phase)
        return {"sent": sum(r.sent for r in sel), "received": sum(r.received for r in sel), "calls": len(sel),
                "ops": {k: v["count"] for k, v in self.by_op(phase).items()}}

    def reset(self) -> None:
        self.records.clear()


def _by_short_name(counts) -> dict[str, int]:
    out: Counter[str] = Counter()
    for op, n in counts.items():
        out[op_name(op)] += int(n)
    return dict(out)


def comm_counts(comm_mode) -> dict[str, int]:
    """``{"all_reduce": 2, ...}``: every collective any ``CommDebugMode`` saw (torch's own too), by short name."""
    return _by_short_name(comm_mode.get_comm_counts())


def comm_trace(comm_mode) -> dict[str, dict[str, dict[str, int]]]:
    """``{module: {"forward": {"all_reduce": 1}, "backward": {...}}}`` from a ``CommDebugMode``.

    Modules are named by their path (``"Block.attn.q"``), in the order the forward met them;
    ``"Global"`` (the whole region) is left out.
    """
    return {str(module): {p: _by_short_name(passes.get(p, {})) for p in ("forward", "backward")}
            for module, passes in comm_mode.comm_module_counts.items() if module != "Global"}
