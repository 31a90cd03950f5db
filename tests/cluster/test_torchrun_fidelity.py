"""A ``%%px`` cell is the body of a torchrun script: pasted scripts run unchanged.

Each test runs cells in a real Jupyter kernel whose working directory is a notebook folder
(with a module and a data file beside the "notebook"), attached to a real cluster:

* ``sys.argv`` looks like a script's, so ``argparse`` returns its defaults;
* torchrun's environment variables are set;
* a pasted ``dist.init_process_group(...)`` adopts the course's group, or is refused in one
  line naming both values before any collective; a pasted ``dist.destroy_process_group()``
  leaves the next cell working;
* the engines work in the notebook's folder and import from it, whether the cluster came
  from ``connect()`` or from ``./launch_cluster.sh start``.
"""

from __future__ import annotations

import pytest
from support import ClusterFactory, jupyter_kernel, launch
from support import kernel_cell as cell
from support import kernel_pull as pulled

pytestmark = pytest.mark.timeout(240)

BESIDE = "VALUE = 42\n"
DATA = "read from the notebook's folder\n"


def notebook_folder(tmp_path):
    folder = tmp_path / "my notebooks"
    folder.mkdir()
    (folder / "beside_the_notebook.py").write_text(BESIDE)
    (folder / "data.txt").write_text(DATA)
    return folder




@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """A 2-engine cluster started by launch_cluster.sh, and a kernel in a notebook folder."""
    factory = ClusterFactory(tmp_path_factory)
    ref = factory.ref("fidelity")
    out = launch("start", "-n", "2", cluster_id=ref.cluster_id, profile_dir=ref.profile_dir)
    assert out.returncode == 0, out.stderr
    folder = notebook_folder(tmp_path_factory.mktemp("nb"))
    try:
        with jupyter_kernel(folder, TP_CLUSTER_ID=ref.cluster_id,
                            TP_PROFILE_DIR=ref.profile_dir) as (km, kc):
            cell(kc, "from helpers import connect\ncluster = connect()")
            yield kc, folder
    finally:
        factory.finish()


def test_argparse_in_a_cell_gets_its_defaults(two_ranks):
    kc, _ = two_ranks
    cell(kc, """
        %%px
        import argparse, sys
        parser = argparse.ArgumentParser(description="a pasted TP script")
        parser.add_argument("--lr", type=float, default=3e-4)
        parser.add_argument("--steps", type=int, default=10)
        args = parser.parse_args()
        argv = list(sys.argv)
    """)
    cell(kc, "%%px\nlr, steps = args.lr, args.steps")
    assert pulled(kc, "lr") == [3e-4, 3e-4] and pulled(kc, "steps") == [10, 10]
    argv = pulled(kc, "argv")
    assert all(len(a) == 1 and not a[0].startswith("-") for a in argv), argv


def test_engines_have_torchruns_environment(two_ranks):
    kc, _ = two_ranks
    cell(kc, """
        %%px
        import os
        env = {k: os.environ[k] for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE",
                                          "MASTER_ADDR", "MASTER_PORT")}
    """)
    env = pulled(kc, "env")
    for r, e in enumerate(env):
        assert (e["RANK"], e["LOCAL_RANK"], e["WORLD_SIZE"], e["LOCAL_WORLD_SIZE"]) == (
            str(r), str(r), "2", "2")
        assert e["MASTER_ADDR"] == "127.0.0.1" and int(e["MASTER_PORT"]) > 0
    assert len({e["MASTER_PORT"] for e in env}) == 1


def test_a_pasted_script_with_init_and_destroy_runs_and_the_next_cell_works(two_ranks):
    kc, _ = two_ranks
    # The body of a typical torchrun script, unchanged.
    cell(kc, """
        %%px
        import os
        import torch
        import torch.distributed as dist
        from torch.distributed import init_process_group, destroy_process_group

        def main():
            dist.init_process_group(backend="gloo")
            r, ws = dist.get_rank(), dist.get_world_size()
            assert r == int(os.environ["RANK"]) and ws == int(os.environ["WORLD_SIZE"])
            t = torch.ones(2) * (r + 1)
            dist.all_reduce(t)
            return t.tolist()

        script_result = main()
        init_process_group("gloo", rank=int(os.environ["RANK"]), world_size=int(os.environ["WORLD_SIZE"]))
        destroy_process_group()
        dist.destroy_process_group()
    """)
    assert pulled(kc, "script_result") == [[3.0, 3.0]] * 2
    cell(kc, "%%px\nt = torch.ones(1); dist.all_reduce(t); after = t.item()")
    assert pulled(kc, "after") == [2.0, 2.0]


@pytest.mark.parametrize("call, both", [
    ("dist.init_process_group('nccl')", ("'nccl'", "'gloo'")),
    ("dist.init_process_group('gloo', world_size=8)", ("world_size=8", "2 ranks")),
])
def test_a_mismatched_init_is_refused_in_one_line_before_any_collective(two_ranks, call, both):
    kc, _ = two_ranks
    reply, out = cell(kc, f"%%px\n{call}", ok=False)
    assert reply["content"]["status"] == "error"
    tb = reply["content"]["traceback"]
    assert len(tb) == 1 and "\n" not in tb[0].strip(), tb
    for value in both:
        assert value in tb[0], tb[0]
    # nobody is left waiting: the group still works on every rank
    cell(kc, "%%px\nt = torch.ones(1); dist.all_reduce(t); after = t.item()")
    assert pulled(kc, "after") == [2.0, 2.0]


def test_a_group_destroyed_behind_the_course_says_so_in_one_line(two_ranks):
    kc, _ = two_ranks
    cell(kc, "%%px\nfrom helpers.engine.pg import destroy\ndestroy()")  # torch's own destroy
    reply, _ = cell(kc, "%%px\nt = torch.ones(1); dist.all_reduce(t)", ok=False)
    tb = reply["content"]["traceback"]
    assert len(tb) == 1 and "cluster.recover()" in tb[0], tb
    cell(kc, "cluster.recover()")
    cell(kc, "%%px\nt = torch.ones(1); dist.all_reduce(t); after = t.item()")
    assert pulled(kc, "after") == [2.0, 2.0]


def test_engines_work_in_the_notebooks_folder_under_launch_cluster_start(two_ranks):
    kc, folder = two_ranks
    cell(kc, """
        %%px
        import os, beside_the_notebook
        value, text, cwd = beside_the_notebook.VALUE, open("data.txt").read(), os.getcwd()
    """)
    assert pulled(kc, "value") == [42, 42]
    assert pulled(kc, "text") == [DATA] * 2
    assert pulled(kc, "cwd") == [str(folder)] * 2
    # %cd in the notebook moves the engines with it
    (folder / "sub").mkdir()
    (folder / "sub" / "data.txt").write_text("in sub\n")
    cell(kc, "%cd sub")
    cell(kc, "%%px\ntext = open('data.txt').read()")
    assert pulled(kc, "text") == ["in sub\n"] * 2
    cell(kc, "%cd ..")


def test_engines_work_in_the_notebooks_folder_when_connect_starts_them(tmp_path, cluster_factory):
    folder = notebook_folder(tmp_path)
    ref = cluster_factory.ref("cwd")
    with jupyter_kernel(folder, TP_CLUSTER_ID=ref.cluster_id, TP_PROFILE_DIR=ref.profile_dir) as (_, kc):
        cell(kc, "from helpers import connect\ncluster = connect(n=2)")
        cell(kc, "%%px\nimport beside_the_notebook\nvalue = beside_the_notebook.VALUE\ntext = open('data.txt').read()")
        assert pulled(kc, "value") == [42, 42]
        assert pulled(kc, "text") == [DATA] * 2
        cell(kc, "cluster.shutdown()")
