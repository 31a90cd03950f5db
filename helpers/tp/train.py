"""Training on a 2-D ("fsdp", "tp") mesh: the batch each rank reads, and gradient clipping whose
norm is taken over both meshes."""

from __future__ import annotations

import math

import torch

__all__ = ["micro_batch", "clip_grad_norm_"]


def micro_batch(x: torch.Tensor, fsdp_rank: int, fsdp_size: int) -> torch.Tensor:
    """A copy of rows ``fsdp_rank·b … (fsdp_rank+1)·b`` of the global batch ``x`` (b = len(x) / fsdp_size).

    Every rank of one TP group has the same FSDP rank, so they get the same micro-batch. A copy,
    so that the micro-batch owns its memory, as a data loader's batch would.

    >>> micro_batch(torch.arange(8), 1, 4)
    tensor([2, 3])
    >>> micro_batch(torch.arange(6), 0, 4)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ValueError: the global batch of 6 samples is not divisible by the FSDP degree 4: ... use a batch of 8
    """
    n = x.shape[0]
    if fsdp_size < 1 or not 0 <= fsdp_rank < fsdp_size:
        raise ValueError(f"fsdp_rank {fsdp_rank} is outside 0..{fsdp_size - 1}")
    if n % fsdp_size:
        raise ValueError(f"the global batch of {n} samples is not divisible by the FSDP degree {fsdp_size}: "
                         f"each FSDP rank needs the same micro-batch size; use a batch of "
                         f"{math.ceil(n / fsdp_size) * fsdp_size}")
    return x.tensor_split(fsdp_size)[fsdp_rank].clone()


@torch.no_grad()
def clip_grad_norm_(parameters, max_norm: float) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_`` for parameters that live on different meshes.

    After TP and FSDP, the norms' weights are DTensors on the 1-D "fsdp" mesh and the linear
    layers' on the 2-D ("fsdp", "tp") mesh; torch's version stacks the per-tensor norms and
    refuses mixed meshes. Here each gradient's norm is completed over its own mesh
    (``full_tensor()`` sums the shards' squares; replicated copies count once), then combined:
    the same total norm and the same clipping factor as on one device. Returns the total norm.
    """
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    norms = [torch.linalg.vector_norm(g, 2.0) for g in grads]
    squares = [(n.full_tensor() if hasattr(n, "full_tensor") else n).float() ** 2 for n in norms]
    total = torch.stack(squares).sum().sqrt()
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for g in grads:
        g.mul_(coef.to(g.device))
    return total
