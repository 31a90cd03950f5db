"""The engine's interactive namespace: what ``%%px`` cells see, read and fetched by reference."""

from __future__ import annotations

import builtins
import contextlib
import re
import sys
import types

# names connect() defines on every engine: not the learner's state
CONNECT_NAMES = {"torch", "dist", "rank", "world_size", "local_rank", "device", "backend"}
# IPython's numbered history entries (_i7, _7): they hold old inputs and outputs
_HISTORY = re.compile(r"^_i?\d+$")


_SCRIPT_NS: dict | None = None


def use_script_namespace(ns: dict) -> None:
    """Make ``ns`` (a batch script's ``globals()``: :mod:`helpers.engine.batch`) the engine
    namespace where there is no IPython."""
    global _SCRIPT_NS
    _SCRIPT_NS = ns


def _ipython():
    """The running IPython shell; None where IPython was never imported (a batch job)."""
    ipython = sys.modules.get("IPython")
    return ipython.get_ipython() if ipython is not None else None


def user_ns() -> dict:
    """The engine's interactive namespace (what ``%%px`` cells see); in a batch job without
    IPython, the script's globals (:func:`use_script_namespace`)."""
    ip = _ipython()
    if ip is not None:
        return ip.user_ns
    return _SCRIPT_NS if _SCRIPT_NS is not None else {}


def user_names() -> list[str]:
    """The learner's variables on this engine (what a restart would lose)."""
    hidden = CONNECT_NAMES | {"In", "Out", "exit", "quit", "get_ipython"} | set(vars(builtins))
    return sorted(
        k for k, v in user_ns().items()
        if not k.startswith("_") and k not in hidden
        and not isinstance(v, types.ModuleType)
    )


def reset_namespace() -> list[str]:
    """Back to what ``connect()`` gives, as a fresh torchrun script starts: every name a cell
    defined is dropped; ``CONNECT_NAMES``, IPython's own entries and the course's ``_tp_*`` (the
    store, the watchdog token, the driver record) stay; the output history (``Out``, ``_``,
    ``_7``) is emptied.  Returns the dropped names (modules imported by cells stay in
    ``sys.modules``, as an import cache)."""
    ip = _ipython()
    ns = user_ns()
    keep = set(CONNECT_NAMES) | set(getattr(ip, "user_ns_hidden", ()))
    dropped = sorted(
        k for k in ns
        if (k not in keep or _HISTORY.match(k)) and not k.startswith("_tp_")
        and not (k.startswith("__") and k.endswith("__"))
    )
    for k in dropped:
        del ns[k]
    with contextlib.suppress(Exception):  # no IPython (a batch job): no output history
        ip.displayhook.flush()  # Out, _, __, ___ (IPython's own way, as %reset out does)
    return [k for k in dropped if not _HISTORY.match(k)]


def to_cpu(value):
    """``value`` as ``pull`` returns it: tensors detached, on the CPU, in their own dtype (a
    DTensor: this rank's local shard), walking lists, tuples and dicts; anything else as it is."""
    import torch

    if isinstance(value, torch.Tensor):
        if hasattr(value, "to_local"):  # a DTensor: what this rank holds
            value = value.to_local()
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: to_cpu(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_cpu(v) for v in value]
    if isinstance(value, tuple):
        items = [to_cpu(v) for v in value]
        return value._make(items) if hasattr(value, "_make") else tuple(items)  # namedtuples too
    return value


def fetch_values(names: list[str]) -> dict:
    """The named values of this engine's namespace, converted by :func:`to_cpu`.

    Names that are not defined are left out of the returned dict (never an error).
    """
    ns = user_ns()
    return {name: to_cpu(ns[name]) for name in names if name in ns}


def ranks_text(ranks: list[int]) -> str:
    """``[1] -> "rank 1"``, ``[0, 1] -> "ranks 0, 1"``."""
    return ("rank " if len(ranks) == 1 else "ranks ") + ", ".join(map(str, ranks))


def missing_ranks(name: str, values: list[dict]) -> None:
    """Raise ``NameError`` naming ``name`` and the ranks whose ``values[r]`` (what
    :func:`fetch_values` returned on rank r) lack it: ``pull``'s one message, live or batch."""
    missing = [r for r, v in enumerate(values) if name not in v]
    if missing:
        raise NameError(f"{name!r} is not defined on {ranks_text(missing)}: run the %%px cell that defines it first "
                        "(in a batch job: it did not run, or was left out with export-skip)")


def pulled(name: str, values: list[dict]) -> list:
    """``values[r][name]`` by rank, after :func:`missing_ranks` (what ``cluster.pull`` returns)."""
    missing_ranks(name, values)
    return [v[name] for v in values]


def load_module(name: str, path: str) -> str:
    """Import the Python file at ``path`` as module ``name`` on this engine.

    For code kept in a file that is not on the engines' import path (a test's engine-side
    functions, a worker script): afterwards functions of that module can be shipped by
    reference (``cluster.apply(module.func, ...)``).  Returns ``name``.
    """
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path!r} as {name!r}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return name
