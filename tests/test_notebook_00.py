"""Notebook 00 executes headless against the session cluster, with no error output."""

from __future__ import annotations

import os

import nbformat
from conftest import REPO, assert_clean, cell_text, execute_notebook

NB = os.path.join(REPO, "notebooks", "00_cluster_setup.ipynb")


def test_notebook_00_runs_clean(cluster):
    nb = execute_notebook(nbformat.read(NB, as_version=4))
    assert_clean(nb)
    text = "".join(cell_text(c) for c in nb.cells if c.cell_type == "code")
    for r in range(4):
        assert f"rank {r} of 4" in text
    assert text.count("✅") >= 2 and "❌" not in text  # both collectives checked
    assert any("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code"
               for o in c.outputs)  # the cluster map
