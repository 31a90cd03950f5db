"""The notebook fixtures: each notebook as committed, run blank and run solved, made once per
session (``support.notebook.NotebookRuns``) and shared by the tests of that notebook.

A test module names its notebook and its exercises at the top::

    NB = "01_basic_tensor_parallel.ipynb"
    EXERCISES = ("1", "2")        # the exercise-N cells to fill with their solutions

and asks for ``committed``, ``run_blank`` or ``run_solved``.  The runs attach to the session
cluster (``notebook_cluster``, which is ``cluster``); a module whose notebook changes the
cluster overrides ``notebook_cluster`` to put it back afterwards (test_notebook_03.py).
"""

from __future__ import annotations

import pytest
from support.notebook import NotebookRuns


@pytest.fixture(scope="session")
def notebook_runs():
    return NotebookRuns()


@pytest.fixture(scope="module")
def notebook_cluster(cluster):
    """The cluster the module's notebook runs on (the session's; exported through TP_CLUSTER_ID)."""
    return cluster


@pytest.fixture(scope="module")
def notebook(request) -> tuple[str, tuple[str, ...]]:
    """The module's notebook (its ``NB``) and exercises (its ``EXERCISES``, none if absent)."""
    module = request.module
    if not hasattr(module, "NB"):
        raise pytest.UsageError(f"{module.__name__} uses a notebook fixture but names no notebook: "
                                'add NB = "<file>.ipynb" at its top')
    return module.NB, tuple(getattr(module, "EXERCISES", ()))


@pytest.fixture(scope="module")
def committed(notebook_runs, notebook):
    """The module's notebook as committed (not run)."""
    return notebook_runs.committed(notebook[0])


@pytest.fixture(scope="module")
def run_blank(notebook_runs, notebook, notebook_cluster):
    """The module's notebook run headless as committed: the exercises left blank."""
    return notebook_runs.run(*notebook, solved=False)


@pytest.fixture(scope="module")
def run_solved(notebook_runs, notebook, notebook_cluster):
    """The module's notebook run headless with each collapsed solution in its exercise cell."""
    return notebook_runs.run(*notebook, solved=True)
