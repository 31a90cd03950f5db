"""Notebook 04 (1D vs 2D tensor parallelism, SUMMA) runs headless on the session's real
4-engine gloo cluster: as committed (the exercise checker must say "❌ not yet", nothing may
raise) and with the collapsed solution substituted (the checker must say "✅ correct").
"""

from __future__ import annotations

from support.notebook import (
    assert_committed_without_outputs,
    assert_run,
    cell_text,
    solution_code,
    tagged_cell,
    tags,
)

NB = "04_2d_tensor_parallel.ipynb"
EXERCISES = ("1",)


# ------------------------------------------------------------------------------ the file itself
def test_committed_without_outputs(committed):
    assert_committed_without_outputs(committed)


def test_story_structure(committed):
    cells = committed.cells
    assert cells[0].cell_type == "markdown" and "able to" in cells[0].source
    assert cells[1].cell_type == "code" and "connect(min_ranks=4)" in cells[1].source
    assert "4 ranks" in cells[1].source  # says what it needs when it connects
    px = [c for c in cells if c.cell_type == "code" and c.source.startswith("%%px")]
    assert len(px) >= 8
    src = "\n".join(c.source for c in cells if c.cell_type == "code")
    for needed in ("grid_layout_explorer(", "grid_blocks_figure(", "summa_stepper(",
                   "comm_model_figure(", "comm_time_figure(", "compare_grads(", "make_grid(("):
        assert needed in src, needed
    assert src.count('expect="mismatch"') == 1  # the break-it cell
    ex = tagged_cell(committed, "exercise-1")
    assert ex.cell_type == "code" and ex.source.startswith("%%px") and "← your code" in ex.source
    sol = solution_code(committed, "1")
    assert sol.startswith("%%px") and "← your code" not in sol
    assert "check-1" in tags(cells[cells.index(ex) + 1])
    for c in px:  # device-agnostic engine code
        assert "cuda:" not in c.source and '"cpu"' not in c.source
    text = "\n".join(c.source for c in cells if c.cell_type == "markdown")
    assert "van de Geijn" in text and "model" in text


# ------------------------------------------------------------------------------ executions
def test_runs_clean_with_blank(run_blank):
    assert_run(run_blank, EXERCISES, solved=False, label="04")


def test_measurements_match_formulas(run_blank):
    texts = [cell_text(c) for c in run_blank.cells if c.cell_type == "code"]
    lines = [ln for t in texts for ln in t.splitlines() if "KiB sent per rank" in ln]
    assert len(lines) == 6, lines  # 3 layouts × 2 shapes, each measured == formula
    assert all(ln.lstrip().startswith("✅") for ln in lines), lines
    print("\n" + "\n".join(ln for t in texts for ln in t.splitlines()
                           if "KiB sent per rank" in ln or "× the bytes of" in ln))


def test_break_it_shows_the_mismatch(run_blank):
    texts = [cell_text(c) for c in run_blank.cells if c.cell_type == "code"]
    assert sum("mismatch, as expected" in t for t in texts) == 1


def test_figures_and_widgets(run_blank):
    pngs = sum(1 for c in run_blank.cells if c.cell_type == "code"
               for o in c.get("outputs", []) if "image/png" in o.get("data", {}))
    assert pngs >= 6  # blocks, heatmap, 2 models, 2 timings
    widgets = [o for c in run_blank.cells if c.cell_type == "code" for o in c.get("outputs", [])
               if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert len(widgets) >= 2, "the layout explorer and the SUMMA stepper were not displayed"


def test_solution_passes_the_checker(run_solved):
    assert_run(run_solved, EXERCISES, solved=True, label="04")
