"""The course's rule for backward passes, enforced on every notebook.

A ``%%px`` cell whose code calls ``.backward(`` must be followed, before the next ``%%px`` cell,
by a notebook cell that checks the gradients against dense: a ``compare_grads(`` call, a
``compare("dL/d…`` of one gradient, or an exercise checker (``exercises.check_...``), which
compares them itself. A forward-only check after a backward, or none, is how a wrong *f* or *g*
goes unnoticed.

The rule is read from the cells' source (no kernel, no cluster): the notebooks as committed,
and each exercise cell with its collapsed solution substituted (a solution may add a backward).
"""

from __future__ import annotations

import glob
import os
import re

import nbformat
import pytest
from support import REPO
from support.notebook import solution_code, tagged_cell, tags

NOTEBOOKS = sorted(glob.glob(os.path.join(REPO, "notebooks", "*.ipynb")))
_BACKWARD = re.compile(r"\.backward\(")
_GRAD_CHECK = re.compile(r"\bcompare_grads\(|\bexercises\.check_\w+\(|\bcompare\(\s*f?[\"']dL/d")   # a gradient vs dense


def _code(cell) -> str:
    """The cell's code with comments and string-free comment tails dropped (a ``# .backward()``
    in a comment is not a backward)."""
    return "\n".join(line.split("#", 1)[0] for line in cell.source.splitlines())


def _is_px(cell) -> bool:
    return cell.cell_type == "code" and cell.source.lstrip().startswith("%%px")


def _solved(nb):
    """``nb`` with every ``exercise-N`` cell's source replaced by its ``solution-N`` code."""
    nb = nbformat.from_dict(nb)
    exercises = [t.split("-", 1)[1] for c in nb.cells for t in tags(c) if t.startswith("exercise-")]
    for n in exercises:
        tagged_cell(nb, f"exercise-{n}").source = solution_code(nb, n)
    return nb


def unchecked_backwards(nb) -> list[str]:
    """One line per ``%%px`` cell with a backward and no gradient check before the next ``%%px``."""
    cells, found = nb.cells, []
    for i, cell in enumerate(cells):
        if not (_is_px(cell) and _BACKWARD.search(_code(cell))):
            continue
        checked = False
        for nxt in cells[i + 1:]:
            if _is_px(nxt):
                break
            if nxt.cell_type == "code" and _GRAD_CHECK.search(_code(nxt)):
                checked = True
                break
        if not checked:
            first = next((ln for ln in cell.source.splitlines()[1:] if ln.strip()), "")
            found.append(f"cell {i} (id {cell.get('id')}): {first.strip()[:70]!r}")
    return found


def _name(path: str) -> str:
    return os.path.basename(path)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_name)
def test_every_backward_is_followed_by_a_gradient_check(path):
    nb = nbformat.read(path, as_version=4)
    problems = {"as committed": unchecked_backwards(nb),
                "with the solutions": unchecked_backwards(_solved(nb))}
    lines = [f"  {how}: {p}" for how, ps in problems.items() for p in ps]
    assert not lines, (
        f"{_name(path)}: a %%px cell calls .backward( but no compare_grads( or exercises.check_...( "
        "follows it before the next %%px cell:\n" + "\n".join(lines))


# ------------------------------------------------------------------ the rule itself
def _nb(*cells):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c) if not c.startswith("md:")
                else nbformat.v4.new_markdown_cell(c[3:]) for c in cells]
    return nb


def test_the_rule_flags_a_forward_only_check():
    bad = _nb("%%px\ny = m(x)\ny.sum().backward()", "compare('y', cluster.pull('y'), dense)",
              "%%px\nz = 1")
    assert len(unchecked_backwards(bad)) == 1
    late = _nb("%%px\ny.sum().backward()", "%%px\nz = 1", "compare_grads([])")
    assert len(unchecked_backwards(late)) == 1, "a check after the next %%px cell is too late"


def test_the_rule_accepts_compare_grads_or_a_checker():
    assert not unchecked_backwards(_nb("%%px\ny.sum().backward()", "md:text", "compare_grads([])"))
    assert not unchecked_backwards(_nb("%%px --local\nl.backward()", "exercises.check_f_backward(c)"))
    assert not unchecked_backwards(_nb("%%px\n# no .backward() here, only a comment\nz = 1"))
    assert not unchecked_backwards(_nb("y.sum().backward()", "z = 1"))  # a notebook-side backward
