"""What a rank really holds: bytes of parameters, gradients, optimizer state and activations.

Runs on an engine (torch only). Every number is a **storage size**: the bytes of the memory
blocks behind the tensors, each block counted once (a view, a DTensor's local shard, FSDP2's
gradients that live in one flat buffer are not counted twice). On a GPU,
``torch.cuda.max_memory_allocated`` gives the allocator's own peak beside it.

    m = measure_training_step(model, opt, x, lambda out: F.mse_loss(out, y))
    # {'parameters': 101632, 'gradients': 101632, 'optimizer state': 203392, 'activations': ...,
    #  'peak_allocated': None}

Activations are the tensors autograd saves for the backward (``saved_tensors_hooks``), counted
when they are saved, minus the parameters (autograd saves the weights too, but those are
counted as parameters).
"""

from __future__ import annotations

import torch

__all__ = ["local_tensor", "storage_bytes", "param_bytes", "grad_bytes", "optimizer_state_bytes",
           "SavedActivations", "measure_training_step"]


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's local shard (FSDP2 and TP parameters are DTensors), or the tensor itself."""
    return t.to_local() if hasattr(t, "to_local") and hasattr(t, "placements") else t


def _storage_key(t: torch.Tensor):
    s = t.untyped_storage()
    return (t.device.type, t.device.index, s.data_ptr()), s.nbytes()


def storage_bytes(tensors) -> int:
    """Bytes of the distinct storages behind ``tensors`` (DTensors: their local shards)."""
    seen = {}
    for t in tensors:
        if t is None:
            continue
        key, nbytes = _storage_key(local_tensor(t))
        if nbytes:
            seen[key] = nbytes
    return sum(seen.values())


def param_bytes(model: torch.nn.Module) -> int:
    return storage_bytes(p for p in model.parameters())


def grad_bytes(model: torch.nn.Module) -> int:
    return storage_bytes(p.grad for p in model.parameters())


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """AdamW's ``exp_avg`` and ``exp_avg_sq`` (and its 4-byte ``step`` counters), as stored."""
    return storage_bytes(v for state in optimizer.state.values() for v in state.values()
                         if isinstance(v, torch.Tensor))


class SavedActivations:
    """Context manager: bytes of the tensors autograd saves for the backward inside it.

    ``exclude``: a module whose parameters are not counted (read at each save, so FSDP2's
    gathered weights are recognised too).
    """

    def __init__(self, exclude: torch.nn.Module | None = None):
        self.exclude = exclude
        self.seen: dict = {}
        self._hooks = None

    @property
    def bytes(self) -> int:
        return sum(self.seen.values())

    def _param_keys(self):
        if self.exclude is None:
            return set()
        return {_storage_key(local_tensor(p))[0] for p in self.exclude.parameters()}

    def _pack(self, t):
        key, nbytes = _storage_key(local_tensor(t))
        if key not in self.seen and nbytes and key not in self._param_keys():
            self.seen[key] = nbytes
        return t

    def __enter__(self):
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self._hooks.__exit__(*exc)
        return False


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
    return {
        "parameters": param_bytes(model),
        "gradients": grad_bytes(model),
        "optimizer state": optimizer_state_bytes(optimizer),
        "activations": acts.bytes,
        "peak_allocated": torch.cuda.max_memory_allocated(device) if cuda else None,
    }
