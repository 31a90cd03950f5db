"""The notebook's view of a DTensor that lives on the ranks: ``cluster.pull_dtensor(name)``.

The same on a live cluster and in a batch job (both clusters call :func:`pull_dtensor`). Every
rank describes its own piece (:func:`helpers.engine.dtensor.describe`: placements, global shape,
mesh, its coordinate and its real local tensor on the CPU); the notebook keeps them by rank and
reassembles the global tensor itself, by the placements -- no collective runs::

    W = cluster.pull_dtensor("W")
    W.placements        # ('Shard(0)', 'Replicate()')
    W.mesh_shape        # (2, 2)
    W.local_shards      # [rank 0's tensor, rank 1's, ...]
    W.full()            # the global tensor on the CPU, in its own dtype (like full_tensor())

Shards follow torch's rule (``torch.chunk``): a dim of size n split over k ranks gives pieces of
ceil(n / k), the last ones shorter or empty. Several Shard placements on one tensor dim split it
in mesh-dim order. Partial placements are summed, Replicate ones read from coordinate 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..common.placements import parse_placement, placement_text
from ..engine import dtensor as engine_dtensor
from ..engine.namespace import missing_ranks, ranks_text

__all__ = ["DTensorView", "pull_dtensor", "views_from_descriptions", "chunk_range"]


def chunk_range(size: int, parts: int, index: int) -> tuple[int, int]:
    """(start, stop) of piece ``index`` when ``torch.chunk`` splits ``size`` into ``parts``."""
    step = math.ceil(size / parts)
    start = min(index * step, size)
    return start, min(start + step, size)


@dataclass
class DTensorView:
    """One DTensor as the notebook sees it: every rank's real local shard and the facts to rebuild it."""

    name: str
    shape: tuple                      # the global shape
    placements: tuple                 # ("Shard(0)", "Replicate()"), one per mesh dim (common.placements)
    mesh_shape: tuple                 # (4,) or (2, 2)
    mesh_dim_names: tuple | None
    mesh_ranks: list                  # the rank grid, e.g. [[0, 1], [2, 3]]
    coordinates: list                 # coordinates[r]: rank r's coordinate on the mesh
    local_shards: list = field(repr=False)  # local_shards[r]: rank r's local tensor (CPU)

    # ---- building
    @classmethod
    def from_descriptions(cls, name: str, descs: list[dict]) -> "DTensorView":
        """From every rank's :func:`helpers.engine.dtensor.describe` (rank 0 first)."""
        first = descs[0]
        facts = [(d["shape"], d["placements"], d["mesh"]["ranks"]) for d in descs]   # what every rank must agree on
        for r, fact in enumerate(facts[1:], start=1):
            for key, mine, rank0 in zip(("shape", "placements", "mesh"), fact, facts[0]):
                if mine != rank0:
                    raise ValueError(f"{name}: rank {r} has {key} {mine} but rank 0 has {rank0}; "
                                     "every rank must describe the same DTensor")
        mesh = first["mesh"]
        view = cls(name=name, shape=tuple(first["shape"]), placements=tuple(first["placements"]),
                   mesh_shape=tuple(mesh["shape"]), mesh_dim_names=mesh["dim_names"], mesh_ranks=mesh["ranks"],
                   coordinates=[tuple(d["mesh"]["coordinate"]) for d in descs], local_shards=[d["local"] for d in descs])
        for r, t in enumerate(view.local_shards):
            want = tuple(s.stop - s.start for s in view.region(r))
            if tuple(t.shape) != want:
                raise ValueError(f"{name}: rank {r}'s local shard has shape {tuple(t.shape)} but placements "
                                 f"{view.placements} on mesh {view.mesh_shape} give it {want}")
        return view

    # ---- facts
    @property
    def world_size(self) -> int:
        return len(self.local_shards)

    @property
    def spec(self) -> str:
        """The placements as one string: ``"Shard(0), Replicate()"``."""
        return ", ".join(self.placements)

    @property
    def kinds(self) -> list[tuple[str, int | None]]:
        """The placements parsed: ``[("shard", 0), ("replicate", None)]``."""
        return [parse_placement(p) for p in self.placements]

    @property
    def layout(self) -> str | None:
        """The ``compare`` layout of a DTensor on a 1-D mesh (its placement: "Shard(0)", ...)."""
        return placement_text(*self.kinds[0]) if len(self.placements) == 1 else None

    def region(self, rank: int) -> tuple[slice, ...]:
        """The slices of the global tensor that rank ``rank``'s local shard covers."""
        out = [slice(0, n) for n in self.shape]
        for mdim, (kind, dim) in enumerate(self.kinds):
            if kind == "shard":  # a piece of what the earlier mesh dims left this rank
                d = dim % len(self.shape)
                a, b = chunk_range(out[d].stop - out[d].start, self.mesh_shape[mdim], self.coordinates[rank][mdim])
                out[d] = slice(out[d].start + a, out[d].start + b)
        return tuple(out)

    def full(self) -> torch.Tensor:
        """The global tensor (CPU, the DTensor's own dtype, like ``full_tensor()``), rebuilt from
        the local shards by the placements."""
        out = torch.zeros(self.shape, dtype=self.local_shards[0].dtype)
        rep = [i for i, (kind, _) in enumerate(self.kinds) if kind == "replicate"]
        for r, c in enumerate(self.coordinates):
            if all(c[i] == 0 for i in rep):  # a Replicate mesh dim: read from coordinate 0 only
                out[self.region(r)] += self.local_shards[r].detach()
        return out

    def __repr__(self) -> str:
        names = f" {self.mesh_dim_names}" if self.mesh_dim_names else ""
        shapes = ", ".join(f"r{r}: {tuple(t.shape)}" for r, t in enumerate(self.local_shards))
        return (f"<DTensor {self.name}: shape {self.shape}, placements {self.placements}, "
                f"mesh {self.mesh_shape}{names}; local {shapes}>")


def views_from_descriptions(name: str, descs: list[dict]):
    """A :class:`DTensorView` (or ``{key: DTensorView}``) from every rank's description; refused,
    naming the ranks, when ``name`` is missing somewhere or not a DTensor on every rank."""
    kinds = {d["kind"] for d in descs}
    if kinds == {"dtensor"}:
        return DTensorView.from_descriptions(name, descs)
    if kinds == {"dict"}:
        keys = list(descs[0]["items"])
        for r, d in enumerate(descs):
            if list(d["items"]) != keys:
                raise ValueError(f"{name!r}: rank {r} has keys {list(d['items'])} but rank 0 has {keys}")
        return {k: DTensorView.from_descriptions(f"{name}[{k!r}]", [d["items"][k] for d in descs]) for k in keys}
    missing_ranks(name, [{} if d["kind"] == "missing" else {name: d} for d in descs])
    what = {"dtensor": "a DTensor", "dict": "a dict of DTensors"}   # "missing": missing_ranks raised already
    by_what: dict[str, list[int]] = {}
    for r, d in enumerate(descs):
        by_what.setdefault(what.get(d["kind"]) or d.get("type", "something else"), []).append(r)
    parts = "; ".join(f"{ranks_text(rs)}: {w}" for w, rs in by_what.items())
    raise ValueError(f"{name!r} is not a DTensor on every rank ({parts}). Make it one on every rank, e.g. "
                     f"{name} = distribute_tensor(t, mesh, [Shard(0)]) or DTensor.from_local(t, mesh, [Partial()])")


def pull_dtensor(cluster, name: str):
    """``name`` from every rank as a :class:`DTensorView` (a dict of views for a dict of DTensors).

    ``cluster``: anything with ``apply`` (:class:`helpers.common.api.ClusterAPI`).  Raises
    ``NameError`` naming the ranks where ``name`` is not defined, and ``ValueError`` saying which
    ranks have what when it is not a DTensor everywhere; both before any collective.
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"pull_dtensor needs the name of an engine variable, got {name!r}")
    return views_from_descriptions(name, cluster.apply(engine_dtensor.describe, name))

