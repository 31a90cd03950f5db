"""Checker for notebook 03's exercise: the 2-D mesh and both plans (TP on "tp", FSDP on "fsdp").

Every rank describes what it holds (:func:`describe_hybrid`, run on the engines by reference);
the checker judges, in order, the mesh, its TP groups, each weight's placements and the output.
"""

from __future__ import annotations

import torch

from ..common.placements import text_of
from ..engine.namespace import user_ns
from .common import checker, close, f64, max_abs, say

__all__ = ["describe_hybrid", "check_hybrid_plan", "COLUMN", "ROW"]

COLUMN = ("attn.wq.weight", "attn.wk.weight", "attn.wv.weight", "mlp.w1.weight")
ROW = ("attn.wo.weight", "mlp.w2.weight")


# ------------------------------------------------------------------ engine side
def describe_hybrid(mesh_name: str = "ex_mesh", model_name: str = "ex_model", out_name: str = "ex_out") -> dict:
    """On an engine: the mesh's dims and this rank's groups, each parameter's mesh dims and
    placements, and the output (on the CPU). Plain data, safe to send back."""
    ns = user_ns()
    out: dict = {"mesh": None, "params": None, "out": None}
    mesh = ns.get(mesh_name)
    if mesh is not None and hasattr(mesh, "mesh_dim_names"):
        names = tuple(mesh.mesh_dim_names or ())
        out["mesh"] = {"names": names, "shape": tuple(mesh.mesh.shape),
                       "groups": {n: mesh[n].mesh.flatten().tolist() for n in names}}
    elif mesh is not None:
        out["mesh"] = {"type": type(mesh).__name__}
    model = ns.get(model_name)
    if isinstance(model, torch.nn.Module):
        out["params"] = {name: {"dims": tuple(p.device_mesh.mesh_dim_names or ()),
                                "placements": tuple(text_of(pl) for pl in p.placements)}
                         if hasattr(p, "placements") else {"dims": (), "placements": ()}
                         for name, p in model.named_parameters()}
    y = ns.get(out_name)
    if isinstance(y, torch.Tensor):
        out["out"] = (y.full_tensor() if hasattr(y, "full_tensor") else y).detach().cpu()
    return out


# ------------------------------------------------------------------ notebook side
@checker
def check_hybrid_plan(cluster, dense_model, X, fsdp: int = 2, tp: int = 2) -> bool:
    """The exercise: ``ex_mesh`` is (fsdp, tp) with every TP group inside one node, the linear
    layers are column/row-parallel on "tp", every weight is sharded by FSDP on "fsdp", and
    ``ex_out`` on each rank equals ``dense_model`` on that rank's micro-batch of ``X``."""
    infos = cluster.apply(describe_hybrid)
    nodes = cluster.nodes
    first = infos[0]
    if first["mesh"] is None:
        return say(False, 'ex_mesh is still None. Build it with init_device_mesh(device.type, (2, 2), '
                          'mesh_dim_names=("fsdp", "tp")).')
    if "names" not in first["mesh"]:
        return say(False, f"ex_mesh is a {first['mesh']['type']}, not a DeviceMesh: use init_device_mesh(...).")
    names, shape = first["mesh"]["names"], first["mesh"]["shape"]
    if set(names) != {"fsdp", "tp"}:
        return say(False, f'ex_mesh has dims {names}; name them ("fsdp", "tp") (mesh_dim_names=...), '
                          'so that ex_mesh["tp"] and ex_mesh["fsdp"] exist.')
    sizes = dict(zip(names, shape))
    if (sizes["fsdp"], sizes["tp"]) != (fsdp, tp):
        return say(False, f"ex_mesh has fsdp={sizes['fsdp']}, tp={sizes['tp']}; this exercise wants a {fsdp} × {tp} "
                          f"mesh: {tp} ranks per node share each layer, {fsdp} nodes each take their own batch.")
    for r, info in enumerate(infos):
        group = info["mesh"]["groups"]["tp"]
        spans = sorted({nodes[g] for g in group})
        if len(spans) > 1:
            return say(False, f"rank {r}'s TP group is ranks {group}, on {', '.join(spans)}: it crosses the node "
                              'boundary. Ranks fill the LAST mesh dim first: put "tp" last, '
                              'mesh_dim_names=("fsdp", "tp").')
    params = first["params"]
    if params is None:
        return say(False, "ex_model is not a module on the engines; keep the line that builds it.")
    for name, info in params.items():
        short = name.split("blocks.0.")[-1]
        if "tp" not in info["dims"] and short in COLUMN + ROW:
            return say(False, f"{name} is not split by TP: parallelize_module(ex_model, ex_mesh[\"tp\"], plan) "
                              f"with ColwiseParallel() for {', '.join(c.split('.')[-2] for c in COLUMN)} and "
                              f"RowwiseParallel() for {', '.join(c.split('.')[-2] for c in ROW)}.")
        if "fsdp" not in info["dims"]:
            return say(False, f"{name} is not sharded by FSDP: fully_shard(block, mesh=ex_mesh[\"fsdp\"]) for "
                              "each block, then fully_shard(ex_model, mesh=ex_mesh[\"fsdp\"]).")
        pl = dict(zip(info["dims"], info["placements"]))
        want, style = ("Shard(0)", "ColwiseParallel") if short in COLUMN else ("Shard(1)", "RowwiseParallel")
        if short in COLUMN + ROW and pl.get("tp") != want:
            return say(False, f"{name} is {pl.get('tp')} on \"tp\"; it should be {want}: use {style}() for "
                              f"{short.rsplit('.', 1)[0]}.")
        if not pl.get("fsdp", "").startswith("Shard"):
            return say(False, f"{name} is {pl.get('fsdp')} on \"fsdp\": FSDP should shard it (fully_shard).")
    bad = [r for r, info in enumerate(infos) if info["out"] is None]
    if bad:
        return say(False, f"ex_out is not a tensor on rank(s) {bad}: keep the last line of the cell "
                          "(ex_out = ex_model(ex_x)).")
    with torch.no_grad():
        for r, info in enumerate(infos):
            f_rank = info["mesh"]["groups"]["fsdp"].index(r)
            dense = f64(dense_model(X.split(X.shape[0] // fsdp)[f_rank]))   # this rank's micro-batch
            if not close(info["out"], dense):
                return say(False, f"the plan is in place, but ex_out on rank {r} differs from the dense model on "
                                  f"its micro-batch by up to {max_abs(info['out'], dense):.1e}. Did each column "
                                  "layer get ColwiseParallel and each row layer RowwiseParallel?")
    return say(True, f"a {fsdp} × {tp} mesh with TP inside each node; q, k, v, w1 column-parallel, wo, w2 "
                     f"row-parallel, every weight sharded by FSDP; ex_out matches dense on all {len(infos)} ranks.")
