"""Engine side of ``cluster.pull_dtensor(name)`` and of the comm traces: DTensors as plain data.

Shipped by reference (``cluster.apply(describe, "W")``); imports only torch. Nothing here runs a
collective: a DTensor's local shard, placements and mesh are facts each rank already holds.
"""

from __future__ import annotations

from ..common.placements import describe as describe_placements
from ..common.placements import text_of
from .namespace import to_cpu, user_ns

__all__ = ["describe_mesh", "describe_dtensor", "describe", "comm_counts", "comm_trace", "param_placements"]


def describe_mesh(mesh) -> dict:
    """Shape, dim names, the rank grid and this rank's coordinate of a DeviceMesh."""
    coord = mesh.get_coordinate()
    return {
        "shape": tuple(int(s) for s in mesh.shape),
        "dim_names": tuple(mesh.mesh_dim_names) if mesh.mesh_dim_names else None,
        "ranks": mesh.mesh.tolist(),
        "coordinate": tuple(int(c) for c in coord) if coord is not None else None,
        "device_type": mesh.device_type,
    }


def describe_dtensor(t) -> dict:
    return {
        "kind": "dtensor",
        "placements": [text_of(p) for p in t.placements],   # "Shard(0)", ... (common.placements)
        "shape": tuple(int(s) for s in t.shape),
        "local": to_cpu(t),                                  # this rank's local shard
        "mesh": describe_mesh(t.device_mesh),
    }


def _describe_value(value) -> dict:
    import torch
    from torch.distributed.tensor import DTensor

    if isinstance(value, DTensor):
        return describe_dtensor(value)
    if isinstance(value, dict) and value and all(isinstance(v, DTensor) for v in value.values()):
        return {"kind": "dict", "items": {str(k): describe_dtensor(v) for k, v in value.items()}}
    if isinstance(value, torch.Tensor):
        return {"kind": "other", "type": f"a plain torch.Tensor of shape {tuple(value.shape)}"}
    return {"kind": "other", "type": f"a {type(value).__name__}"}


def describe(name: str) -> dict:
    """This rank's DTensor ``name`` (or dict of DTensors) as plain data; never raises for a bad name."""
    ns = user_ns()
    out = _describe_value(ns[name]) if name in ns else {"kind": "missing"}
    out["rank"] = _rank()
    return out


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_initialized() else 0


def _op_name(op) -> str:
    """``c10d_functional.all_gather_into_tensor`` -> ``all_gather``; ``c10d.allreduce_`` -> ``all_reduce``."""
    s = str(op).split(".")[-1].strip("_").replace("allreduce", "all_reduce").replace("allgather", "all_gather")
    for short in ("all_reduce", "all_gather", "reduce_scatter", "all_to_all", "broadcast", "scatter"):
        if s.startswith(short):
            return short
    return s


def comm_counts(comm_mode) -> dict[str, int]:
    """``{"all_reduce": 2, ...}``: every collective a ``CommDebugMode`` saw, by short name."""
    out: dict[str, int] = {}
    for op, n in comm_mode.get_comm_counts().items():
        out[_op_name(op)] = out.get(_op_name(op), 0) + int(n)
    return out


def comm_trace(comm_mode) -> dict[str, dict[str, dict[str, int]]]:
    """``{module: {"forward": {"all_reduce": 1}, "backward": {...}}}`` from a ``CommDebugMode``.

    Modules are named by their path (``"Block.attn.q"``), in the order the forward met them;
    ``"Global"`` (the whole region) is left out.
    """
    out = {}
    for module, passes in comm_mode.comm_module_counts.items():
        if module == "Global":
            continue
        out[str(module)] = {}
        for p in ("forward", "backward"):
            counts: dict[str, int] = {}
            for op, n in passes.get(p, {}).items():
                counts[_op_name(op)] = counts.get(_op_name(op), 0) + int(n)
            out[str(module)][p] = counts
    return out


def param_placements(name: str) -> dict:
    """``{parameter name: "Shard(0)" | ... | "dense"}`` of the module ``name`` on this rank."""
    from torch.distributed.tensor import DTensor

    module = user_ns().get(name)
    if module is None or not hasattr(module, "named_parameters"):
        return {}
    return {n: (describe_placements(p.placements) if isinstance(p, DTensor) else "dense")
            for n, p in module.named_parameters()}
