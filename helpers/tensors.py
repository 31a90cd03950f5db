"""Small tensor utilities shared by the notebook-side modules (reference, viz, cluster).

Layouts use PyTorch's DTensor vocabulary: ``"replicate"``, ``"shard(d)"``, ``"partial"``.
torch and numpy only; nothing here runs a collective.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import torch

__all__ = ["VALID_LAYOUTS", "to_f64", "as_shard_list", "parse_layout", "fmt_shape",
           "fmt_index", "to_2d"]

VALID_LAYOUTS = ("replicate", "shard(d)", "partial")
LAYOUT_HELP = (
    "valid layouts: 'replicate' (every rank holds the full tensor), "
    "'shard(d)' for an integer dim d, e.g. 'shard(0)' or 'shard(-1)' (blocks concatenated along d "
    "in rank order), 'partial' (every rank holds a partial sum; summed over ranks)"
)
_SHARD_RE = re.compile(r"^shard\((-?\d+)\)$")


def to_f64(x: Any, what: str) -> torch.Tensor:
    """Any tensor / ndarray / number -> float64 CPU tensor (detached)."""
    if isinstance(x, torch.Tensor):
        t = x.detach()
        if t.is_complex():
            raise TypeError(f"{what}: complex tensors are not supported")
        return t.to(device="cpu", dtype=torch.float64)
    if isinstance(x, np.ndarray) or np.isscalar(x) or isinstance(x, (list, tuple)):
        a = np.asarray(x)
        if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
            raise TypeError(f"{what}: cannot compare values of dtype {a.dtype}")
        if np.iscomplexobj(a):
            raise TypeError(f"{what}: complex arrays are not supported")
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64))
    raise TypeError(
        f"{what}: expected a torch.Tensor or numpy array, got {type(x).__name__}"
    )


def as_shard_list(shards: Any) -> list:
    """Accept a list/tuple by rank, or a {rank: tensor} dict with keys 0..p-1."""
    if isinstance(shards, dict):
        keys = sorted(shards)
        if keys != list(range(len(keys))):
            raise ValueError(f"shards dict must be keyed by rank 0..{len(keys) - 1}, got keys {keys}")
        return [shards[k] for k in keys]
    if isinstance(shards, (torch.Tensor, np.ndarray)):
        raise TypeError(
            "shards must be a list with one tensor per rank (rank 0 first), "
            f"got a single {type(shards).__name__}; wrap it as [t] for one rank"
        )
    try:
        return list(shards)
    except TypeError:
        raise TypeError(
            f"shards must be a list with one tensor per rank, got {type(shards).__name__}"
        ) from None


def parse_layout(layout: str) -> tuple[str, int | None]:
    """``"shard(-1)" -> ("shard", -1)``, ``"replicate" -> ("replicate", None)``.

    Case and spaces are ignored. Raises ValueError listing the valid layouts.
    """
    if not isinstance(layout, str):
        raise ValueError(f"layout must be a string, got {layout!r}; {LAYOUT_HELP}")
    s = layout.strip().lower().replace(" ", "")
    if s in ("replicate", "partial"):
        return s, None
    m = _SHARD_RE.match(s)
    if m:
        return "shard", int(m.group(1))
    raise ValueError(f"unknown layout {layout!r}; {LAYOUT_HELP}")


def fmt_shape(shape) -> str:
    return str(tuple(int(s) for s in shape))


def fmt_index(flat: int, shape) -> str:
    if len(shape) == 0:
        return "()"
    return str(tuple(int(i) for i in np.unravel_index(int(flat), tuple(shape))))


def to_2d(a):
    """A tensor or array as 2-D for drawing: scalars 1×1, vectors 1×N, >2-D flattened to
    (prod(leading dims), last dim)."""
    if a.ndim == 0:
        return a.reshape(1, 1)
    if a.ndim == 1:
        return a.reshape(1, -1)
    if a.ndim == 2:
        return a
    return a.reshape(-1, a.shape[-1])
