"""Checks on a ``parallelize_module`` plan, done before any rank enters a collective.

``parallelize_module`` only *warns* when a plan names a submodule that does not exist (the entry
is skipped and the layer stays dense), and a head count that does not split over the ranks shows
up much later as wrong numbers. :func:`check_plan` refuses both, with the names and numbers.
"""

from __future__ import annotations

import difflib
import fnmatch

import torch.nn as nn

from .checks import check_divisible

__all__ = ["check_plan"]


def check_plan(module: nn.Module, plan: dict, degree: int | None = None) -> dict:
    """Refuse a plan that ``parallelize_module(module, mesh, plan)`` would apply wrongly.

    * every key names a submodule (``"attn.wq"``; ``*`` matches one level, ``"layers.*.mlp"``);
      otherwise ``ValueError`` listing the module's submodule names;
    * every value is a ``ParallelStyle`` (``ColwiseParallel()``, ``RowwiseParallel()``, ...);
    * with ``degree``: a column-wise ``nn.Linear`` needs ``out_features``, a row-wise one
      ``in_features`` divisible by it, and the parent of a planned layer that has an
      ``n_heads`` (or ``n_kv_heads``) attribute needs it divisible by it (whole heads per rank).

    Returns the plan, so ``parallelize_module(m, mesh, check_plan(m, plan, mesh.size()))`` reads.
    """
    from torch.distributed.tensor.parallel import ColwiseParallel, ParallelStyle, RowwiseParallel

    if not isinstance(plan, dict):
        raise TypeError(f"a TP plan is a dict {{submodule name: ParallelStyle}}, got {type(plan).__name__}")
    names = [n for n, _ in module.named_modules() if n]
    for key, style in plan.items():
        if not isinstance(key, str):
            raise TypeError(f"plan key {key!r} must be a submodule name (a string like 'attn.wq')")
        # parallelize_module matches each dotted part with fnmatch ("*" stays inside one part)
        found = [n for n in names if fnmatch.fnmatchcase(n, key) and n.count(".") == key.count(".")]
        if not found:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"the plan names {key!r}, but {type(module).__name__} has no such submodule.{hint} "
                             f"Its submodules: {', '.join(names) or '(none)'}")
        if not isinstance(style, ParallelStyle):
            raise TypeError(f"plan[{key!r}] is {style!r}; expected a ParallelStyle such as "
                            "ColwiseParallel() or RowwiseParallel() (note the parentheses)")
        if degree is None:
            continue
        for name in found:
            sub = module.get_submodule(name)
            for kind, attr in ((ColwiseParallel, "out_features"), (RowwiseParallel, "in_features")):
                if isinstance(sub, nn.Linear) and isinstance(style, kind):
                    check_divisible(f"{name}.{attr}", getattr(sub, attr), degree)
            parent_name = name.rpartition(".")[0]
            parent = module.get_submodule(parent_name)          # "": the module itself
            for attr in ("n_heads", "n_kv_heads"):
                if isinstance(getattr(parent, attr, None), int):
                    check_divisible(f"{parent_name or type(module).__name__}.{attr}", getattr(parent, attr), degree)
    return plan
