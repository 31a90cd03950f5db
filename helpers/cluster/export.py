"""A notebook as a torchrun batch job: ``./launch_cluster.sh export notebooks/NN_….ipynb``.

README.md ("A notebook as a batch job") tells what each cell becomes, which cells are left out
(``export-skip``) or refused, and what ``--solutions`` does; :mod:`helpers.engine.batch` is the
runtime.  A ``%%px`` cell's last expression shows nothing (a script's expression statements never
do): print what a batch job should show.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

SKIP_TAG = "export-skip"

_GET_IPYTHON = re.compile(r"\bget_ipython\s*\(")
_SOLUTION = re.compile(r"```python\n(.*?)```", re.S)


class ExportError(ValueError):
    """The notebook cannot be written as a batch job; the message says what to do."""


@dataclass(frozen=True)
class Cell:
    """One code cell to export: where it runs, and its body (without the ``%%px`` line)."""

    index: int      # position among all the notebook's cells, from 0
    kind: str       # "%%px", "%%px --local" or "notebook", as the script's comments name it
    body: str


# ------------------------------------------------------------------------------ reading
def read_notebook(path: str) -> dict:
    """The notebook's JSON, or an ExportError that says what is wrong with ``path``."""
    if not os.path.exists(path):
        raise ExportError(f"{path}: no such notebook")
    if os.path.isdir(path) or not path.endswith(".ipynb"):
        raise ExportError(f"{path} is not a notebook (.ipynb file); e.g. "
                          "./launch_cluster.sh export notebooks/01_basic_tensor_parallel.ipynb")
    try:
        nb = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ExportError(f"{path} is not a notebook: it cannot be read as JSON ({e})") from None
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list):
        raise ExportError(f"{path} is not a notebook: it has no list of cells (nbformat 4)")
    return nb


def _source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else str(src)


def _tags(cell: dict) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


# ---------------------------------------------------------------------------- solutions
def with_solutions(nb: dict) -> dict:
    """A copy of ``nb`` whose ``exercise-N`` cells hold the code of their ``solution-N`` cell."""
    cells = [dict(c) for c in nb["cells"]]
    solutions = {tag.removeprefix("solution-"): m.group(1).strip("\n") + "\n"
                 for c in cells for tag in _tags(c)
                 if tag.startswith("solution-") and (m := _SOLUTION.search(_source(c)))}
    for i, c in enumerate(cells):
        for tag in _tags(c):
            if tag.startswith("exercise-"):
                n = tag.removeprefix("exercise-")
                if n not in solutions:
                    raise ExportError(f"cell {i} is tagged {tag} but no markdown cell tagged "
                                      f"solution-{n} holds a ```python block; export without "
                                      "--solutions")
                c["source"] = solutions[n]
    return dict(nb, cells=cells)


# ------------------------------------------------------------------------- classifying
def _jupyter_only(source: str) -> str | None:
    """The first line of ``source`` that only IPython can run (a magic, ``!shell``,
    ``get_ipython()``), stripped, if any."""
    from IPython.core.inputtransformer2 import TransformerManager

    plain = source if source.endswith("\n") else source + "\n"
    transformed = TransformerManager().transform_cell(plain)
    lines, new = plain.splitlines(), transformed.splitlines()
    if transformed == plain:
        match = _GET_IPYTHON.search(source)
        return lines[source[: match.start()].count("\n")].strip() if match else None
    return next((a for a, b in zip(lines, new) if a != b), lines[min(len(lines), len(new)) - 1]).strip()


def _refuse(index: int, source: str, why: str) -> ExportError:
    first = next((s for s in source.splitlines() if s.strip()), "")  # the cell's first line
    first = first if len(first) <= 60 else first[:57] + "..."
    return ExportError(f"cell {index} ({first!r}) {why}; tag the cell "
                       f"{SKIP_TAG} (cell metadata tags) to leave it out of the batch job")


def classify(index: int, source: str) -> Cell:
    """Where cell ``index`` runs in the batch job; ExportError if it cannot run outside Jupyter."""
    lines = source.splitlines()
    kind, body = "notebook", source
    if lines and lines[0].split()[:1] == ["%%px"]:
        options = shlex.split(lines[0].strip())[1:]
        if options not in ([], ["--local"]):
            raise _refuse(index, source, f"uses %%px {' '.join(options)}: only %%px and "
                                         "%%px --local have a batch equivalent")
        kind = "%%px --local" if options else "%%px"
        body = "\n".join(lines[1:]) + ("\n" if len(lines) > 1 else "")
    bad = _jupyter_only(body)
    if bad is not None:
        raise _refuse(index, source, f"has {bad[:40]!r}, which only IPython can run "
                                     "(a magic, a !shell line or get_ipython())")
    try:
        compile(body, f"<cell {index}>", "exec")
    except SyntaxError as e:
        raise _refuse(index, source, f"is not valid Python (line {e.lineno}: {e.msg})") from None
    return Cell(index, kind, body)


def plan_cells(nb: dict) -> tuple[list[Cell], list[int]]:
    """(cells to export in order, indices of code cells left out with export-skip)."""
    code = [(i, c) for i, c in enumerate(nb["cells"]) if c.get("cell_type") == "code"]
    skipped = [i for i, c in code if SKIP_TAG in _tags(c)]
    cells = [classify(i, _source(c)) for i, c in code if i not in skipped and _source(c).strip()]
    return cells, skipped


# ---------------------------------------------------------------------------- writing
def _literal(source: str) -> str:
    """A Python literal of ``source``: a raw triple-quoted string when it can be one.

    It ends with a newline, so a quote or backslash at the end of the cell is harmless.
    """
    text = source if source.endswith("\n") else source + "\n"
    for quote in ("'''", '"""'):
        if quote not in text:
            return f"r{quote}{text}{quote}"
    return repr(text)


def render_script(cells: list[Cell], *, notebook: str, script: str, skipped: list[int],
                  timeout: float) -> str:
    """The torchrun script's text (paths: the notebook's and the script's, as written)."""
    from ..engine.batch import FIGURES_SUFFIX

    stem = os.path.splitext(os.path.basename(script))[0]
    nb_dir = os.path.dirname(os.path.abspath(notebook))
    rel = os.path.relpath(nb_dir, os.path.dirname(os.path.abspath(script)))
    nb_dir = nb_dir if rel.startswith("..") else rel  # relative when the script sits at or above it
    out = [
        "#!/usr/bin/env python",
        "# ruff: noqa",
        "# flake8: noqa",
        f'"""{os.path.basename(notebook)} as a torchrun batch job, written by ./launch_cluster.sh export.',
        "",
        "Edit the notebook, not this file, and export again.  Run it with",
        f"    torchrun --standalone --nproc_per_node=4 {os.path.basename(script)}",
        "%%px cells are this script's top level (its globals are the engines' namespace); notebook",
        "cells run through _job.notebook(...) in a namespace of their own, on every rank, printed",
        f"by rank 0.  Figures go to {stem}{FIGURES_SUFFIX}/cell_NN.png.  See helpers/engine/batch.py.",
        '"""',
        "from helpers.engine import batch as _batch",
        "",
        f"_job = _batch.start(globals(), notebook_dir={nb_dir!r}, timeout={float(timeout)!r})",
    ]
    if skipped:
        out.append(f"# left out ({SKIP_TAG}): cells {', '.join(map(str, skipped))}")
    for cell in cells:
        out += ["", f"# ── cell {cell.index} · {cell.kind}"]
        if cell.kind != "notebook":  # on the engines: %%px and %%px --local
            out.append(f"_job.px({cell.index}{', local=True' if cell.kind == '%%px --local' else ''})")
            out.append(cell.body.rstrip("\n"))
        if cell.kind != "%%px":  # in the kernel: notebook cells and %%px --local
            out.append(f"_job.notebook({cell.index}, {_literal(cell.body)})")
    out += ["", "_job.finish()", ""]
    return "\n".join(out)


def export_notebook(notebook: str, output: str | None = None, *, solutions: bool = False,
                    timeout: float | None = None) -> tuple[str, str]:
    """Write ``notebook`` as a torchrun script (default: next to it, ``.py``); nothing is
    written when a cell cannot be exported.  Returns (the script, a line saying what it holds)."""
    from ..engine.batch import DEFAULT_TIMEOUT

    nb = read_notebook(notebook)
    if solutions:
        nb = with_solutions(nb)
    cells, skipped = plan_cells(nb)
    script = output or os.path.splitext(notebook)[0] + ".py"  # next to the notebook
    if os.path.abspath(script) == os.path.abspath(notebook):
        raise ExportError(f"-o {script} would overwrite the notebook; pick a .py name")
    text = render_script(cells, notebook=notebook, script=script, skipped=skipped,
                         timeout=DEFAULT_TIMEOUT if timeout is None else timeout)
    try:
        compile(text, script, "exec")
    except SyntaxError as e:  # e.g. a `from __future__` import in a %%px cell
        raise ExportError(f"the script would not compile (line {e.lineno}: {e.msg}); tag the "
                          f"cell at fault {SKIP_TAG}") from None
    os.makedirs(os.path.dirname(os.path.abspath(script)), exist_ok=True)
    Path(script).write_text(text, encoding="utf-8")
    kinds = Counter(c.kind for c in cells)
    left = f"; left out ({SKIP_TAG}): cells {', '.join(map(str, skipped))}" if skipped else ""
    return script, (f"wrote {script}: {kinds['%%px']} %%px, {kinds['%%px --local']} %%px --local and "
                    f"{kinds['notebook']} notebook cells{left}")
