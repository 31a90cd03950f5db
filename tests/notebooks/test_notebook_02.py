"""Notebook 02 (DeviceMesh, DTensor, parallelize_module) runs headless on the session's real cluster.

As for notebook 01: one execution as committed (the exercise checkers say "❌ not yet", nothing
raises) and one with each collapsed solution substituted into its exercise cell (the checkers
say "✅ correct"). Every dense check of the notebook must pass in both, break-it cells included.
"""

from __future__ import annotations

from support.notebook import (
    assert_committed_without_outputs,
    assert_exercises_and_engine_cells,
    assert_run,
    assert_story_structure,
    cell_text,
    code_source,
)

NB = "02_device_mesh_and_dtensor.ipynb"
EXERCISES = ("1", "2")


# ------------------------------------------------------------------------------ the file itself
def test_committed_without_outputs(committed):
    assert_committed_without_outputs(committed)


def test_story_structure(committed):
    cells = committed.cells
    src = code_source(committed)
    needles = ("init_device_mesh", 'mesh_2d["tp"]', "distribute_tensor", "Shard(0)", "Shard(1)",
               "Replicate()", "Partial()", "DTensor.from_local", "redistribute", "CommDebugMode",
               "parallelize_module", "ColwiseParallel", "RowwiseParallel", "check_plan", "head_dim",
               "interleave_qkv", "ParallelMLP", "pull_dtensor(", "draw_dtensor(", "mesh_map(",
               "comm_chart(", "warn_if_tp_crosses_hosts(", "compare_grads(", "visualize_sharding(",
               "PrepareModuleInput")
    assert_story_structure(committed, "connect(min_ranks=4)", 15, needles)
    assert src.count('expect="mismatch"') == 2   # the two silent-bug break-it cells
    assert "notebook 07" in "".join(c.source for c in cells if c.cell_type == "markdown")  # GQA
    md = [c.source for c in cells if c.cell_type == "markdown" and not any(
        t.startswith("solution-") for t in c.get("metadata", {}).get("tags", []))]
    assert max(len(m.splitlines()) for m in md) <= 12, "a markdown cell longer than 12 lines"
    assert_exercises_and_engine_cells(committed, EXERCISES)


# ------------------------------------------------------------------------------ executions
def test_runs_clean_with_blanks(run_blank):
    assert_run(run_blank, EXERCISES, solved=False, label="02")


def test_solutions_pass_the_checkers(run_solved):
    assert_run(run_solved, EXERCISES, solved=True, label="02")


def test_what_the_notebook_shows(run_blank):
    text = "\n".join(cell_text(c) for c in run_blank.cells if c.cell_type == "code")
    # the sub-mesh and the mesh-ordering mistake
    assert "✅ agree" in text and "TPLayoutWarning" in text and "ranks [0, 2] span node0, node1" in text
    # each redistribution's collective, counted by CommDebugMode
    assert "{'all_gather': 1}" in text and "{'all_reduce': 1}" in text and "{'reduce_scatter': 1}" in text
    # the break-it cells: two silent mismatches, and refusals (with the numbers) before any collective
    assert text.count("mismatch, as expected") == 2
    assert "attn.n_heads=6 is not divisible by tp degree 4" in text
    assert "Its submodules: attn_norm, attn, attn.wq" in text and "Shard(2) but the tensor has shape (6, 4)" in text
    # by hand and with parallelize_module: equal shards, one all-reduce forward each
    assert text.count("✅ equal shards on every rank") == 2
    assert "by hand: {'all_reduce': 1} · parallelize_module: {'all_reduce': 1}" in text
    # the plan the wrong way round: still right, but two collectives and a bigger all-reduce
    assert ("swapped: {'all_gather': 1, 'all_reduce': 1}" in text   # pull keeps the rank's dict order
            or "swapped: {'all_reduce': 1, 'all_gather': 1}" in text)
    # break-its, PyTorch first: a warning and a layer left dense, then the real errors
    assert "Parallelize plan key 'W2' could not be resolved" in text
    assert "mlp.w2.weight is a Parameter" in text and "forward: RuntimeError: mat1 and mat2 shapes cannot" in text
    assert "'mlp.w1.weight': 'Parameter'" in text           # the misspelled pair: dense, yet matching
    assert "shape '[2, 3, -1, 4]' is invalid" in text       # 6 heads on 4 ranks
    # PrepareModuleInput: the attention's backward all-reduces fall from three to one
    assert ("without PrepareModuleInput: block forward {'all_reduce': 2}, backward {'all_reduce': 4}; "
            "attention backward {'all_reduce': 3}") in text
    assert ("with PrepareModuleInput: block forward {'all_reduce': 2}, backward {'all_reduce': 2}; "
            "attention backward {'all_reduce': 1}") in text
    assert "PrepareModuleInput(" in text                    # the plan is printed
    # every backward is checked: the fused qkv, by hand and by plan, the swapped plan
    for name in ("dL/dattn.wqkv.weight", "by hand: dL/dw1.weight", "parallelize_module: dL/dw2.bias",
                 "swapped: dL/dw1.weight", "swapped: dL/dX"):
        assert f"✅ {name}" in text, name
    # every parameter gradient of the block was checked
    for p in ("attn.wq.weight", "attn.wq.bias", "attn.wk.weight", "attn.wv.bias", "attn.wo.weight",
              "attn.wo.bias", "mlp.w1.weight", "mlp.w2.weight", "mlp.w2.bias"):
        assert f"dL/d{p}" in text


def test_figures_are_drawn(run_blank):
    pngs = sum(1 for c in run_blank.cells if c.cell_type == "code"
               for o in c.get("outputs", []) if "image/png" in o.get("data", {}))
    assert pngs >= 14   # mesh maps, DTensor drawings, heatmaps, the comm chart
