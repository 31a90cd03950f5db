"""Notebook 03 (TP inside the node, FSDP across) runs headless on the session's real 4-engine
gloo cluster, as 2 simulated nodes × 2 ranks, blank and solved; plus its refusals of bad input.

The notebook connects with ``connect(n=4, nodes=2)``, which re-initializes the session cluster's
process group with the simulated-node layout; the module's finalizer puts the plain layout back
so that later tests find the cluster as it was.
"""

from __future__ import annotations

import pytest
import torch
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

from helpers import cluster as hc
from helpers.tp.mesh import check_tp_in_node
from helpers.tp.train import micro_batch

NB = "03_tp_and_fsdp.ipynb"
EXERCISES = ("1",)
HEADLESS_BUDGET_S = 90   # the notebook's share of the course's 5 minutes, with margin for a loaded machine


@pytest.fixture(scope="module")
def two_nodes(cluster):
    """The session cluster; afterwards its plain (one-node) process group is restored."""
    yield cluster
    cluster.simulated_nodes = None
    cluster.init_distributed(force=True)


@pytest.fixture(scope="module")
def notebook_cluster(two_nodes):
    """The notebook runs on two simulated nodes (its connect(n=4, nodes=2)); two_nodes restores."""
    return two_nodes


# ------------------------------------------------------------------------------ the file itself
def test_committed_without_outputs(committed):
    assert_committed_without_outputs(committed)


def test_story_structure(committed):
    cells = committed.cells
    src = code_source(committed)
    px = [c for c in cells if c.cell_type == "code" and c.source.startswith("%%px")]
    needles = ("memory_bars(", "fit_grid(", "training_curves(", "comm_bars(", "mesh_map(", "node_boxes=True",
               "tp_groups_across_hosts(", "fully_shard",
               "parallelize_module", 'mesh_dim_names=("fsdp", "tp")', 'mesh_dim_names=("tp", "fsdp")',
               "clip_grad_norm_", "CommDebugMode", "measure_training_step")
    assert_story_structure(committed, "connect(n=4, nodes=2)", 8, needles)
    assert src.count('expect="mismatch"') == 2          # the chapter's layer names; a sampler over the world
    assert "DistributedSampler(dataset, shuffle=False)" in src and "num_replicas=FSDP" in src
    ex = tagged_cell(committed, "exercise-1")
    assert ex.cell_type == "code" and ex.source.startswith("%%px") and "← your code" in ex.source
    sol = solution_code(committed, "1")
    assert sol.startswith("%%px") and "← your code" not in sol
    assert "check-1" in tags(cells[cells.index(ex) + 1])
    for c in px:  # engine code is device-agnostic
        assert "cuda:" not in c.source and '"cpu"' not in c.source


# ------------------------------------------------------------------------------ executions
def test_runs_clean_with_blanks(run_blank):
    seconds = assert_run(run_blank, EXERCISES, solved=False, label="03")
    assert seconds < HEADLESS_BUDGET_S


def test_nodes_mesh_memory_training_and_comm(run_blank):
    text = "\n".join(cell_text(c) for c in run_blank.cells if c.cell_type == "code")
    assert "node of each rank: ['node0', 'node0', 'node1', 'node1']" in text
    assert "✅ every TP group stays inside one node" in text
    assert "rank 0: TP group [0, 2] spans ['node0', 'node1']" in text     # the swapped dims
    assert "check_tp_in_node refuses it" in text
    for setup in ("dense", "TP only", "FSDP only", "TP × FSDP"):
        assert f"✅ {setup:>10}: measured = formula on all 4 ranks" in text
    assert "✅ loss, 5 steps matches dense" in text
    assert "first-step gradients match dense" in text and "weights match dense after 5 steps" in text
    assert "mismatch, as expected" in text
    assert ("✅ CommDebugMode counted, per layer, 2 all-reduces in the forward and 2 in the backward on every "
            "rank; the cost model says 2 and 2") in text
    assert "❗ the TP group of ranks [0, 2] crosses node0 and node1" in text
    assert "measured  here: TP=2 inside node0" in text and "modelled  Derecho TP=8" in text
    assert "blocks.0.attn      PrepareModuleInput(" in text                # the plan, printed
    assert "Parallelize plan key 'ffn.w1'" in text and "['Parameter', 'Parameter'" in text
    assert "⚠ caught by the dense check" in text and "check_plan refuses it" in text
    assert "with the sampler over the dp dim, all" in text and "gradients match dense" in text
    assert "(all 4 NICs) to" in text and "(one NIC) as long" in text
    assert "Shard(0)" in text and "fsdp" in text                            # the 2-D placement, printed
    pngs = sum(1 for c in run_blank.cells if c.cell_type == "code"
               for o in c.get("outputs", []) if "image/png" in o.get("data", {}))
    assert pngs >= 8   # 3 mesh maps, memory bars, fit grid, training curves, break-it heatmap, comm bars


def test_solution_passes_the_checker(run_solved):
    assert_run(run_solved, EXERCISES, solved=True, label="03")
    out = cell_text(tagged_cell(run_solved, "check-1"))
    assert "✅ dL/dX and all" in out and "parameter gradients match dense" in out


# ------------------------------------------------------------------------------ bad input
def test_tp_degree_that_does_not_divide_the_ranks_per_node_is_refused():
    with pytest.raises(ValueError, match=r"TP degree 4 does not divide the 2 ranks per node.*\{1, 2\}"):
        check_tp_in_node((1, 4), ("fsdp", "tp"), ranks_per_node=2)
    with pytest.raises(ValueError, match=r"TP degree 3 does not divide the 4 ranks per node"):
        check_tp_in_node((2, 3), ("fsdp", "tp"), ranks_per_node=4)
    with pytest.raises(ValueError, match=r"TP group of ranks \[0, 4\] would span nodes \[0, 1\]"):
        check_tp_in_node((2, 4), ("tp", "fsdp"), ranks_per_node=4)
    check_tp_in_node((2, 4), ("fsdp", "tp"), ranks_per_node=4)   # Derecho's (2, 4): fine


def test_batch_not_divisible_by_the_fsdp_degree_is_refused():
    with pytest.raises(ValueError, match="global batch of 6 samples is not divisible by the FSDP degree 4.*8"):
        micro_batch(torch.zeros(6, 2), 0, 4)
    assert micro_batch(torch.arange(8), 3, 4).tolist() == [6, 7]


def test_simulated_nodes_that_do_not_divide_the_engines_are_refused(tmp_path):
    ref = hc.ClusterRef("nb03-never-started", str(tmp_path))
    with pytest.raises(ValueError, match=r"nodes=3 does not divide the 4 engines; pick nodes in \{1, 2, 4\}"):
        hc.connect(n=4, nodes=3, cluster_id=ref.cluster_id, profile_dir=ref.profile_dir, activate=False)
    assert hc.cluster_processes(ref) == []


def test_refusal_on_the_engines_comes_before_any_collective(two_nodes):
    """A bad mesh raises on every rank at once; the process group still works afterwards."""
    with pytest.raises(Exception, match="TP degree 4 does not divide the 2 ranks per node"):
        two_nodes.run("from helpers.tp.mesh import check_tp_in_node\n"
                      "check_tp_in_node((1, 4), ('fsdp', 'tp'), ranks_per_node=2)")
    two_nodes.run("t = torch.ones(1); dist.all_reduce(t)")
    assert [float(t) for t in two_nodes.pull("t")] == [4.0] * 4


def test_mesh_map_draws_the_node_boundaries():
    from matplotlib.patches import FancyBboxPatch

    from helpers.viz import mesh_map

    nodes = ["node0", "node0", "node1", "node1"]
    fig = mesh_map((2, 2), ("fsdp", "tp"), hosts=nodes, node_boxes=True)
    boxes = [p for p in fig.axes[0].patches if isinstance(p, FancyBboxPatch)]
    assert len(boxes) == 2 + 2          # two node boxes, two TP groups
    labels = [t.get_text() for t in fig.axes[0].texts]
    assert labels.count("node0") == 1 + 2 and labels.count("node1") == 1 + 2   # box label + under each rank


_EX_SETUP = """
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module
from torch.distributed.fsdp import fully_shard
from helpers.models import TinyTransformer
from helpers.tp.train import micro_batch
torch.manual_seed(0)
X = torch.randn(8, 8, 32)
torch.manual_seed(1)
ex_model = TinyTransformer(d_model=32, n_heads=4, d_ff=64, n_layers=1)
ex_mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names={names})
plan = {{"blocks.0.attn.wq": ColwiseParallel(), "blocks.0.attn.wk": ColwiseParallel(),
        "blocks.0.attn.wv": ColwiseParallel(), "blocks.0.attn.wo": RowwiseParallel()}}
if {mlp}:
    plan.update({{"blocks.0.mlp.w1": ColwiseParallel(), "blocks.0.mlp.w2": RowwiseParallel()}})
parallelize_module(ex_model, ex_mesh["tp"], plan)
if {shard}:
    fully_shard(ex_model.blocks[0], mesh=ex_mesh["fsdp"])
    fully_shard(ex_model, mesh=ex_mesh["fsdp"])
ex_out = ex_model(micro_batch(X, ex_mesh["fsdp"].get_local_rank(), 2))
"""


@pytest.mark.parametrize("names, mlp, shard, verdict", [
    ('("fsdp", "tp")', True, True, "✅ correct"),
    ('("tp", "fsdp")', True, True, "crosses the node boundary"),
    ('("fsdp", "tp")', False, True, "blocks.0.mlp.w1.weight is not split by TP"),   # runs: the MLP stays whole
    ('("fsdp", "tp")', True, False, "is not sharded by FSDP"),
])
def test_checker_names_the_slip(two_nodes, capsys, names, mlp, shard, verdict):
    from helpers.exercises import check_hybrid_plan
    from helpers.models import TinyTransformer

    if two_nodes.simulated_nodes != 2:           # the notebook's layout (also when run alone)
        two_nodes.simulated_nodes = 2
        two_nodes.init_distributed(force=True)
    two_nodes.run(_EX_SETUP.format(names=names, mlp=mlp, shard=shard))
    torch.manual_seed(0)
    X = torch.randn(8, 8, 32)
    torch.manual_seed(1)
    ok = check_hybrid_plan(two_nodes, TinyTransformer(d_model=32, n_heads=4, d_ff=64, n_layers=1), X)
    out = capsys.readouterr().out
    assert verdict in out, out
    assert ok == (verdict == "✅ correct")
