"""Notebook 05 runs headless, top to bottom, on the session's real 4-engine gloo cluster.

Two executions (one kernel each): as committed, with the exercise blanks (the checkers say
"❌ not yet", nothing raises), and with each collapsed solution substituted into its exercise
cell (the checkers say "✅ correct"). Both must finish in well under a minute on 2 cores; the
TP + SP loss curve must match the dense one within the notebook's stated tolerance (1e-4).
"""

from __future__ import annotations

import re

from support.notebook import (
    assert_committed_without_outputs,
    assert_exercises_and_engine_cells,
    assert_run,
    assert_story_structure,
    output_text,
)

NB = "05_tp_language_model.ipynb"
EXERCISES = ("1", "2")
LOSS_TOL = 1e-4


# ------------------------------------------------------------------------------ the file itself
def test_committed_without_outputs(committed):
    assert_committed_without_outputs(committed)


def test_story_structure(committed):
    cells = committed.cells
    needles = ("VocabParallelEmbedding.from_embedding", "RowwiseParallel(input_layouts=Replicate()",
               "SequenceParallel", "PrepareModuleInput", "loss_parallel()", "CommRecorder",
               "saved_activation_bytes", "plot_loss_curves(", "greedy(", 'expect="mismatch"',
               "sp_dataflow_figure(", "loss_parallel_bytes(", "local_grads(blk)")
    assert_story_structure(committed, "connect(min_ranks=2)", 12, needles)
    text = "\n".join(c.source for c in cells if c.cell_type == "markdown")
    assert "workshop-v3" in text and "f3ce23c" in text and "scaled_dot_product" not in text
    assert "─attn_norm─▶" not in text                       # the ASCII drawing is a figure now
    long = [c.source.count("\n") + 1 for c in cells if c.cell_type == "markdown"
            and "<summary>" not in c.source and c.source.count("\n") + 1 > 13]
    assert not long, f"markdown cells of {long} lines: at most about 12"
    assert_exercises_and_engine_cells(committed, EXERCISES)


# ------------------------------------------------------------------------------ executions
def test_runs_clean_with_blanks(run_blank):
    assert_run(run_blank, EXERCISES, solved=False, label="05")


def test_loss_curves_match(run_blank):
    text = output_text(run_blank)
    m = re.search(r"max \|TP − dense\| over 20 steps: ([0-9.e+-]+) \(tolerance", text)
    assert m, "the training cell did not report the loss difference"
    assert float(m.group(1)) <= LOSS_TOL
    assert "✅ loss curve (20 steps) matches dense" in text
    assert "✅ gradient norm before clipping matches dense" in text
    assert not re.search(r"clipped \(norm > 0.5\) at 0 of 20 steps", text)
    assert "same tokens on every rank and as dense: True" in text


def test_sp_moves_the_same_bytes_and_holds_less(run_blank):
    text = output_text(run_blank)
    m = re.search(r"bytes sent per rank, forward \+ backward: TP ([0-9,]+), TP \+ SP ([0-9,]+)", text)
    assert m and m.group(1) == m.group(2), m and m.group(0)
    held = dict(re.findall(r"(TP|TP \+ SP)\s+measured\s+([0-9,]+) B", text))
    assert int(held["TP + SP"].replace(",", "")) < int(held["TP"].replace(",", ""))


def test_break_it_and_refusals(run_blank):
    text = output_text(run_blank)
    assert "mismatch, as expected" in text
    assert "✅ block loss, the fix: x_sp matches dense" in text
    assert "is not divisible by tp degree 4" in text          # heads and vocabulary
    assert "sequence length T=17 is not divisible by tp degree 4" in text
    assert "token id 99 is outside the vocabulary" in text
    assert "accepted?!" not in text
    assert "refused: vocab_size=35 is not divisible by tp degree 4" in text


def test_loss_parallel_counted_by_direction(run_blank):
    text = output_text(run_blank)
    lines = [ln for ln in text.splitlines() if " B sent per rank in " in ln]
    assert len(lines) == 4 and all(ln.startswith("✅") for ln in lines), lines
    lp_bwd = [ln for ln in lines if "loss parallel" in ln and "backward" in ln]
    assert lp_bwd and "measured      0 B sent per rank in 0 collective(s)" in lp_bwd[0], lp_bwd
    lp_fwd = [ln for ln in lines if "loss parallel" in ln and "forward" in ln]
    assert "in 3 collective(s) {'all_reduce': 3}" in lp_fwd[0], lp_fwd
    for way in ("loss parallel", "gathered logits"):
        assert f"✅ loss, {way} matches dense" in text
        assert f"✅ dL/dlogits, {way} matches dense" in text


def test_every_backward_checked(run_blank):
    text = output_text(run_blank)
    assert "✅ dL/dW (35 rows + padding) matches dense" in text
    for name in ("TP", "TP + SP"):
        assert f"✅ {name} block output matches dense" in text and f"✅ {name} dL/dx matches dense" in text
        for prm in ("attn_norm.weight", "attn.wq.weight", "mlp.w2.weight", "mlp_norm.bias"):
            assert f"✅ {name} dL/d {prm} matches dense" in text, (name, prm)
    bad = [ln for ln in text.splitlines() if "❌" in ln and "not yet" not in ln]
    assert not bad, bad


def test_all_reduce_is_reduce_scatter_plus_all_gather(run_blank):
    text = output_text(run_blank)
    assert "✅ all-reduce matches dense" in text and "✅ reduce-scatter + all-gather matches dense" in text
    m = re.search(r"all-reduce\s*: \{'all_reduce': 1\}, (\d+) B sent per rank", text)
    m2 = re.search(r"reduce-scatter \+ all-gather\s*: \{'all_gather': 1, 'reduce_scatter': 1\}, (\d+) B sent", text)
    assert m and m2 and m.group(1) == m2.group(1), (m, m2)


def test_break_its_show_pytorch_first(run_blank):
    text = output_text(run_blank)
    assert "parallelize_module: 5 heads over 4 ranks" in text
    assert re.search(r"… its first forward\s+→ RuntimeError: shape", text)
    assert "dense embedding of token id 99" in text and "IndexError" in text
    assert "vocab-parallel embedding of token id 99" in text and "max |value| 0.0 (zeros)" in text


def test_figures_are_drawn(run_blank):
    pngs = sum(1 for c in run_blank.cells if c.cell_type == "code"
               for o in c.get("outputs", []) if "image/png" in o.get("data", {}))
    assert pngs >= 6  # table shards, SP data flow, bytes, memory, collectives, loss curves


def test_solutions_pass_the_checkers(run_solved):
    assert_run(run_solved, EXERCISES, solved=True, label="05")
