"""Notebooks, headless: run one in a real kernel, read its outputs, find its tagged cells, put the
solutions in, and the assertions every notebook test makes (a clean run, the dense checks, the
exercise checkers, committed without outputs).

``NotebookRuns`` makes each notebook's runs once in a session; tests/notebooks/conftest.py hands
them to the tests.
"""

from __future__ import annotations

import copy
import os
import re
import time

from support import REPO

NB_DIR = os.path.join(REPO, "notebooks")
CELL_TIMEOUT = 180   # seconds for one cell of a headless run


def execute_notebook(nb, cell_timeout: float = CELL_TIMEOUT):
    """Run ``nb`` in a fresh python3 kernel from notebooks/ (errors stay in the outputs)."""
    from nbclient import NotebookClient

    t0 = time.monotonic()
    NotebookClient(nb, timeout=cell_timeout, kernel_name="python3", allow_errors=True,
                   resources={"metadata": {"path": NB_DIR}}).execute()
    nb.metadata["_test_seconds"] = time.monotonic() - t0
    return nb


class NotebookRuns:
    """Each notebook of notebooks/ read once, run blank once and run solved once in a session.

    ``committed(name)``: the file as committed; ``run(name, exercises, solved=False)``: executed
    headless as committed (the exercise blanks); ``solved=True``: with each collapsed solution in
    its exercise cell.  Tests only read what they get: it is shared by every test of the notebook.
    """

    def __init__(self):
        self._made: dict[tuple[str, str], object] = {}

    def committed(self, name: str):
        import nbformat

        key = (name, "committed")
        if key not in self._made:
            self._made[key] = nbformat.read(os.path.join(NB_DIR, name), as_version=4)
        return self._made[key]

    def run(self, name: str, exercises=(), *, solved: bool = False):
        key = (name, "solved" if solved else "blank")
        if key not in self._made:
            nb = self.committed(name)
            self._made[key] = execute_notebook(with_solutions(nb, exercises) if solved else copy.deepcopy(nb))
        return self._made[key]


def _text(output) -> str:
    if output.get("output_type") == "stream":
        return output.get("text", "")
    if output.get("output_type") == "error":
        return "\n".join(output.get("traceback", [])) + output.get("evalue", "")
    data = output.get("data", {})  # %%px relays engine output as display_data text
    return data.get("text/plain", "") + data.get("text/html", "")


def cell_text(cell) -> str:
    return "".join(_text(o) for o in cell.get("outputs", []))


def output_text(nb) -> str:
    """Every code cell's output text, one cell per line."""
    return "\n".join(cell_text(c) for c in nb.cells if c.cell_type == "code")


def code_source(nb) -> str:
    """Every code cell's source, one cell per line."""
    return "\n".join(c.source for c in nb.cells if c.cell_type == "code")


def assert_clean(nb) -> None:
    """Every code cell ran; no error output and no traceback anywhere."""
    problems = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        if cell.get("execution_count") is None:
            problems.append(f"cell {i} did not run")
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                problems.append(f"cell {i} raised {out.get('ename')}: {out.get('evalue')}"
                                f"\n  source: {cell.source[:200]!r}")
            elif "Traceback" in _text(out):
                problems.append(f"cell {i} printed a traceback: {_text(out)[-600:]}")
    assert not problems, "\n".join(problems)


# ------------------------------------------------------------------ notebook structure
_SOLUTION_RE = re.compile(r"```python\n(.*?)```", re.S)


def tags(cell) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def tagged_cell(nb, tag: str):
    found = [c for c in nb.cells if tag in tags(c)]
    assert len(found) == 1, f"expected exactly one cell tagged {tag!r}, found {len(found)}"
    return found[0]


def solution_code(nb, n: str) -> str:
    """The ```python block of the collapsed solution cell ``solution-n``."""
    cell = tagged_cell(nb, f"solution-{n}")
    assert cell.cell_type == "markdown"
    assert "<details>" in cell.source and "</details>" in cell.source
    m = _SOLUTION_RE.search(cell.source)
    assert m, f"solution-{n} has no ```python block"
    return m.group(1).strip("\n")


def with_solutions(nb, exercises):
    """A copy of ``nb`` whose exercise cells hold the solutions' code."""
    nb = copy.deepcopy(nb)
    for n in exercises:
        tagged_cell(nb, f"exercise-{n}").source = solution_code(nb, n)
    return nb


def assert_dense_checks_pass(nb) -> None:
    """Every compare(...) line outside the exercise checkers is a ✅ (break-it cells included)."""
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code" or any(t.startswith("check-") for t in tags(cell)):
            continue
        assert "❌" not in cell_text(cell), f"cell {i} reports a failed check:\n{cell_text(cell)}"


def assert_run(nb, exercises, *, solved: bool, label: str) -> float:
    """A headless run is clean, every dense check passes (break-it cells included), and each
    exercise checker says "❌ not yet" (blanks) or "✅ correct" (solutions). Prints and returns
    the run's seconds."""
    assert_clean(nb)
    assert_dense_checks_pass(nb)
    for n in exercises:
        out = cell_text(tagged_cell(nb, f"check-{n}"))
        if solved:
            assert "✅ correct" in out and "❌" not in out, f"checker {n} with the solution said: {out!r}"
        else:
            assert "❌ not yet" in out and "✅ correct" not in out, f"checker {n} with the blank said: {out!r}"
    seconds = nb.metadata["_test_seconds"]
    print(f"\nnotebook {label} with {'solutions' if solved else 'blanks'}: {seconds:.1f} s")
    return seconds


def assert_exercises_and_engine_cells(nb, exercises) -> None:
    """Each exercise is a %%px cell with a blank, a collapsed solution and a checker cell right
    after it; no %%px cell pins a device by name (the same cells run on CPU and GPU)."""
    cells = nb.cells
    for n in exercises:
        ex = tagged_cell(nb, f"exercise-{n}")
        assert ex.cell_type == "code" and ex.source.startswith("%%px")
        assert "← your code" in ex.source
        sol = solution_code(nb, n)
        assert sol.startswith("%%px") and "← your code" not in sol
        assert "check-" + n in tags(cells[cells.index(ex) + 1])
    for c in cells:
        if c.cell_type == "code" and c.source.startswith("%%px"):
            assert "cuda:" not in c.source and '"cpu"' not in c.source, c.source[:80]


def assert_committed_without_outputs(nb) -> None:
    import nbformat

    nbformat.validate(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"cell {i} was committed with outputs"
            assert cell.execution_count is None, f"cell {i} was committed with an execution count"


def assert_story_structure(nb, connect: str, min_px: int, needles=()) -> None:
    """The course's rhythm: cell 0 says what the learner will be able to do, cell 1 connects with
    ``connect`` (e.g. "connect(min_ranks=2)"), at least ``min_px`` %%px cells, and each of
    ``needles`` appears in the code."""
    cells = nb.cells
    assert cells[0].cell_type == "markdown" and "able to" in cells[0].source
    assert cells[1].cell_type == "code" and connect in cells[1].source
    assert sum(c.cell_type == "code" and c.source.startswith("%%px") for c in cells) >= min_px
    src = code_source(nb)
    for needle in needles:
        assert needle in src, needle
