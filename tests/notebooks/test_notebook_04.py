"""Notebook 04 (1D vs 2D tensor parallelism, SUMMA) runs headless on the session's real
4-engine gloo cluster: as committed (the exercise checker must say "❌ not yet", nothing may
raise) and with the collapsed solution substituted (the checker must say "✅ correct").
"""

from __future__ import annotations

from support.notebook import (
    assert_committed_without_outputs,
    assert_run,
    assert_story_structure,
    cell_text,
    code_source,
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
    assert "4 ranks" in cells[1].source  # says what it needs when it connects
    src = code_source(committed)
    px = [c for c in cells if c.cell_type == "code" and c.source.startswith("%%px")]
    needles = ("grid_layout_explorer(", "grid_blocks_figure(", "summa_stepper(",
               "mlp_bytes_figure(", "mlp_crossover_figure(", "comm_time_figure(", "compare_grads(",
               "make_grid((", "ParallelMLP.from_dense(", "CommRecorder()")
    assert_story_structure(committed, "connect(min_ranks=4)", 8, needles)
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
    for cited in ("Shoeybi", "torchtitan", "2104.05343", "Colossal-AI", "O(1/√p)", "O(√p)"):
        assert cited in text, cited
    long = [c.source.count("\n") + 1 for c in cells if c.cell_type == "markdown"
            and "<summary>" not in c.source and c.source.count("\n") + 1 > 13]
    assert not long, f"markdown cells of {long} lines: at most about 12"


# ------------------------------------------------------------------------------ executions
def test_runs_clean_with_blank(run_blank):
    assert_run(run_blank, EXERCISES, solved=False, label="04")


def test_measurements_match_formulas(run_blank):
    texts = [cell_text(c) for c in run_blank.cells if c.cell_type == "code"]
    lines = [ln for t in texts for ln in t.splitlines() if "KiB sent per rank" in ln]
    assert len(lines) == 8, lines  # (1D, 2D) × (forward, backward) × 2 shapes, measured == formula
    assert all(ln.lstrip().startswith("✅") for ln in lines), lines
    text = "\n".join(texts)
    # per MLP block at p = 4, counted: 2D below 1D in the forward with many tokens, above it in training
    assert "2D / 1D bytes per rank: forward 0.92×, training (forward + backward) 1.38×" in text
    assert "2D / 1D bytes per rank: forward 2.17×" in text
    print("\n" + "\n".join(ln for t in texts for ln in t.splitlines()
                           if "KiB sent per rank" in ln or "2D / 1D" in ln or "2D wins above" in ln))


def test_every_backward_checked_against_dense(run_blank):
    text = "\n".join(cell_text(c) for c in run_blank.cells if c.cell_type == "code")
    bad = [ln for ln in text.splitlines() if "❌" in ln and "not yet" not in ln]   # the blank exercise
    assert not bad, bad
    for name in ("1D dL/dX", "1D dL/dW1", "1D dL/db1", "1D dL/dW2", "1D dL/db2", "2D dL/dX", "2D dL/dW1",
                 "2D dL/dW2", "2D dL/db1, grid row 0", "2D dL/db2, grid row 1"):
        assert text.count(f"✅ {name} ") >= 2, name      # both shapes
    for shape in ("many tokens", "few tokens"):
        assert f"✅ 1D Y ({shape})" in text and f"✅ 2D Y ({shape})" in text


def test_break_it_shows_the_mismatch(run_blank):
    texts = [cell_text(c) for c in run_blank.cells if c.cell_type == "code"]
    assert sum("mismatch, as expected" in t for t in texts) == 1


def test_figures_and_widgets(run_blank):
    pngs = sum(1 for c in run_blank.cells if c.cell_type == "code"
               for o in c.get("outputs", []) if "image/png" in o.get("data", {}))
    assert pngs >= 6  # blocks, bytes per block, 2 crossovers, 2 timings
    widgets = [o for c in run_blank.cells if c.cell_type == "code" for o in c.get("outputs", [])
               if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert len(widgets) >= 2, "the layout explorer and the SUMMA stepper were not displayed"


def test_solution_passes_the_checker(run_solved):
    assert_run(run_solved, EXERCISES, solved=True, label="04")
