"""Notebook 06 runs headless, top to bottom, on the session's real 4-engine gloo cluster.

The kernel attaches to the session cluster through TP_CLUSTER_ID / TP_PROFILE_DIR (exported by
the ``cluster`` fixture). Nothing here asserts a timing: the figures are measured, not targets.
"""

from __future__ import annotations

from support.notebook import (
    assert_clean,
    assert_committed_without_outputs,
    assert_dense_checks_pass,
    assert_story_structure,
    cell_text,
)

NB = "06_when_tp_pays_off.ipynb"


def _code(nb) -> str:
    return "\n".join(c.source for c in nb.cells if c.cell_type == "code")


# ------------------------------------------------------------------------------ the file itself
def test_committed_without_outputs(committed):
    assert_committed_without_outputs(committed)


def test_story_structure(committed):
    cells = committed.cells
    px = [c for c in cells if c.cell_type == "code" and c.source.startswith("%%px")]
    needles = ("ParallelBlock.from_dense(", "StepTimer(", "turns(", "timing_degrees(", "compare(",
               "compare_grads(", "step_time_figure(", "fit_alpha_beta(", "efficiency_table(", "tp_calculator(",
               "timing_caveat(cluster.info())", "DistributedDataParallel", "plot_flops(",
               "plan(", "Evidence(")
    assert_story_structure(committed, "connect(min_ranks=2)", 4, needles)
    # the H100 reference table is shown with its source
    text = "\n".join(c.source for c in cells if c.cell_type == "markdown")
    assert "measured by the project\nwith benchmarks/bench_shard_gemm.py on an H100 (80 GB), torch 2.11, 2026-11-25" in text
    assert "intermediate_source/TP_tutorial.rst" in text and "global batch size is 1K" in text
    assert "| bf16 | 16384 | 731.2 TFLOP/s | 102 % | 99 % | 99 % | 98 % |" in text
    # engine code is device-agnostic: nothing pins a device by name
    for c in px:
        assert "cuda:" not in c.source and '"cpu"' not in c.source


def test_the_gflops_section_lives_here(committed, notebook_runs):
    """Notebook 01's matmul-rate-at-shard-widths plot moved here, where the timing lives; if 01 still
    mentions the price of small shards, it points here."""
    assert "plot_flops(" in _code(committed)
    nb01 = notebook_runs.committed("01_basic_tensor_parallel.ipynb")
    price = [c.source for c in nb01.cells if c.cell_type == "markdown" and "The price" in c.source]
    assert not price or "06" in price[0]


# ------------------------------------------------------------------------------ the execution
def test_runs_clean(run_blank):
    assert_clean(run_blank)
    assert_dense_checks_pass(run_blank)
    print(f"\nnotebook 06 headless: {run_blank.metadata['_test_seconds']:.1f} s")


def test_every_tp_output_is_checked_against_dense(run_blank):
    out = "\n".join(cell_text(c) for c in run_blank.cells if c.cell_type == "code")
    for p in (1, 2, 4):   # the session cluster has 4 ranks
        assert f"✅ Y at TP degree {p} matches dense" in out
    assert "✅ Y = block(X) matches dense" in out
    assert "✅ dL/dX and all 15 parameter gradients match dense, each reassembled from its shards" in out
    for p in (1, 2, 4):   # a backward check at every timed degree
        assert f"✅ TP={p}: dL/dX and all 15 parameter gradients match dense" in out
    for p in (2, 4):      # DDP on the same ranks, checked and timed
        assert f"✅ DDP on {p} ranks: all 15 gradients match dense" in out


def test_timing_says_nothing_misleading_on_cpu_engines(run_blank):
    """CPU engines: the caveat names CPU engines, never a shared GPU; no figure is labelled so."""
    out = "\n".join(cell_text(c) for c in run_blank.cells if c.cell_type == "code")
    assert "shared GPU" not in out and "share a GPU" not in out
    first_timing = next(c for c in run_blank.cells if c.cell_type == "code" and "StepTimer(device)" in c.source)
    assert "CPU engines: 4 ranks on one host share the cores over gloo" in cell_text(first_timing)


def test_alpha_beta_fit_uses_four_sizes_and_says_how_well(run_blank):
    out = "\n".join(cell_text(c) for c in run_blank.cells if c.cell_type == "code")
    assert "fitted to 8 all-reduces (p = [2, 4], 16 KB … 4 MB)" in out and "R² = " in out
    assert "worst relative error" in out and "check at p=4" in out


def test_step_split_and_the_calculator_are_shown(run_blank):
    out = "\n".join(cell_text(c) for c in run_blank.cells if c.cell_type == "code")
    for p in (1, 2, 4):
        assert f"TP={p}: step" in out and "communication" in out
    assert "communication (f, backward all-reduce)" in out or "(f, backward all-reduce)" in out
    assert "(g, forward all-reduce)" in out
    pngs = sum(1 for c in run_blank.cells if c.cell_type == "code"
               for o in c.get("outputs", []) if "image/png" in o.get("data", {}))
    assert pngs >= 5   # a shard, the measured bars, measured + modelled bars, the efficiency curves, the layer GFLOP/s
    widgets = [o for c in run_blank.cells if c.cell_type == "code" for o in c.get("outputs", [])
               if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert widgets, "the calculator was not displayed"
    assert "Use TP=4 within the node" in out          # Llama 2 70B on Derecho, 2048 tokens
    for bullet in ("A single layer is too large to fit on one GPU", "FSDP still fails due to temporary all-gather OOMs",
                   "You are training large Transformer-style models", "Communication-heavy"):
        assert bullet in out
    assert "H100 reference" in out and "bench_shard_gemm.py on an H100" in out
    assert "Data parallelism alone hits the global-batch ceiling" in out
    assert "all\n4 NICs in use" not in out and "× the communication time with all 4 NICs in use" in out
    assert "(rate 271 TFLOP/s, A100 40GB)" in out
