"""Checks done before any collective: divisibility, mesh shapes, group membership. Every refusal
names the offending numbers and the fix."""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from ..common.numbers import divisors
from ..common.topology import mesh_dims

__all__ = ["degrees_text", "check_divisible", "check_mesh_shape", "shard_range",
           "tp_degree_and_rank", "check_module", "check_input", "check_initialized"]


def degrees_text(size: int) -> str:
    """The degrees that split ``size`` evenly, as every refusal writes them: ``{1, 2, 5, 10}``."""
    return "{" + ", ".join(map(str, divisors(size))) + "}"


def check_divisible(name: str, size: int, degree: int) -> int:
    """Return ``size // degree``; raise ``ValueError`` naming the fix if it does not divide.

    >>> check_divisible("out_features", 10, 4)
    Traceback (most recent call last):
    ValueError: out_features=10 is not divisible by tp degree 4; pick a degree in {1, 2, 5, 10} or pad out_features to 12
    """
    if size <= 0:
        raise ValueError(f"{name}={size} must be a positive integer")
    if degree <= 0:
        raise ValueError(f"tp degree must be a positive integer, got {degree}")
    if size % degree:
        raise ValueError(f"{name}={size} is not divisible by tp degree {degree}; pick a degree in "
                         f"{degrees_text(size)} or pad {name} to {math.ceil(size / degree) * degree}")
    return size // degree


def check_mesh_shape(shape, world_size: int) -> tuple[int, ...]:
    """Refuse a device-mesh shape whose size is not the world size, before any rank builds it.

    >>> check_mesh_shape((2, 4), 4)
    Traceback (most recent call last):
    ValueError: mesh shape (2, 4) needs 8 ranks but world_size is 4; pick (4,) or a 2D shape: (1, 4), (2, 2), (4, 1)
    """
    dims = mesh_dims(shape, example=f"({world_size},)")
    if math.prod(dims) != world_size:
        fits = ", ".join(f"({d}, {world_size // d})" for d in divisors(world_size))
        raise ValueError(f"mesh shape {dims} needs {math.prod(dims)} ranks but world_size is "
                         f"{world_size}; pick ({world_size},) or a 2D shape: {fits}")
    return dims


def shard_range(size: int, degree: int, rank: int, name: str = "size") -> tuple[int, int]:
    """(start, stop) of rank's contiguous slice when ``size`` is split into ``degree`` parts."""
    if not 0 <= rank < degree:
        raise ValueError(f"rank {rank} is outside 0..{degree - 1} for tp degree {degree}")
    n = check_divisible(name, size, degree)
    return rank * n, (rank + 1) * n


def check_initialized() -> None:
    """Refuse to go on before ``init_process_group`` (a collective would fail less clearly)."""
    if not dist.is_initialized():
        raise RuntimeError("torch.distributed is not initialized; call "
                           "dist.init_process_group(...) (or helpers.connect()) first")


def tp_degree_and_rank(group=None) -> tuple[int, int]:
    """(p, rank) of this process inside ``group``; refuses groups it is not part of."""
    check_initialized()
    degree, rank = dist.get_world_size(group), dist.get_rank(group)
    if rank < 0:                                # torch answers -1 for a group this rank is not in
        raise ValueError(f"this process (global rank {dist.get_rank()}) is not a member of "
                         "the given group; pass the group this rank belongs to")
    return degree, rank


def check_module(module, kind, who: str) -> None:
    """Refuse anything but a ``kind`` (``nn.Linear``, ``nn.Embedding``) where a dense layer is split."""
    if not isinstance(module, kind):
        raise TypeError(f"{who} needs an nn.{kind.__name__}, got {type(module).__name__}")


def check_input(x, last_dim: int, expects: str, weight: torch.Tensor) -> None:
    """Shape, device and dtype checks on a layer input, done before any collective."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"input must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() == 0 or x.shape[-1] != last_dim:
        got = x.shape[-1] if x.dim() else "(none, a scalar)"
        raise ValueError(f"input has last dim {got} but {expects}")
    if x.device != weight.device:
        raise ValueError(f"input is on {x.device} but the weight shard is on {weight.device}; "
                         f"move it with x.to({str(weight.device)!r})")
    if x.dtype != weight.dtype:
        raise ValueError(f"input has dtype {x.dtype} but the weight shard has {weight.dtype}; "
                         f"cast it with x.to({weight.dtype})")


