"""Notebook 07 runs headless, top to bottom, on the session's real 4-engine gloo cluster.

Two executions (one kernel each): as committed, with the exercise blank (the checker says
"❌ not yet", nothing raises), and with the collapsed solution substituted into its exercise cell
(the checker says "✅ correct"). Every dense check is a ✅ (the break-it cell's "mismatch, as
expected" included); greedy tokens match dense by hand and through `transformers`; the KV cache
bytes per rank equal the formula at degrees 1, 2 and 4; the decode latency split is measured.
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

NB = "07_tp_inference.ipynb"
EXERCISES = ("1",)



# ------------------------------------------------------------------------------ the file itself
def test_committed_without_outputs(committed):
    assert_committed_without_outputs(committed)


def test_story_structure(committed):
    cells = committed.cells
    needles = ("ParallelGPT.from_dense", "generate(", "cache_figure(", "kv_cache_bytes(", "tp_subgroup(",
               "turns(", "StepTimer", "sequences_that_fit(", "fit_alpha_beta(", "alpha_beta_figure(",
               "decode_token_time(", 'tp_plan="auto"', "base_model_tp_plan", 'expect="mismatch"',
               "shared_device_note(cluster.info())")
    assert_story_structure(committed, "connect(min_ranks=2)", 12, needles)
    # every %%px cell (but the exercise and setup cells) is followed by a notebook cell that checks or draws
    for i, c in enumerate(cells[:-1]):
        if c.cell_type == "code" and c.source.startswith("%%px\n") and "exercise-1" not in c.metadata.get("tags", []):
            following = [d for d in cells[i + 1:] if d.cell_type == "code"][:1]
            assert following, f"%%px cell {i} is the last code cell"
    assert_exercises_and_engine_cells(committed, EXERCISES)


# ------------------------------------------------------------------------------ executions
def test_runs_clean_with_blanks(run_blank):
    seconds = assert_run(run_blank, EXERCISES, solved=False, label="07")
    assert seconds < 300, f"notebook 07 took {seconds:.0f} s headless (target: 45 s on an idle 2-core machine)"


def test_tokens_match_dense_by_hand_and_in_transformers(run_blank):
    text = output_text(run_blank)
    assert "✅ greedy tokens, token for token matches dense" in text
    assert "✅ logits of all 12 steps matches dense" in text
    assert "✅ layer-0 keys in the cache matches dense" in text
    for p in (1, 2, 4):
        assert f"✅ greedy tokens at TP degree {p} matches dense" in text
    for n_kv in (4, 2):
        assert f"✅ n_kv_heads={n_kv}: greedy tokens matches dense" in text
    assert "✅ transformers TP logits matches dense" in text
    assert "✅ transformers TP generate, token for token matches dense" in text


def test_cache_bytes_equal_the_formula(run_blank):
    text = output_text(run_blank)
    rows = re.findall(r"^\s*(\d)\s+(\d+)\s+([0-9, ]+) B\s+([0-9,]+) B\s+(= formula|≠ formula!)", text, re.M)
    assert {int(r[0]) for r in rows} == {1, 2, 4}, rows
    assert all(r[4] == "= formula" for r in rows), rows
    assert "n_kv_heads=2 on 4 ranks" in text and "= 2× the dense cache" in text


def test_latency_split_fit_and_model(run_blank):
    text = output_text(run_blank)
    for p in (1, 2, 4):
        assert re.search(rf"TP={p}: decode\s+[0-9.]+ ms/token =\s+\d+ tokens/s", text), p
    assert re.search(r"fitted over 5 sizes on 4 ranks \(gloo\): α = [0-9.]+ µs per ring step", text)
    assert re.search(r"Llama 2 70B\s+1\s+no", text) and re.search(r"Llama 2 70B\s+4\s+yes", text)


def test_break_it_and_refusals(run_blank):
    text = output_text(run_blank)
    assert "mismatch, as expected" in text
    assert "✅ decoded on from the contiguous slice matches dense" in text
    assert "n_kv_heads=3 and tp degree 4 divide neither way" in text and "{1, 3, 6, 12}" in text
    assert "the prompt has 32 tokens and 12 are to be generated: 44 > the cache's capacity of 32" in text
    assert "tp degree 8 does not divide the 4 ranks" in text
    assert "accepted?!" not in text
    assert "num_key_value_heads=2 on 4 ranks → RuntimeError" in text


def test_figures_are_drawn(run_blank):
    pngs = sum(1 for c in run_blank.cells if c.cell_type == "code"
               for o in c.get("outputs", []) if "image/png" in o.get("data", {}))
    assert pngs >= 7  # caches (3), latency split, α-β curve, transformers shards (2)


def test_solution_passes_the_checker(run_solved):
    assert_run(run_solved, EXERCISES, solved=True, label="07")
