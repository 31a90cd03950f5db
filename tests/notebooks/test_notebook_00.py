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
    assert text.count("✅") >= 5 and "❌" not in text  # every collective checked, and RS + AG = AR
    assert any("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code"
               for o in c.outputs)  # the cluster map
    pngs = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert pngs >= 6  # the cluster map and a drawing per collective (all-reduce = RS + AG too)
    src = "".join(c.source for c in nb.cells)
    for op in ("all_reduce", "all_gather", "reduce_scatter", "broadcast"):
        assert f"dist.{op}" in src and f"\"{op}\"" in src, op
