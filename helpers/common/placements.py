"""Placements in one spelling, DTensor's: ``"Shard(0)"``, ``"Replicate()"``, ``"Partial()"``.

``compare(layout=...)``, the DTensor views, the drawings and the exercise checkers all read and
write placements through this module, so a learner meets one spelling everywhere, the one
``torch.distributed.tensor`` uses in code::

    >>> parse_placement("Shard(-1)"), parse_placement("Replicate()"), parse_placement("Partial(sum)")
    (('shard', -1), ('replicate', None), ('partial', None))
    >>> placement_text("shard", 1)
    'Shard(1)'

Pure standard library: placement objects are duck-typed (``is_shard()``, ``is_replicate()``,
``is_partial()``, ``.dim``), so nothing here imports torch.
"""

from __future__ import annotations

import re

__all__ = ["KINDS", "PLACEMENT_HELP", "parse_placement", "placement_text", "text_of", "describe"]

KINDS = ("shard", "replicate", "partial")
PLACEMENT_HELP = ("placements are spelled as DTensor writes them: 'Shard(d)' for an integer dim d "
                  "(e.g. 'Shard(0)', 'Shard(-1)': blocks concatenated along d in rank order), "
                  "'Replicate()' (every rank holds the full tensor), 'Partial()' (every rank holds a "
                  "partial sum; summed over ranks)")
_FORMS = (
    (re.compile(r"^Shard\((-?\d+)\)$"), "shard"),
    (re.compile(r"^Replicate\(\)$"), "replicate"),
    (re.compile(r"^Partial\((sum)?\)$"), "partial"),
)


def parse_placement(text: str) -> tuple[str, int | None]:
    """``"Shard(-1)" -> ("shard", -1)``, ``"Replicate()" -> ("replicate", None)``.

    Spaces are ignored; ``"Partial(sum)"`` is read as ``"Partial()"``.  Anything else raises a
    ValueError that shows the spelling (``"shard(0)"``: did you mean ``"Shard(0)"``?).
    """
    s = text.replace(" ", "") if isinstance(text, str) else ""  # "" matches no form and guesses nothing
    for pattern, kind in _FORMS:
        m = pattern.match(s)
        if m:
            return kind, (int(m.group(1)) if kind == "shard" else None)
    low = s.lower().rstrip("()")
    m = re.match(r"^shard\((-?\d+)$", low)
    guess = f"Shard({m.group(1)})" if m else {"replicate": "Replicate()", "partial": "Partial()"}.get(low)
    hint = f"; did you mean {guess!r}?" if guess else ""
    raise ValueError(f"unknown placement {text!r}{hint} ({PLACEMENT_HELP})")


def placement_text(kind: str, dim: int | None = None) -> str:
    """``("shard", 0) -> "Shard(0)"``; ``"replicate" -> "Replicate()"``; ``"partial" -> "Partial()"``."""
    if kind == "shard":
        if isinstance(dim, bool) or not isinstance(dim, int):
            raise ValueError(f"a Shard placement needs an integer dim, got {dim!r}")
        return f"Shard({dim})"
    if kind in ("replicate", "partial"):
        return f"{kind.capitalize()}()"
    raise ValueError(f"unknown placement kind {kind!r}; one of {KINDS}")


def text_of(p) -> str:
    """One DTensor placement object as text: ``Shard(dim=1) -> "Shard(1)"``."""
    # FSDP on a TP shard is a _StridedShard (torch 2.13: not a Shard, but it has a dim)
    if p.is_shard() or "StridedShard" in type(p).__name__:
        return placement_text("shard", int(p.dim))
    if p.is_replicate():
        return "Replicate()"
    if p.is_partial():
        return "Partial()"
    raise ValueError(f"unknown placement {p!r}: neither Shard, Replicate nor Partial")


def describe(placements) -> str:
    """A DTensor's placements (one per mesh dim) as text: ``"Shard(0), Replicate()"``."""
    return ", ".join(text_of(p) for p in placements)
