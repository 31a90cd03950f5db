"""Engine side of ``cluster.pull_dtensor(name)``: DTensors as plain data.

Shipped by reference (``cluster.apply(describe, "W")``); imports only torch. Nothing here runs a
collective: a DTensor's local shard, placements and mesh are facts each rank already holds.
"""

from __future__ import annotations

from ..common.placements import describe as describe_placements
from ..common.placements import text_of
from .namespace import to_cpu, user_ns

__all__ = ["describe_dtensor", "describe", "param_placements"]


def describe_dtensor(t) -> dict:
    mesh, coord = t.device_mesh, t.device_mesh.get_coordinate()
    return {
        "kind": "dtensor",
        "placements": [text_of(p) for p in t.placements],   # "Shard(0)", ... (common.placements)
        "shape": tuple(int(s) for s in t.shape),
        "local": to_cpu(t),                                  # this rank's local shard
        "mesh": {  # its shape, dim names, rank grid, and this rank's coordinate
            "shape": tuple(int(s) for s in mesh.shape),
            "dim_names": tuple(mesh.mesh_dim_names) if mesh.mesh_dim_names else None,
            "ranks": mesh.mesh.tolist(),
            "coordinate": tuple(int(c) for c in coord) if coord is not None else None,
        },
    }


def describe(name: str) -> dict:
    """This rank's DTensor ``name`` (or dict of DTensors) as plain data; never raises for a bad name."""
    import torch
    from torch.distributed.tensor import DTensor

    ns = user_ns()
    if name not in ns:
        return {"kind": "missing"}
    value = ns[name]
    if isinstance(value, DTensor):
        return describe_dtensor(value)
    if isinstance(value, dict) and value and all(isinstance(v, DTensor) for v in value.values()):
        return {"kind": "dict", "items": {str(k): describe_dtensor(v) for k, v in value.items()}}
    if isinstance(value, torch.Tensor):
        return {"kind": "other", "type": f"a plain torch.Tensor of shape {tuple(value.shape)}"}
    return {"kind": "other", "type": f"a {type(value).__name__}"}


def param_placements(name: str) -> dict:
    """``{parameter name: "Shard(0)" | ... | "dense"}`` of the module ``name`` on this rank."""
    from torch.distributed.tensor import DTensor

    module = user_ns().get(name)
    if not hasattr(module, "named_parameters"):  # missing (None) or not a module
        return {}
    return {n: (describe_placements(p.placements) if isinstance(p, DTensor) else "dense")
            for n, p in module.named_parameters()}
