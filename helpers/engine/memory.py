"""Activation memory on an engine: what a forward pass keeps for the backward.

Imports only torch (runs on engines and under torchrun). On the CPU there is no allocator
counter, so :func:`saved_activation_bytes` adds up the *storages* autograd saves for the
backward (each storage once, DTensors by their local shard); on a GPU it also reports
``torch.cuda.max_memory_allocated`` above the level before the forward.

    with saved_activation_bytes() as mem:
        loss = model(x).sum()
    mem.saved_bytes   # bytes held for the backward by this rank
"""

from __future__ import annotations

import contextlib

import torch

__all__ = ["saved_activation_bytes", "ActivationMemory", "tensor_bytes"]


def _local(t: torch.Tensor) -> torch.Tensor:
    """The plain tensor that owns the memory: a DTensor's local shard, a waiting collective's
    result (``AsyncCollectiveTensor.elem``)."""
    for _ in range(4):
        inner = getattr(t, "_local_tensor", None)
        if not isinstance(inner, torch.Tensor):
            inner = getattr(t, "elem", None)
        if not isinstance(inner, torch.Tensor):
            return t
        t = inner
    return t


def _key(t: torch.Tensor):
    try:
        return t.untyped_storage().data_ptr(), t.device
    except RuntimeError:          # a tensor without real storage (e.g. a wrapper subclass)
        return None


def tensor_bytes(t: torch.Tensor) -> int:
    """Bytes of the storage behind ``t`` (a DTensor: its local shard)."""
    t = _local(t)
    return t.untyped_storage().nbytes()


class ActivationMemory:
    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.saved_bytes = 0           # storages saved for backward, each counted once
        self.n_saved = 0
        self.peak_bytes = None         # GPU only: max_memory_allocated above the start level
        self._seen: set = set()

    def _pack(self, t: torch.Tensor):
        local = _local(t)
        key = _key(local)
        if key is not None and key not in self._seen and not isinstance(t, torch.nn.Parameter):
            self._seen.add(key)
            self.saved_bytes += local.untyped_storage().nbytes()
            self.n_saved += 1
        return t

    def __repr__(self) -> str:
        peak = "" if self.peak_bytes is None else f", peak {self.peak_bytes} B"
        return f"ActivationMemory(saved {self.saved_bytes} B in {self.n_saved} storages{peak})"


@contextlib.contextmanager
def saved_activation_bytes(device=None, params=()):
    """Count what autograd saves inside the block (parameters in ``params`` are not counted)."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    mem = ActivationMemory(device)
    for p in params:                      # weights are saved too, but they are not activations
        key = _key(_local(p))
        if key is not None:
            mem._seen.add(key)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    with torch.autograd.graph.saved_tensors_hooks(mem._pack, lambda t: t):
        yield mem
    if cuda:
        torch.cuda.synchronize(device)
        mem.peak_bytes = torch.cuda.max_memory_allocated(device) - base
