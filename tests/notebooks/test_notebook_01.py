"""Notebook 01 runs headless, top to bottom, on the session's real 4-engine gloo cluster.

Two executions (one kernel each): the notebook as committed, with the exercise blanks (the
checkers must say "❌ not yet" and nothing may raise), and the notebook with each solution from
its collapsed ``solution-N`` markdown cell substituted into the ``exercise-N`` cell (the
checkers must say "✅ correct"). The kernel attaches to the session cluster through
TP_CLUSTER_ID / TP_PROFILE_DIR, which the ``cluster`` fixture exports.
"""

from __future__ import annotations

import re

import pytest
from support.notebook import (
    assert_committed_without_outputs,
    assert_exercises_and_engine_cells,
    assert_run,
    cell_text,
    solution_code,
    tagged_cell,
)

from helpers import exercises

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
    assert "layout_explorer(" in src and "shard_figure(" in src and "fg_placement_figure(" in src
    assert "plot_flops(" not in src  # the GFLOP/s section lives in notebook 06, with the timing
    assert "fc1.weight[start:stop]" in src and "fc2.weight[:, start:stop]" in src  # explicit slices
    assert "torch.autograd.Function" in tagged_cell(committed, "megatron-f-g").source
    assert src.count('expect="mismatch"') == 3  # the three "break it" cells
    assert_exercises_and_engine_cells(committed, EXERCISES)


# ------------------------------------------------------------------------------ executions
def test_runs_clean_with_blanks(run_blank):
    assert_run(run_blank, EXERCISES, solved=False, label="01")


def test_break_it_cells_show_the_mismatch(run_blank):
    texts = [cell_text(c) for c in run_blank.cells if c.cell_type == "code"]
    expected = [t for t in texts if "mismatch, as expected" in t]
    assert len(expected) == 3, "each break-it cell should report the expected mismatch"
    for t in expected:
        assert "differs from dense, as expected" in t


def test_figures_are_drawn(run_blank):
    pngs = sum(1 for c in run_blank.cells if c.cell_type == "code"
               for o in c.get("outputs", []) if "image/png" in o.get("data", {}))
    assert pngs >= 7  # shard figures, heatmaps, the f/g placement
    widgets = [o for c in run_blank.cells if c.cell_type == "code" for o in c.get("outputs", [])
               if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert widgets, "the layout explorer was not displayed"


def test_solutions_pass_the_checkers(run_solved):
    assert_run(run_solved, EXERCISES, solved=True, label="01")


def test_every_backward_is_checked(run_blank):
    text = "\n".join(cell_text(c) for c in run_blank.cells if c.cell_type == "code")
    for name in ("dL/dX", "dL/dW1", "dL/db1", "dL/dW2", "dL/db2"):
        assert f"✅ {name} matches dense" in text, name
    assert "reads samples" in text and "mismatch, as expected" in text


# ------------------------------------------------------------------------------ the notebook's f and g
def _cells(nb, *ids_or_tags) -> str:
    """The code of the cells (by id or tag), %%px lines dropped, as one script for the engines."""
    out = []
    for key in ids_or_tags:
        cell = next(c for c in nb.cells if c.get("id") == key or key in c.get("metadata", {}).get("tags", []))
        out.append(re.sub(r"^%%px.*\n", "", cell.source))
    return "\n".join(out)


SETUP = ("ba007a86", "cbb1e610", "megatron-f-g")   # the dense layers, start/stop, f and g


def _local_dense(nb):
    ns = {"torch": __import__("torch"), "world_size": 4}
    exec(_cells(nb, "ba007a86"), ns)
    return ns


def test_notebook_f_and_g_match_the_helpers(cluster, committed):
    """The f and g written in the notebook and helpers.tp's tested ParallelMLP: the same Y, dL/dX
    and every weight gradient, on every rank."""
    cluster.run(_cells(committed, *SETUP))
    cluster.run("""
from helpers.tp import ParallelMLP
ref = ParallelMLP.from_dense(fc1, fc2)
x_ref = X.clone().requires_grad_()
y_ref = ref(x_ref)
y_ref.pow(2).sum().backward()
mine = [t.detach().clone().requires_grad_() for t in (fc1.weight[start:stop], fc1.bias[start:stop],
                                                       fc2.weight[:, start:stop], fc2.bias)]
x_mine = X.clone().requires_grad_()
y_mine = g(torch.nn.functional.gelu(f(x_mine) @ mine[0].T + mine[1]) @ mine[2].T) + mine[3]
y_mine.pow(2).sum().backward()
pairs = {"Y": (y_ref, y_mine), "dL/dX": (x_ref.grad, x_mine.grad),
         "dL/dW1": (ref.w1.weight.grad, mine[0].grad), "dL/db1": (ref.w1.bias.grad, mine[1].grad),
         "dL/dW2": (ref.w2.weight.grad, mine[2].grad), "dL/db2": (ref.w2.bias.grad, mine[3].grad)}
""")
    import torch
    for r, pairs in enumerate(cluster.pull("pairs")):
        for name, (a, b) in pairs.items():
            assert torch.allclose(a, b, atol=1e-6, rtol=1e-5), f"rank {r}: {name} differs"


# ------------------------------------------------------------------------------ exercise 2's checker
_F_FORWARD = "        return x.view_as(x)           # every rank already holds the whole X\n"
_F_BLANK = "        return dx                     # ← your code: return the full dL/dX on every rank\n"
WRONG = {
    "missing": ({}, "the all-reduce is missing"),
    "forward": ({_F_FORWARD: "        x = x.contiguous().clone()\n        dist.all_reduce(x)\n        return x\n"},
                "an all-reduce in the wrong direction"),
    "averaged": ({_F_BLANK: "        dx = dx.contiguous().clone()\n        dist.all_reduce(dx)\n"
                            "        return dx / world_size\n"}, "averaged"),
    "twice": ({_F_BLANK: "        dx = dx.contiguous().clone()\n        dist.all_reduce(dx)\n"
                         "        dist.all_reduce(dx)\n        return dx\n"}, "summed twice"),
}


@pytest.mark.parametrize("case", ["right", *WRONG])
def test_exercise_2_checker_names_each_mistake(cluster, committed, capsys, case):
    cluster.run(_cells(committed, *SETUP, "9b9ac6b4", "d35c6397"))   # the column cell (W1_i, b1_i), then the MLP cell
    if case == "right":
        code = re.sub(r"^%%px.*\n", "", solution_code(committed, "2"))
    else:
        code = _cells(committed, "exercise-2")
        assert _F_FORWARD in code and _F_BLANK in code
        for old, new in WRONG[case][0].items():
            code = code.replace(old, new)
    cluster.run(code)
    local = _local_dense(committed)
    ok = exercises.check_f_backward(cluster, local["dense_mlp"], local["X"])
    out = capsys.readouterr().out
    if case == "right":
        assert ok and "✅ correct" in out and "every dL/dW" in out, out
    else:
        assert not ok and "❌ not yet" in out and WRONG[case][1] in out, out
