"""Notebook 06 runs headless, top to bottom, on the session's real 4-engine gloo cluster.

The kernel attaches to the session cluster through TP_CLUSTER_ID / TP_PROFILE_DIR (exported by
the ``cluster`` fixture). Nothing here asserts a timing: the figures are measured, not targets.
"""

from __future__ import annotations

from support.notebook import (
    assert_clean,
    assert_committed_without_outputs,
    assert_dense_checks_pass,
    cell_text,
    code_source,
)

NB = "06_when_tp_pays_off.ipynb"


# ------------------------------------------------------------------------------ the file itself
def test_committed_without_outputs(committed):
    assert_committed_without_outputs(committed)


def test_story_structure(committed):
    cells = committed.cells
    assert cells[0].cell_type == "markdown" and "able to" in cells[0].source
    assert cells[1].cell_type == "code" and "connect(min_ranks=2)" in cells[1].source  # needs >= 2 ranks
    px = [c for c in cells if c.cell_type == "code" and c.source.startswith("%%px")]
    assert len(px) >= 4
    src = code_source(committed)
    for needle in ("ParallelBlock.from_dense(", "StepTimer(", "turns(", "timing_degrees(", "compare(",
                   "compare_grads(", "step_time_figure(", "fit_link(", "efficiency_table(", "tp_calculator(",
                   "plan(", "Evidence("):
        assert needle in src, f"notebook 06 no longer uses {needle}"
    # the H100 reference table is shown with its source
    text = "\n".join(c.source for c in cells if c.cell_type == "markdown")
    assert "measured by the project on an H100, torch 2.11, 2026-11-25" in text
    assert "| bf16 | 16384 | 731.2 TFLOP/s | 102 % | 99 % | 99 % | 98 % |" in text
    # engine code is device-agnostic: nothing pins a device by name
    for c in px:
        assert "cuda:" not in c.source and '"cpu"' not in c.source


def test_notebook_01_points_here_for_the_price_with_communication(notebook_runs):
    nb01 = notebook_runs.committed("01_basic_tensor_parallel.ipynb")
    price = [c.source for c in nb01.cells if c.cell_type == "markdown" and "The price" in c.source]
    assert price and "Notebook 06" in price[0] and "above 100 %" in price[0]


# ------------------------------------------------------------------------------ the execution
def test_runs_clean(run_blank):
    assert_clean(run_blank)
    assert_dense_checks_pass(run_blank)
    print(f"\nnotebook 06 headless: {run_blank.metadata['_test_seconds']:.1f} s")


def test_every_tp_output_is_checked_against_dense(run_blank):
    out = "\n".join(cell_text(c) for c in run_blank.cells if c.cell_type == "code")
    for p in (1, 2, 4):   # the session cluster has 4 ranks
        assert f"✅ Y at TP degree {p} matches dense" in out
    for name in ("Y = block(X)", "dL/dX", "dL/dWq", "dL/dW2 (MLP out)"):
        assert f"✅ {name} matches dense" in out


def test_step_split_and_the_calculator_are_shown(run_blank):
    out = "\n".join(cell_text(c) for c in run_blank.cells if c.cell_type == "code")
    for p in (1, 2, 4):
        assert f"TP={p}: step" in out and "communication" in out
    assert "communication (f, backward all-reduce)" in out or "(f, backward all-reduce)" in out
    assert "(g, forward all-reduce)" in out
    pngs = sum(1 for c in run_blank.cells if c.cell_type == "code"
               for o in c.get("outputs", []) if "image/png" in o.get("data", {}))
    assert pngs >= 4   # a shard, the measured bars, measured + modelled bars, the efficiency curves
    widgets = [o for c in run_blank.cells if c.cell_type == "code" for o in c.get("outputs", [])
               if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert widgets, "the calculator was not displayed"
    assert "Use TP=4 within the node" in out          # Llama 2 70B on Derecho, 2048 tokens
    for bullet in ("A single layer is too large to fit on one GPU", "FSDP still fails due to temporary all-gather OOMs",
                   "You are training large Transformer-style models", "Communication-heavy"):
        assert bullet in out
    assert "H100 reference" in out and "measured by the project on an H100" in out
