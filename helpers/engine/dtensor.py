"""Engine side of ``cluster.pull_dtensor(name)``: DTensors as plain data.

Shipped by reference (``cluster.apply(describe, "W")``); imports only torch. Nothing here runs a
collective: a DTensor's local shard, placements and mesh are facts each rank already holds.
"""

from __future__ import annotations

from .namespace import user_ns

__all__ = ["placement_data", "placement_text", "describe_mesh", "describe_dtensor", "describe",
           "param_placements"]


def placement_data(p) -> dict:
    """``Shard(1) -> {"kind": "shard", "dim": 1}``; ``Replicate()``; ``Partial(sum)``."""
    kind = type(p).__name__
    if p.is_shard():
        return {"kind": "shard", "dim": int(p.dim)}
    if p.is_replicate():
        return {"kind": "replicate"}
    if p.is_partial():
        return {"kind": "partial", "op": str(getattr(p, "reduce_op", "sum"))}
    return {"kind": kind.lower()}


def placement_text(p) -> str:
    """``"Shard(0)"``, ``"Replicate()"``, ``"Partial(sum)"``: one spelling on every torch version."""
    d = placement_data(p)
    if d["kind"] == "shard":
        return f"Shard({d['dim']})"
    if d["kind"] == "partial":
        return f"Partial({d['op']})"
    return "Replicate()" if d["kind"] == "replicate" else d["kind"]


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
        "placements": [placement_data(p) for p in t.placements],
        "shape": tuple(int(s) for s in t.shape),
        "local": t.to_local().detach().cpu(),
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
    import torch

    ns = user_ns()
    if name not in ns:
        return {"kind": "missing", "rank": _rank()}
    out = _describe_value(ns[name])
    out["rank"] = _rank()
    if "local" in out and not isinstance(out["local"], torch.Tensor):  # pragma: no cover
        out["local"] = torch.as_tensor(out["local"])
    return out


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_initialized() else 0


def param_placements(name: str) -> dict:
    """``{parameter name: "Shard(0)" | ... | "dense"}`` of the module ``name`` on this rank."""
    from torch.distributed.tensor import DTensor

    module = user_ns().get(name)
    if module is None or not hasattr(module, "named_parameters"):
        return {}
    return {n: (", ".join(placement_text(pl) for pl in p.placements) if isinstance(p, DTensor) else "dense")
            for n, p in module.named_parameters()}
