"""Notebook 00 executes headless against the session cluster, with no error output."""

from __future__ import annotations

import os

import nbformat
from nbclient import NotebookClient

from conftest import REPO

NB = os.path.join(REPO, "notebooks", "00_cluster_setup.ipynb")


def test_notebook_00_runs_clean(cluster):
    nb = nbformat.read(NB, as_version=4)
    NotebookClient(nb, timeout=180, kernel_name="python3",
                   resources={"metadata": {"path": os.path.dirname(NB)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    errors = [o for o in outputs if o.output_type == "error"]
    assert not errors, errors
    # %%px relays engine output as display_data text ("[stdout:0] ...")
    text = "".join(o.get("text", "") + o.get("data", {}).get("text/plain", "") for o in outputs)
    assert "Traceback" not in text
    for r in range(4):
        assert f"rank {r} of 4" in text
    html = "".join(o.get("data", {}).get("text/html", "") for o in outputs)
    assert html.count("✅") >= 2 and "❌" not in html  # both collectives checked
    assert any("image/png" in o.get("data", {}) for o in outputs)  # the cluster map
