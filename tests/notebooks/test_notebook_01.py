"""Notebook 01 runs headless, top to bottom, on the session's real 4-engine gloo cluster.

Two executions (one kernel each): the notebook as committed, with the exercise blanks (the
checkers must say "❌ not yet" and nothing may raise), and the notebook with each solution from
its collapsed ``solution-N`` markdown cell substituted into the ``exercise-N`` cell (the
checkers must say "✅ correct"). The kernel attaches to the session cluster through
TP_CLUSTER_ID / TP_PROFILE_DIR, which the ``cluster`` fixture exports.
"""

from __future__ import annotations

from support.notebook import (
    assert_committed_without_outputs,
    assert_exercises_and_engine_cells,
    assert_run,
    cell_text,
)

NB = "01_basic_tensor_parallel.ipynb"
EXERCISES = ("1", "2")


# ------------------------------------------------------------------------------ the file itself
def test_committed_without_outputs(committed):
    assert_committed_without_outputs(committed)


def test_story_structure(committed):
    cells = committed.cells
    assert cells[0].cell_type == "markdown" and "able to" in cells[0].source
    assert cells[1].cell_type == "code" and "connect(min_ranks=2)" in cells[1].source  # needs >= 2 ranks
    px = [c for c in cells if c.cell_type == "code" and c.source.startswith("%%px")]
    assert len(px) >= 10
    src = "\n".join(c.source for c in cells if c.cell_type == "code")
    assert "layout_explorer(" in src and "plot_flops(" in src and "shard_figure(" in src
    assert src.count('expect="mismatch"') == 2  # the two "break it" cells
    assert_exercises_and_engine_cells(committed, EXERCISES)


# ------------------------------------------------------------------------------ executions
def test_runs_clean_with_blanks(run_blank):
    assert_run(run_blank, EXERCISES, solved=False, label="01")


def test_break_it_cells_show_the_mismatch(run_blank):
    texts = [cell_text(c) for c in run_blank.cells if c.cell_type == "code"]
    expected = [t for t in texts if "mismatch, as expected" in t]
    assert len(expected) == 2, "each break-it cell should report the expected mismatch"
    for t in expected:
        assert "differs from dense, as expected" in t


def test_figures_are_drawn(run_blank):
    pngs = sum(1 for c in run_blank.cells if c.cell_type == "code"
               for o in c.get("outputs", []) if "image/png" in o.get("data", {}))
    assert pngs >= 6  # shard figures, heatmaps, FLOP/s
    widgets = [o for c in run_blank.cells if c.cell_type == "code" for o in c.get("outputs", [])
               if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert widgets, "the layout explorer was not displayed"


def test_solutions_pass_the_checkers(run_solved):
    assert_run(run_solved, EXERCISES, solved=True, label="01")
