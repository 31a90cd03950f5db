"""``launch_cluster.sh export``: every notebook as a checked torchrun batch job.

Each notebook in notebooks/ is exported (with its exercises' solutions) and run for real under
``torchrun --standalone --nproc_per_node=4`` (gloo, CPU): it must end with status 0, its checks
passing.  Small made-up notebooks pin down what runs where, that a failing check fails the job,
and the refusals; the PBS Pro job for Derecho is checked as text.
"""

from __future__ import annotations

import ast
import glob
import json
import os
import re
import subprocess
import sys
import time

import pytest
from support import LAUNCH, REPO, script_env

from helpers.cluster import cli

NOTEBOOKS = sorted(glob.glob(os.path.join(REPO, "notebooks", "*.ipynb")))
TORCHRUN = os.path.join(os.path.dirname(sys.executable), "torchrun")
RUN_TIMEOUT = 300  # seconds for one torchrun job; a hang fails the test instead of the suite


# ------------------------------------------------------------------------------ helpers
def write_notebook(path, cells) -> str:
    """A minimal nbformat-4 notebook; ``cells``: sources, or (source, tags), or ("md", text)."""
    out = []
    for c in cells:
        if isinstance(c, tuple) and c[0] == "md":
            out.append({"cell_type": "markdown", "metadata": {}, "source": c[1]})
            continue
        source, tags = c if isinstance(c, tuple) else (c, [])
        out.append({"cell_type": "code", "metadata": {"tags": tags} if tags else {},
                    "execution_count": None, "outputs": [], "source": source})
    nb = {"cells": out, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    with open(path, "w") as f:
        json.dump(nb, f)
    return str(path)


def export(capsys, *args) -> tuple[int, str, str]:
    """``launch_cluster.sh export ARGS`` in this process: (status, stdout, stderr)."""
    rc = cli.main(["export", *map(str, args)])
    out = capsys.readouterr()
    return rc, out.out, out.err


def torchrun(script, nproc: int = 4) -> tuple[subprocess.CompletedProcess, float]:
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0 = time.monotonic()
    out = subprocess.run([TORCHRUN, "--standalone", f"--nproc_per_node={nproc}", str(script)],
                         capture_output=True, text=True, timeout=RUN_TIMEOUT,
                         cwd=os.path.dirname(str(script)), env=env, stdin=subprocess.DEVNULL)
    return out, time.monotonic() - t0


def launch_export(*args, tmp_path) -> subprocess.CompletedProcess:
    """Through the bash front, from the repo root (no cluster is involved)."""
    env = script_env("export-test", str(tmp_path))
    env.pop("TP_PBS_ACCOUNT", None)
    return subprocess.run([LAUNCH, "export", *map(str, args)], capture_output=True, text=True,
                          timeout=120, cwd=REPO, env=env, stdin=subprocess.DEVNULL)


CONNECT = "from helpers import connect\ncluster = connect()\n"


def ranks_asked_for(notebook: str) -> int:
    """The ranks a notebook asks for (``connect(n=2)``), else 4: the CPU stand-in for a node."""
    with open(notebook) as f:
        m = re.search(r"connect\(\s*n\s*=\s*(\d+)", f.read())
    return int(m.group(1)) if m else 4


# ------------------------------------------------------------------- every course notebook
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=os.path.basename)
def test_notebook_runs_as_a_checked_torchrun_job(notebook, tmp_path, capsys):
    stem = os.path.splitext(os.path.basename(notebook))[0]
    script = tmp_path / f"{stem}.py"
    rc, out, err = export(capsys, notebook, "-o", script, "--solutions")
    assert rc == 0, err
    assert f"wrote {script}" in out

    nproc = ranks_asked_for(notebook)
    run, seconds = torchrun(script, nproc=nproc)
    text = run.stdout + run.stderr
    with capsys.disabled():
        print(f"\n{stem}: torchrun {nproc} ranks {seconds:.1f} s")
    assert run.returncode == 0, text[-4000:]
    assert "✅" in run.stdout, "the notebook's checks printed nothing"
    assert "Traceback" not in text and "❌" not in text, text[-4000:]
    assert f"done: the notebook ran to its end on {nproc} ranks" in run.stdout
    for name in re.findall(r"^figure saved: (\S+)$", run.stdout, re.M):
        with open(tmp_path / name, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n", name


# ------------------------------------------------------------------ what runs where
def test_batch_job_keeps_the_notebook_s_two_namespaces(tmp_path, capsys):
    nb = write_notebook(tmp_path / "demo.ipynb", [
        ("md", "# a made-up notebook"),
        CONNECT + 'print("kernel sees rank:", "rank" in globals())\n',                        # 1
        '%%px\nx = torch.full((2,), float(rank))\nprint(f"px says rank {rank}")\n',             # 2
        "%%px --local\nshared = 41 + 1\n",                                                      # 3
        'xs = cluster.pull("x")\nprint("pulled", [t.tolist() for t in xs])\n'                   # 4
        'print("shared in kernel", shared)\ncluster.push(pushed=7)\n'
        'cluster.push_by_rank("mine", [10, 11])\ncluster.run("ran = pushed + mine")\n'
        "from helpers.engine.namespace import fetch_values\n"
        'print("apply", cluster.apply(fetch_values, ["ran", "shared"]))\n',
        "from matplotlib.figure import Figure\nfig = Figure()\nfig.add_subplot().plot([0, 1])\nfig\n",  # 5
        "import ipywidgets\nipywidgets.IntSlider()\n",                                          # 6
        ("%%time\nslow = 1\n", ["export-skip"]),                                               # 7
        '{"answer": 42}\n',                                                                     # 8
        'print("printed once", cluster.engine_ids)\n"a value after a semicolon";\n',           # 9
    ])
    script = tmp_path / "demo.py"
    rc, out, err = export(capsys, nb, "-o", script)
    assert rc == 0, err
    assert "left out (export-skip): cells 7" in out
    text = script.read_text()
    assert '\n_job.px(2)\nx = torch.full((2,), float(rank))\n' in text, "a %%px body is top-level code"
    assert "_job.px(3, local=True)\nshared = 41 + 1\n_job.notebook(3," in text

    run, _ = torchrun(script, nproc=2)
    assert run.returncode == 0, run.stdout + run.stderr
    o = run.stdout
    assert "kernel sees rank: False" in o                      # engine names stay on the engines
    assert "px says rank 0" in o and "px says rank 1" in o     # %%px: every rank prints
    assert "pulled [[0.0, 0.0], [1.0, 1.0]]" in o
    assert "shared in kernel 42" in o                          # %%px --local ran in both
    assert "apply [{'ran': 17, 'shared': 42}, {'ran': 18, 'shared': 42}]" in o
    assert "figure saved: demo_figures/cell_05.png" in o
    assert (tmp_path / "demo_figures" / "cell_05.png").read_bytes()[:4] == b"\x89PNG"
    assert "IntSlider widget left out" in o
    assert "── cell 7" not in o
    assert "{'answer': 42}" in o
    assert o.count("printed once [0, 1]") == 1                  # only rank 0 prints notebook cells
    assert "a value after a semicolon" not in o


def test_a_failing_check_fails_the_job(tmp_path, capsys):
    nb = write_notebook(tmp_path / "broken.ipynb", [
        CONNECT,
        "%%px\ny = torch.ones(2) * rank   # wrong on purpose: ranks disagree\n",
        'import torch\nfrom helpers.reference import compare\n'
        'compare("y", cluster.pull("y"), torch.ones(2), layout="Replicate()")\n',
        'print("after the failed check")\n',
    ])
    script = tmp_path / "broken.py"
    assert export(capsys, nb, "-o", script)[0] == 0
    run, _ = torchrun(script, nproc=2)
    assert run.returncode != 0
    assert "❌ notebook cell 2 failed on every rank: ComparisonError: y (layout Replicate())" in run.stderr
    assert "(cell 2, line 3: compare(\"y\", cluster.pull(\"y\")" in run.stderr
    assert "after the failed check" not in run.stdout


def test_an_error_on_one_rank_ends_every_rank(tmp_path, capsys):
    nb = write_notebook(tmp_path / "one_rank.ipynb", [
        CONNECT,
        "import torch.distributed as d\nif d.get_rank() == 1:\n    raise ValueError('only rank 1 fails')\n",
        'cluster.pull("nothing")  # a collective the failed rank would never join\n',
    ])
    script = tmp_path / "one_rank.py"
    assert export(capsys, nb, "-o", script)[0] == 0
    run, _ = torchrun(script, nproc=2)
    assert run.returncode != 0
    assert "❌ notebook cell 1 failed on rank 1: ValueError: only rank 1 fails" in run.stderr
    assert "Traceback" in run.stderr, "an error that is not a failed check keeps its traceback"


def test_cell_sources_are_carried_exactly(tmp_path, capsys):
    tricky = ["s = '''three quotes'''\n", 's = """both"""; t = \'\'\'kinds\'\'\'\n',
              'path = "C:\\\\"  # ends with a backslash\\\n']
    nb = write_notebook(tmp_path / "quotes.ipynb", [CONNECT, *tricky])
    script = tmp_path / "quotes.py"
    assert export(capsys, nb, "-o", script)[0] == 0
    calls = [n for n in ast.walk(ast.parse(script.read_text()))
             if isinstance(n, ast.Call) and getattr(n.func, "attr", "") == "notebook"]
    assert [c.args[1].value for c in calls[1:]] == tricky


# ------------------------------------------------------------------------------ refusals
@pytest.mark.parametrize("source, first_line", [
    ("%%time\nx = 1\n", "%%time"),
    ("x = 1\n!ls\n", "x = 1"),
    ("%px print(rank)\n", "%px print(rank)"),
    ("%%px --targets 0\nx = 1\n", "%%px --targets 0"),
    ("%%px\n%matplotlib inline\n", "%%px"),
    ('get_ipython().run_line_magic("time", "1")\n', "get_ipython()"),
])
def test_a_cell_only_jupyter_can_run_is_named(source, first_line, tmp_path, capsys):
    nb = write_notebook(tmp_path / "magic.ipynb", [CONNECT, source])
    rc, out, err = export(capsys, nb, "-o", tmp_path / "magic.py")
    assert rc == 2
    assert len(err.strip().splitlines()) == 1, err
    assert f"cell 1 ('{first_line}" in err and "export-skip" in err, err
    assert not (tmp_path / "magic.py").exists()
    nb = write_notebook(tmp_path / "tagged.ipynb", [CONNECT, (source, ["export-skip"])])
    assert export(capsys, nb, "-o", tmp_path / "tagged.py")[0] == 0


def test_not_a_notebook_is_refused(tmp_path, capsys):
    (tmp_path / "script.py").write_text("print(1)\n")
    (tmp_path / "garbage.ipynb").write_text("not json")
    for path, why in [(tmp_path / "script.py", "is not a notebook"),
                      (tmp_path / "garbage.ipynb", "is not a notebook")]:
        rc, _, err = export(capsys, path)
        assert rc == 2 and why in err and len(err.strip().splitlines()) == 1, err


def test_bash_front_refuses_a_missing_notebook_and_pbs_without_account(tmp_path):
    out = launch_export("notebooks/99_missing.ipynb", tmp_path=tmp_path)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip() == "launch_cluster.sh export: notebooks/99_missing.ipynb: no such notebook"
    out = launch_export("notebooks/00_cluster_setup.ipynb", "-o", tmp_path / "x.py", "--pbs",
                        tmp_path=tmp_path)
    assert out.returncode == 2 and "project code" in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.py").exists(), "nothing is written before a refusal"


# --------------------------------------------------------------------------- PBS Pro job
def test_pbs_job_runs_torchrun_once_per_node_on_derecho(tmp_path, capsys):
    script = tmp_path / "00_cluster_setup.py"
    rc, out, err = export(capsys, NOTEBOOKS[0], "-o", script, "--pbs", "-A", "NCAR0001",
                          "--nodes", "2", "--walltime", "00:20:00", "--modules", "ncarenv cuda")
    assert rc == 0, err
    job = (tmp_path / "00_cluster_setup.pbs").read_text()
    assert f"qsub {tmp_path / '00_cluster_setup.pbs'}" in out
    assert "#PBS -l select=2:ncpus=64:ngpus=4:mpiprocs=4" in job
    assert "#PBS -A NCAR0001" in job and "#PBS -q main" in job
    assert "#PBS -l walltime=00:20:00" in job
    assert not re.search(r"^#PBS -t", job, re.M), "PBS Pro: no Torque array line"
    assert "module load ncarenv\nmodule load cuda\n" in job
    assert 'head_node=$(head -n 1 "$PBS_NODEFILE")' in job
    assert re.search(r"mpiexec -n 2 --ppn 1 --cpu-bind none \\\n\s+torchrun --nnodes 2 "
                     r"--nproc_per_node 4 --rdzv_backend c10d", job), job
    assert '--rdzv_endpoint "$head_node:29500"' in job and str(script) in job
    for setting in ("NCCL_SOCKET_IFNAME=hsn", 'NCCL_NET="AWS Libfabric"',
                    "FI_CXI_DISABLE_HOST_REGISTER=1", "FI_MR_CACHE_MONITOR=userfaultfd",
                    "NCCL_CROSS_NIC=1", "NCCL_NET_GDR_LEVEL=PHB"):
        assert f"\nexport {setting}" in job, setting
    assert subprocess.run(["bash", "-n", str(tmp_path / "00_cluster_setup.pbs")]).returncode == 0
