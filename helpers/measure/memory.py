"""What a rank really holds: bytes of parameters, gradients, optimizer state and activations.

Runs on a rank (torch only; an engine or torchrun). Every number is a **storage size**: the bytes of
the memory blocks behind the tensors, each block counted once (a view, a DTensor's local shard,
a waiting collective's result, FSDP2's gradients in one flat buffer are not counted twice). On a
GPU, ``torch.cuda.max_memory_allocated`` gives the allocator's own peak beside it.

Activations are the tensors autograd saves for the backward (``saved_tensors_hooks``), counted
when they are saved, minus the parameters (autograd saves the weights too, but those are
parameters)::

    with saved_activation_bytes(device, params=block.parameters()) as mem:
        loss = block(x).sum()
    mem.saved_bytes   # bytes this rank holds for the backward; mem.peak_bytes on a GPU
"""

from __future__ import annotations

import torch

__all__ = ["local_tensor", "storage_bytes", "tensor_bytes", "SavedActivations", "saved_activation_bytes",
           "measure_training_step"]


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    """The plain tensor that owns the memory: a DTensor's local shard (FSDP2 and TP parameters
    are DTensors), a waiting collective's result (``AsyncCollectiveTensor.elem``), or ``t``."""
    inner = getattr(t, "_local_tensor", None)
    if not isinstance(inner, torch.Tensor):
        inner = getattr(t, "elem", None)
    return local_tensor(inner) if isinstance(inner, torch.Tensor) else t


def _storage_key(t: torch.Tensor):
    """((device, storage address), bytes) of the storage behind ``t`` (a DTensor: its local shard);
    (None, 0) for a tensor without one."""
    t = local_tensor(t)
    try:
        s = t.untyped_storage()
    except RuntimeError:  # a wrapper subclass without real storage
        return None, 0
    return (t.device.type, t.device.index, s.data_ptr()), s.nbytes()


def storage_bytes(tensors) -> int:
    """Bytes of the distinct storages behind ``tensors`` (DTensors: their local shards)."""
    return sum(dict(_storage_key(t) for t in tensors if t is not None).values())   # each storage once


def tensor_bytes(t: torch.Tensor) -> int:
    """Bytes of the storage behind ``t`` (a DTensor: its local shard)."""
    return storage_bytes([t])


class SavedActivations:
    """Context manager: bytes of the tensors autograd saves for the backward inside it.

    ``device``: on a GPU, ``peak_bytes`` is the allocator's peak above the level at entry.
    ``params``: tensors not to count (the weights: autograd saves them too); ``exclude``: a module
    whose parameters are not counted (read at each save, so FSDP2's gathered weights are
    recognised too). Also spelled ``saved_activation_bytes(device, params=...)``.
    """

    def __init__(self, device=None, params=(), exclude: torch.nn.Module | None = None):
        self.exclude = exclude
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.seen: dict = {}
        self.peak_bytes: int | None = None
        self._fixed = {_storage_key(p)[0] for p in params}
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._base = 0

    @property
    def saved_bytes(self) -> int:
        return sum(self.seen.values())

    def _pack(self, t):
        if not isinstance(t, torch.nn.Parameter):
            key, nbytes = _storage_key(t)
            excluded = self.exclude.parameters() if self.exclude is not None else ()
            if nbytes and key not in self.seen and key not in self._fixed | {_storage_key(p)[0] for p in excluded}:
                self.seen[key] = nbytes                    # a tensor without storage has 0 bytes: not counted
        return t

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self._hooks.__exit__(*exc)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device) - self._base

    def __repr__(self) -> str:
        peak = "" if self.peak_bytes is None else f", peak {self.peak_bytes} B"
        return f"SavedActivations(saved {self.saved_bytes} B in {len(self.seen)} storages{peak})"


#: ``with saved_activation_bytes(device, params=...) as mem:`` (the notebooks' spelling)
saved_activation_bytes = SavedActivations


def measure_training_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, inputs, loss_fn,
                          device: torch.device | None = None) -> dict:
    """Run one training step (forward, backward, optimizer step) and measure this rank's memory.

    Activations are watched during ``model(inputs)`` only (the loss's own saved tensors are left
    out); the loss is ``loss_fn(output)``.
    Returns ``{"parameters", "gradients", "optimizer state", "activations", "peak_allocated"}`` in
    bytes; ``peak_allocated`` is ``torch.cuda.max_memory_allocated`` on a GPU, else None.
    """
    cuda = device is not None and torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    optimizer.zero_grad(set_to_none=True)
    with SavedActivations(exclude=model) as acts:
        out = model(inputs)
    loss_fn(out).backward()
    optimizer.step()
    return {"parameters": storage_bytes(model.parameters()),
            "gradients": storage_bytes(p.grad for p in model.parameters()),
            # AdamW's exp_avg and exp_avg_sq (and its 4-byte step counters), as stored
            "optimizer state": storage_bytes(v for state in optimizer.state.values() for v in state.values()
                                             if isinstance(v, torch.Tensor)),
            "activations": acts.saved_bytes,
            "peak_allocated": torch.cuda.max_memory_allocated(device) if cuda else None}
