"""Notebook 08: resharding a checkpoint with ``torch.distributed.checkpoint`` (DCP), checked.

The refusals read only DCP's ``.metadata`` file, the same on every rank, so they come before any collective.
"""

from __future__ import annotations

import os

import torch

from .checks import degrees_text
from .dtensor_local import to_local

__all__ = ["shard_layout", "check_reshard", "saved_shapes", "local_shapes_match", "sgd_step"]


def shard_layout(module) -> dict:
    """{parameter name: ((row offset, col offset), (rows, cols))} of this rank's piece (2-D only), from
    the DTensor's mesh coordinate and placements (even splits, mesh dims in order)."""
    out = {}
    for name, p in module.named_parameters():
        if p.dim() != 2:
            continue
        size, off = list(p.shape), [0, 0]
        placements = list(enumerate(getattr(p, "placements", ())))
        if any(type(pl).__name__ == "_StridedShard" for _, pl in placements):
            placements.reverse()        # FSDP over a TP shard: the TP split is the outer one
        for i, pl in placements:
            if getattr(pl, "dim", None) is not None:          # Shard or FSDP's _StridedShard
                d = pl.dim % 2
                size[d] //= p.device_mesh.size(i)
                off[d] += p.device_mesh.get_coordinate()[i] * size[d]
        out[name] = (tuple(off), tuple(size))
    return out


def saved_shapes(path: str) -> dict:
    """{key: global shape} of every tensor in the DCP checkpoint at ``path`` (reads ``.metadata``)."""
    if not os.path.isdir(path):
        raise ValueError(f"checkpoint folder {path!r} does not exist; pass the folder dcp.save wrote "
                         "(the one holding '.metadata' and the '__<rank>_0.distcp' files)")
    if not os.path.isfile(os.path.join(path, ".metadata")):
        raise ValueError(f"{path!r} holds no DCP '.metadata' file ({sorted(os.listdir(path))[:5]}): "
                         "not a torch.distributed.checkpoint folder")
    from torch.distributed.checkpoint import FileSystemReader
    meta = FileSystemReader(path).read_metadata()
    return {k: tuple(v.size) for k, v in meta.state_dict_metadata.items() if hasattr(v, "size")}


def check_reshard(path: str, sharded_dims: dict, degree: int) -> dict:
    """Refuse a load into TP degree ``degree`` when a saved tensor's sharded dim does not split.

    sharded_dims: {state-dict key: the dim the plan shards} (ColwiseParallel: 0 for weight and
    bias; RowwiseParallel: 1 for the weight). Returns the saved shapes. No collective.
    """
    shapes = saved_shapes(path)
    for key, dim in sharded_dims.items():
        if key not in shapes:
            raise ValueError(f"{key!r} is not in the checkpoint at {path!r}; it holds {sorted(shapes)}")
        n = shapes[key][dim]
        if degree < 1 or n % degree:
            raise ValueError(f"{key}: saved shape {shapes[key]}, dim {dim} = {n} is not divisible by TP degree "
                             f"{degree}; pick a degree in {degrees_text(n)}")
    return shapes


def local_shapes_match(local_sd: dict, model) -> list[str]:
    """The mismatches between a plain per-rank state dict and what ``model`` holds on this rank."""
    want = {k: to_local(v).shape for k, v in model.state_dict().items()}
    return [f"{k}: file {tuple(t.shape)} vs this rank's piece {tuple(want[k])}"
            for k, t in local_sd.items() if k in want and isinstance(t, torch.Tensor) and t.shape != want[k]]


def sgd_step(model, opt, x, target) -> dict:
    """One training step, the same for dense, TP, FSDP x TP: loss = mean((model(x) − target)²),
    backward, ``opt.step()``. Returns the loss, dL/dX and every parameter's gradient, whole
    (``full_tensor()`` of a DTensor gradient: a collective, so every rank calls it)."""
    opt.zero_grad()
    x = x.detach().clone().requires_grad_()
    loss = (model(x) - target).pow(2).mean()
    loss.backward()
    opt.step()
    grads = {k: (p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad).detach().clone()
             for k, p in model.named_parameters()}
    return {"loss": loss.detach(), "dL/dX": x.grad, "grads": grads}
