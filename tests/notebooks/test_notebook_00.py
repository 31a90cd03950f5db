"""Notebook 00 executes headless against the session cluster, with no error output."""

from __future__ import annotations

from support.notebook import assert_clean, output_text

NB = "00_cluster_setup.ipynb"


def test_notebook_00_runs_clean(run_blank):
    nb = run_blank
    assert_clean(nb)
    text = output_text(nb)
    for r in range(4):
        assert f"rank {r} of 4" in text
    assert text.count("✅") >= 2 and "❌" not in text  # both collectives checked
    assert any("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code"
               for o in c.outputs)  # the cluster map
