"""A notebook as a torchrun job: the runtime that every script written by
``./launch_cluster.sh export`` imports (the converter is :mod:`helpers.cluster.export`).

It runs on every torchrun rank and imports torch (never ipyparallel).  An exported script
reads like this::

    from helpers.engine import batch as _batch
    _job = _batch.start(globals(), notebook_dir="../notebooks", timeout=120.0)

    # ── cell 3 · %%px
    _job.px(3)
    print(f"rank {rank} of {world_size}")      # the %%px cell's body, verbatim, at top level

    # ── cell 5 · notebook
    _job.notebook(5, r'''cluster_map(cluster.info())
    ''')

    _job.finish()

Two namespaces, as in Jupyter: the script's globals are the **engine namespace** (a ``%%px``
cell *is* the body of a torchrun script; engine-side helpers read it through
:func:`helpers.engine.namespace.user_ns`); notebook cells run in a dict of their own, on every
rank, where ``connect()`` returns the job's :class:`BatchCluster` (``%%px --local`` cells run
in both, engine first).  What each cell shows, and how a failing one ends the job: README.md,
"A notebook as a batch job".
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import dataclasses
import glob
import io
import linecache
import os
import pprint
import socket
import sys
import tokenize
import traceback
from collections import Counter
from dataclasses import dataclass
from datetime import timedelta

from ..common.api import RankFacts
from ..common.topology import EngineInfo, device_for, node_names
from ..reference import display as reference_display
from . import pg
from .namespace import fetch_values, pulled, ranks_text, use_script_namespace

DEFAULT_TIMEOUT = 120.0  # seconds a collective may wait (longer than a notebook's: jobs start slower)
FIGURES_SUFFIX = "_figures"

_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
_ACTIVE: BatchJob | None = None


def active_job() -> BatchJob | None:
    """The batch job running in this process, if any (``connect()`` returns its cluster)."""
    return _ACTIVE


def _torchrun_env() -> dict[str, int]:
    missing = [v for v in _TORCHRUN_VARS if v not in os.environ]
    if missing:
        script = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "this_script.py"
        raise RuntimeError(
            f"this script runs a notebook on torchrun's ranks, but {', '.join(missing)} "
            f"is not set; start it with torchrun --standalone --nproc_per_node=4 {script}"
        )
    return {v.lower(): int(os.environ[v]) for v in _TORCHRUN_VARS[:4]}


def start(script_globals: dict, *, notebook_dir: str | None = None,
          timeout: float = DEFAULT_TIMEOUT) -> BatchJob:
    """Join torchrun's process group and make ``script_globals`` the engine namespace.

    notebook_dir: the notebook's folder, relative to the script's; the job works there and
    imports from it first, as the engines do (kept where that folder does not exist).
    """
    global _ACTIVE
    if _ACTIVE is not None:
        raise RuntimeError("a notebook batch job is already running in this process")
    env = _torchrun_env()
    os.environ["MPLBACKEND"] = "Agg"  # figures are saved, never shown
    with contextlib.suppress(AttributeError, ValueError):
        sys.stdout.reconfigure(line_buffering=True)  # rank 0's lines in order with stderr's
    import torch
    import torch.distributed as dist

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    backend = "nccl" if gpus >= env["local_world_size"] else "gloo"  # as connect() chooses
    device = torch.device(device_for(backend, env["local_rank"], gpus))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout))
    pg.install_script_hooks()  # a pasted init_process_group adopts this group, as on the engines
    script_globals.update(torch=torch, dist=dist, rank=env["rank"], world_size=env["world_size"],
                          local_rank=env["local_rank"], device=device, backend=backend)
    use_script_namespace(script_globals)
    script = script_globals.get("__file__") or sys.argv[0]
    if notebook_dir is not None:  # pg.follow_cwd changes nothing where the folder is not on this host
        pg.follow_cwd(os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(script)), notebook_dir)))
    host = socket.gethostname()
    mine = EngineInfo(env["rank"], env["rank"], host, os.getpid(), str(device), env["local_rank"],
                      env["local_world_size"], node=host)
    cluster = BatchCluster(_gather(mine), backend, float(timeout), env["rank"], script_globals)
    _ACTIVE = BatchJob(cluster, script)
    reference_display.set_display(_ACTIVE.show_comparison)
    return _ACTIVE


# ------------------------------------------------------------------------- the cluster object
def _gather(obj) -> list:
    """``obj`` from every rank, by rank (a collective: every rank must call it)."""
    import torch.distributed as dist

    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


@dataclass(eq=False)
class BatchCluster(RankFacts):
    """``cluster`` in a batch job: the ``TPCluster`` API over torchrun's ranks.

    Every method is called by every rank (notebook cells run on all of them); the ones that
    return something per rank gather it with ``all_gather_object``.  Engine ids are the ranks.
    """

    engines: list[EngineInfo]  # node: the host, or a simulated node of connect(nodes=...)
    backend: str
    timeout: float
    rank: int  # this process's
    engine_ns: dict = dataclasses.field(repr=False)

    # ---- facts: world_size, engine_ids, devices, nodes, info() from RankFacts
    def __repr__(self) -> str:
        return (f"<BatchCluster (torchrun): {self.world_size} ranks, backend {self.backend}, "
                f"devices {self.devices}, hosts {sorted({e.host for e in self.engines})}>")

    # ---- data in and out, by rank
    def pull(self, name: str) -> list:
        """As :class:`helpers.common.api.ClusterAPI` says, gathered with ``all_gather_object``."""
        return pulled(name, _gather(fetch_values([name])))

    def push(self, **values) -> None:
        """The same values on every rank (every rank runs this cell with the same values)."""
        self.engine_ns.update(values)

    def push_by_rank(self, name: str, values: list) -> None:
        if len(values) != self.world_size:
            raise ValueError(f"push_by_rank needs one value per rank: got {len(values)} for "
                             f"{self.world_size} ranks")
        self.engine_ns[name] = values[self.rank]

    def pull_dtensor(self, name: str):
        """As ``TPCluster.pull_dtensor`` (:func:`helpers.reference.dtensor.pull_dtensor`)."""
        from ..reference.dtensor import pull_dtensor

        return pull_dtensor(self, name)

    def run(self, code: str) -> None:
        """Run ``code`` in the engine namespace of every rank (what a ``%%px`` cell does)."""
        exec(compile(code, "<cluster.run>", "exec"), self.engine_ns)

    def apply(self, func, *args, **kwargs) -> list:
        """``func(*args, **kwargs)`` on every rank; results by rank.  An error on any rank
        is raised on every rank (after the results are exchanged: nobody is left waiting)."""
        try:
            outcome = (True, func(*args, **kwargs))
        except Exception as e:
            outcome = (False, f"{type(e).__name__}: {e}")
        outcomes = _gather(outcome)
        failed = [r for r, (ok, _) in enumerate(outcomes) if not ok]
        if failed:
            raise RuntimeError(f"{getattr(func, '__name__', func)} failed on {ranks_text(failed)}: "
                               f"{outcomes[failed[0]][1]}")
        return [value for _, value in outcomes]

    # ---- what a notebook may call that has nothing to do here
    def activate(self) -> None:
        """No ``%%px`` magic in a batch job: its cells are the script's top level."""

    def follow_cwd(self, folder: str | None = None) -> None:
        """The job already works in the notebook's folder."""

    def shutdown(self, quiet: bool = False) -> None:
        """Nothing to stop: the job ends when the script does (:meth:`BatchJob.finish`)."""


# ----------------------------------------------------------------------------- the job
def _ends_with_semicolon(source: str) -> bool:
    """IPython's rule: a cell whose last token (comments aside) is ``;`` shows no value."""
    try:  # NL, NEWLINE, INDENT, DEDENT and ENDMARKER are blank
        tokens = [t.string for t in tokenize.generate_tokens(io.StringIO(source).readline)
                  if t.type != tokenize.COMMENT and t.string.strip()]
    except (tokenize.TokenError, SyntaxError):
        return False
    return tokens[-1:] == [";"]


def _compile_cell(source: str, filename: str):
    """(code to exec, code to eval for the shown value or None), as IPython splits a cell."""
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    tree = ast.parse(source, filename)
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr) and not _ends_with_semicolon(source):
        last = compile(ast.Expression(tree.body.pop().value), filename, "eval")
    return compile(tree, filename, "exec"), last


def _is(value, module: str, name: str) -> bool:
    """``isinstance(value, module.name)``, without importing ``module`` just to check (a value
    cannot be of a type whose module was never imported)."""
    cls = getattr(sys.modules.get(module), name, None)
    return cls is not None and isinstance(value, cls)


@dataclass(frozen=True)
class _CellError:
    summary: str      # "KeyError: 'x'": the exception's class name and message
    traceback: str    # "" for an AssertionError (compare's ComparisonError): the message says it all
    where: str        # "line 3: compare(...)", the cell's line that raised


class BatchJob:
    """One notebook running as a torchrun job (made by :func:`start`)."""

    def __init__(self, cluster: BatchCluster, script: str):
        self.cluster = cluster
        self.rank = cluster.rank
        stem = os.path.splitext(os.path.abspath(script))[0]
        self.figures_dir = stem + FIGURES_SUFFIX
        self.script_dir = os.path.dirname(stem)
        self.kernel_ns: dict = {"__name__": "__main__", "__builtins__": builtins,
                                "display": self.display}
        cluster.engine_ns.setdefault("display", self.display_on_every_rank)
        self.cell: int | None = None
        self._figures: Counter[tuple[int | None, str]] = Counter()  # PNGs saved, by (cell, suffix)
        if self.rank == 0:
            # a re-run's figures must not mix with the last run's (only our cell_*.png go)
            for old in glob.glob(os.path.join(glob.escape(self.figures_dir), "cell_*.png")):
                os.remove(old)
            print(f"notebook batch job: {cluster.world_size} ranks, backend {cluster.backend}, "
                  f"devices {cluster.devices}", flush=True)

    # ---- what the script calls
    def connect(self, n: int | None = None, *, backend: str | None = None, nodes: int | None = None,
                min_ranks: int | None = None, **live_only) -> BatchCluster:
        """``connect()`` in a batch job: this job's cluster (n, backend and min_ranks must fit
        it; ``nodes`` simulates nodes on one host as on the engines; the live cluster's other
        arguments -- timeout, threads, cluster_id... -- have nothing to set here)."""
        cluster = self.cluster
        if min_ranks is not None and cluster.world_size < min_ranks:
            raise ValueError(f"this notebook needs at least {min_ranks} ranks but this torchrun job "
                             f"has {cluster.world_size}; start it with --nproc_per_node {min_ranks} or more")
        if n is not None and n != cluster.world_size:
            raise ValueError(f"the notebook asks for connect(n={n}) but this torchrun job has "
                             f"{cluster.world_size} ranks; start it with {n} ranks in all "
                             "(--nnodes x --nproc_per_node)")
        if backend is not None and backend != cluster.backend:
            raise ValueError(f"the notebook asks for backend {backend!r} but this job runs "
                             f"{cluster.backend!r} (chosen from its GPUs: NCCL needs one per rank)")
        names = node_names([e.host for e in cluster.engines], nodes)
        cluster.engines = [dataclasses.replace(e, node=name) for e, name in zip(cluster.engines, names)]
        return cluster

    def px(self, cell: int, local: bool = False) -> None:
        """Marks the start of ``%%px`` cell ``cell``; its body follows at the script's top level.

        A barrier after rank 0's header line keeps the cell's output below it in the log.
        """
        import torch.distributed as dist

        self.cell = cell
        self._header(cell, "%%px --local" if local else "%%px")
        dist.barrier()

    def notebook(self, cell: int, source: str) -> None:
        """Run notebook cell ``cell`` in the kernel namespace, on every rank; only rank 0 prints.

        Ends the job when the cell raised on any rank: rank 0 prints which cell failed on which
        ranks and why (a traceback too unless it is a failed check), every rank leaves the process
        group and exits with status 1.  The ranks exchange their outcome after every cell (one
        small collective), so a cell that fails on one rank only leaves no other rank waiting.
        """
        self.cell = cell
        self._header(cell, "notebook")
        # ranks other than 0 run notebook cells silently (their errors are gathered)
        with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink if self.rank else sys.stdout), \
                contextlib.redirect_stderr(sink if self.rank else sys.stderr):
            error = self._run_kernel_cell(cell, source)
        errors = _gather(error)
        if any(errors):
            self._fail(cell, errors)

    def finish(self) -> None:
        """The notebook ran to its end: leave the process group (the real destroy) and exit."""
        saved = sum(_gather(self._figures.total()))
        pg.destroy()
        if self.rank == 0:
            where = f"; {saved} figure(s) in {self.figures_dir}" if saved else ""
            print(f"done: the notebook ran to its end on {self.cluster.world_size} ranks{where}", flush=True)
        pg.exit_now(0)

    # ---- display, the batch way
    def display(self, *values) -> None:
        """``display(...)`` in a notebook cell, shown by rank 0: a matplotlib figure (or anything
        with ``_repr_png_``) saved as ``<script stem>_figures/cell_NN.png`` (``cell_NN_2.png``...
        for more), an ipywidget left out (interactive only), a ``compare()`` result left to
        :meth:`show_comparison`, anything else pretty-printed."""
        if self.rank == 0:
            for value in values:
                self._show(value, suffix="")

    def display_on_every_rank(self, *values) -> None:
        """``display(...)`` in a ``%%px`` cell: every rank shows its own."""
        for value in values:
            self._show(value, suffix=f"_rank{self.rank}")

    def show_comparison(self, result) -> None:
        """``compare()``'s display in a batch job: its line printed, its error heatmap saved."""
        print(reference_display.text(result))
        if result.figure is not None and self.rank == 0:
            self._save_png(result.figure, "")

    def _show(self, value, suffix: str) -> None:
        if value is None or _is(value, "helpers.reference.compare", "Result"):
            return  # a Result: compare() showed it through show_comparison
        if _is(value, "ipywidgets", "Widget"):
            print(f"(cell {self.cell}: {type(value).__name__} widget left out: interactive only)")
        elif _is(value, "matplotlib.figure", "Figure") or callable(getattr(value, "_repr_png_", None)):
            self._save_png(value, suffix)
        else:
            pprint.pprint(value)

    def _save_png(self, value, suffix: str) -> None:
        """A matplotlib figure (or anything with ``_repr_png_``) as the cell's next PNG."""
        self._figures[self.cell, suffix] += 1
        k = self._figures[self.cell, suffix]
        name = f"cell_{self.cell:02d}{suffix}" if self.cell is not None else f"figure{suffix}"
        os.makedirs(self.figures_dir, exist_ok=True)
        path = os.path.join(self.figures_dir, name + (f"_{k}" if k > 1 else "") + ".png")
        if _is(value, "matplotlib.figure", "Figure"):
            value.savefig(path, format="png", dpi=value.dpi, facecolor="white")
        else:
            with open(path, "wb") as f:
                f.write(value._repr_png_())
        print(f"figure saved: {os.path.relpath(path, self.script_dir)}")

    def _save_pyplot_figures(self) -> None:
        """pyplot figures still open after a cell: saved (rank 0) and closed, as inline does."""
        plt = sys.modules.get("matplotlib.pyplot")
        if plt is None:
            return
        if self.rank == 0:
            for num in plt.get_fignums():
                self._save_png(plt.figure(num), "")
        plt.close("all")

    # ---- running and failing
    def _header(self, cell: int, kind: str) -> None:
        if self.rank == 0:
            print(f"── cell {cell} · {kind}", flush=True)

    def _run_kernel_cell(self, cell: int, source: str) -> _CellError | None:
        filename = f"<notebook cell {cell}>"
        try:
            body, last = _compile_cell(source, filename)
            exec(body, self.kernel_ns)
            if last is not None:
                self.display(eval(last, self.kernel_ns))
            self._save_pyplot_figures()
        except Exception as e:
            # the cell's innermost line in the traceback
            frames = [f for f in traceback.extract_tb(e.__traceback__) if f.filename == filename]
            where = f"line {frames[-1].lineno}: {(frames[-1].line or '').strip()[:80]}" if frames else ""
            shown = "" if isinstance(e, AssertionError) else traceback.format_exc()
            return _CellError(f"{type(e).__name__}: {e}", shown, where)
        finally:
            sys.stdout.flush()
        return None

    def _fail(self, cell: int, errors: list) -> None:
        failed = [r for r, e in enumerate(errors) if e]
        first: _CellError = errors[failed[0]]
        if self.rank == 0:
            print(first.traceback, file=sys.stderr, end="")
            every = "every rank" if len(failed) == self.cluster.world_size else ranks_text(failed)
            print(f"❌ notebook cell {cell} failed on {every}: {first.summary}"
                  + (f"\n   (cell {cell}, {first.where})" if first.where else ""),
                  file=sys.stderr, flush=True)
        pg.destroy()
        pg.exit_now(1)


__all__ = ["start", "active_job", "BatchJob", "BatchCluster", "DEFAULT_TIMEOUT",
           "FIGURES_SUFFIX"]
