"""Real clusters for the tests: one session-wide 4-engine gloo cluster, stopped at the end.

Everything here starts real processes (ipyparallel controller and engines,
torch.distributed over gloo); nothing is mocked.  Every cluster a test starts
has a cluster id beginning with this session's ``SESSION_PREFIX`` so the session's last check can
prove none is left running.
"""

from __future__ import annotations

import contextlib
import copy
import os
import queue
import re
import shutil
import subprocess
import sys
import time
import uuid

import pytest

from helpers import cluster as hc

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(REPO, "launch_cluster.sh")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


# Every cluster id of this test session starts with SESSION_PREFIX, so the final
# sweep touches only what this session started (not a concurrent session's clusters).
SESSION_PREFIX = f"pytest{uuid.uuid4().hex[:6]}-"


def new_cluster_id(tag: str = "") -> str:
    return f"{SESSION_PREFIX}{tag}{'-' if tag else ''}{uuid.uuid4().hex[:8]}"


def require_tool(name: str, why: str) -> str:
    """The path of a tool; a failure in CI, a skip on a learner's machine."""
    path = shutil.which(name)
    if path is None:
        msg = f"{name} not found ({why})"
        if IN_CI:
            pytest.fail(msg + ": .ci/run must install it")
        pytest.skip(msg)
    return path


def script_env(cluster_id: str, profile_dir: str, **extra) -> dict:
    """Environment for running launch_cluster.sh with this test's Python and cluster."""
    env = dict(os.environ)
    env.update(
        VIRTUAL_ENV=sys.prefix,
        TP_VENV=os.path.join(str(profile_dir), "no-venv"),  # use the active env, make none
        PATH=os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", ""),
        TP_CLUSTER_ID=cluster_id,
        TP_PROFILE_DIR=str(profile_dir),
    )
    env.update(extra)
    return env


def launch(*args, cluster_id: str, profile_dir: str, timeout: float = 180, env=None, **kw):
    """Run ./launch_cluster.sh ARGS; returns the CompletedProcess (never hangs)."""
    return subprocess.run(
        [LAUNCH, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO,
        env=env or script_env(cluster_id, profile_dir), stdin=subprocess.DEVNULL, **kw,
    )


class ClusterFactory:
    """Starts real clusters for a test (``make(n=2, tag="restart")``); the finalizer stops
    every one of them and proves that none of their processes is left."""

    def __init__(self, tmp_path_factory):
        self._tmp = tmp_path_factory
        self._made = []

    def ref(self, tag: str = "") -> hc.ClusterRef:
        """A fresh identity for a cluster this test starts (by connect() or launch_cluster.sh)."""
        ref = hc.ClusterRef(new_cluster_id(tag), str(self._tmp.mktemp(tag or "cluster")))
        self._made.append((ref, None))
        return ref

    def make(self, n: int = 2, tag: str = "", **kw) -> "hc.TPCluster":
        ref = self.ref(tag)
        kw.setdefault("timeout", 20)
        kw.setdefault("activate", False)
        tc = hc.connect(n=n, cluster_id=ref.cluster_id, profile_dir=ref.profile_dir, **kw)
        self._made[-1] = (ref, tc)
        return tc

    def finish(self) -> None:
        left = []
        for ref, tc in self._made:
            if tc is not None:
                tc.shutdown(quiet=True)
            hc.stop_cluster(ref)
            left += hc.cluster_processes(ref)
        assert left == [], f"processes outlived their cluster: {left}"


@pytest.fixture
def cluster_factory(tmp_path_factory):
    factory = ClusterFactory(tmp_path_factory)
    yield factory
    factory.finish()


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    """The session's 4-engine cluster (gloo on CPU), started by connect() itself.

    TP_CLUSTER_ID / TP_PROFILE_DIR point at it, so notebooks executed by the
    tests attach to it with a plain ``connect()``.
    """
    profile = str(tmp_path_factory.mktemp("ipp-profile"))
    cid = new_cluster_id("main")
    os.environ["TP_CLUSTER_ID"] = cid
    os.environ["TP_PROFILE_DIR"] = profile
    tc = hc.connect(n=4, cluster_id=cid, profile_dir=profile, timeout=30)
    try:
        yield tc
    finally:
        tc.shutdown(quiet=True)
        os.environ.pop("TP_CLUSTER_ID", None)
        os.environ.pop("TP_PROFILE_DIR", None)


# ------------------------------------------------------------------ a real Jupyter kernel
def run_in_kernel(kc, code, timeout=60, interrupt_after=None, km=None):
    """Execute code; optionally interrupt it; returns (reply, text output) and timing."""
    msg_id = kc.execute(code)
    t_int = None
    if interrupt_after is not None:
        time.sleep(interrupt_after)
        t_int = time.monotonic()
        km.interrupt_kernel()
    reply = kc.get_shell_msg(timeout=timeout)
    while reply["parent_header"].get("msg_id") != msg_id:
        reply = kc.get_shell_msg(timeout=timeout)
    reply["_interrupt_to_reply"] = (time.monotonic() - t_int) if t_int else None
    out = []
    while True:
        try:
            m = kc.get_iopub_msg(timeout=2)
        except queue.Empty:
            break
        c = m["content"]
        out.append(c.get("text", "") + c.get("data", {}).get("text/plain", "")
                   + "\n".join(c.get("traceback", [])))
        if m["msg_type"] == "status" and c.get("execution_state") == "idle" \
                and m["parent_header"].get("msg_id") == msg_id:
            break
    return reply, "".join(out)


@contextlib.contextmanager
def jupyter_kernel(cwd: str, **env):
    """A real python3 kernel in ``cwd`` (as a notebook there would have), stopped at the end."""
    from jupyter_client.manager import start_new_kernel

    km, kc = start_new_kernel(kernel_name="python3", env=dict(os.environ, **env), cwd=str(cwd))
    try:
        yield km, kc
    finally:
        kc.stop_channels()
        if km.is_alive():
            km.shutdown_kernel(now=True)


# ------------------------------------------------------------------ notebooks, headless
def execute_notebook(nb, cell_timeout: float = 180):
    """Run ``nb`` in a fresh python3 kernel from notebooks/ (errors stay in the outputs)."""
    import time

    from nbclient import NotebookClient

    t0 = time.monotonic()
    NotebookClient(nb, timeout=cell_timeout, kernel_name="python3", allow_errors=True,
                   resources={"metadata": {"path": os.path.join(REPO, "notebooks")}}).execute()
    nb.metadata["_test_seconds"] = time.monotonic() - t0
    return nb


def _text(output) -> str:
    if output.get("output_type") == "stream":
        return output.get("text", "")
    if output.get("output_type") == "error":
        return "\n".join(output.get("traceback", [])) + output.get("evalue", "")
    data = output.get("data", {})  # %%px relays engine output as display_data text
    return data.get("text/plain", "") + data.get("text/html", "")


def cell_text(cell) -> str:
    return "".join(_text(o) for o in cell.get("outputs", []))


def assert_clean(nb) -> None:
    """Every code cell ran; no error output and no traceback anywhere."""
    problems = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        if cell.get("execution_count") is None:
            problems.append(f"cell {i} did not run")
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                problems.append(f"cell {i} raised {out.get('ename')}: {out.get('evalue')}"
                                f"\n  source: {cell.source[:200]!r}")
            elif "Traceback" in _text(out):
                problems.append(f"cell {i} printed a traceback: {_text(out)[-600:]}")
    assert not problems, "\n".join(problems)


# ------------------------------------------------------------------ notebook structure
_SOLUTION_RE = re.compile(r"```python\n(.*?)```", re.S)


def tags(cell) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def tagged_cell(nb, tag: str):
    found = [c for c in nb.cells if tag in tags(c)]
    assert len(found) == 1, f"expected exactly one cell tagged {tag!r}, found {len(found)}"
    return found[0]


def solution_code(nb, n: str) -> str:
    """The ```python block of the collapsed solution cell ``solution-n``."""
    cell = tagged_cell(nb, f"solution-{n}")
    assert cell.cell_type == "markdown"
    assert "<details>" in cell.source and "</details>" in cell.source
    m = _SOLUTION_RE.search(cell.source)
    assert m, f"solution-{n} has no ```python block"
    return m.group(1).strip("\n")


def with_solutions(nb, exercises):
    """A copy of ``nb`` whose exercise cells hold the solutions' code."""
    nb = copy.deepcopy(nb)
    for n in exercises:
        tagged_cell(nb, f"exercise-{n}").source = solution_code(nb, n)
    return nb


def assert_dense_checks_pass(nb) -> None:
    """Every compare(...) line outside the exercise checkers is a ✅ (break-it cells included)."""
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code" or any(t.startswith("check-") for t in tags(cell)):
            continue
        assert "❌" not in cell_text(cell), f"cell {i} reports a failed check:\n{cell_text(cell)}"


def assert_run(nb, exercises, *, solved: bool, label: str) -> float:
    """A headless run is clean, every dense check passes (break-it cells included), and each
    exercise checker says "❌ not yet" (blanks) or "✅ correct" (solutions). Prints and returns
    the run's seconds."""
    assert_clean(nb)
    assert_dense_checks_pass(nb)
    for n in exercises:
        out = cell_text(tagged_cell(nb, f"check-{n}"))
        if solved:
            assert "✅ correct" in out and "❌" not in out, f"checker {n} with the solution said: {out!r}"
        else:
            assert "❌ not yet" in out and "✅ correct" not in out, f"checker {n} with the blank said: {out!r}"
    seconds = nb.metadata["_test_seconds"]
    print(f"\nnotebook {label} with {'solutions' if solved else 'blanks'}: {seconds:.1f} s")
    return seconds


def assert_exercises_and_engine_cells(nb, exercises) -> None:
    """Each exercise is a %%px cell with a blank, a collapsed solution and a checker cell right
    after it; no %%px cell pins a device by name (the same cells run on CPU and GPU)."""
    cells = nb.cells
    for n in exercises:
        ex = tagged_cell(nb, f"exercise-{n}")
        assert ex.cell_type == "code" and ex.source.startswith("%%px")
        assert "← your code" in ex.source
        sol = solution_code(nb, n)
        assert sol.startswith("%%px") and "← your code" not in sol
        assert "check-" + n in tags(cells[cells.index(ex) + 1])
    for c in cells:
        if c.cell_type == "code" and c.source.startswith("%%px"):
            assert "cuda:" not in c.source and '"cpu"' not in c.source, c.source[:80]


def assert_committed_without_outputs(nb) -> None:
    import nbformat

    nbformat.validate(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"cell {i} was committed with outputs"
            assert cell.execution_count is None, f"cell {i} was committed with an execution count"


def pytest_sessionfinish(session, exitstatus):
    """Nothing we started may outlive the suite."""
    import psutil

    left = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if p.environ().get("IPP_CLUSTER_ID", "").startswith(SESSION_PREFIX):
                left.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    if left:
        desc = ", ".join(f"{p.pid} {' '.join(p.info['cmdline'] or [])[:80]}" for p in left)
        for p in left:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        print(f"\nERROR: {len(left)} cluster processes outlived the tests: {desc}", file=sys.stderr)
        session.exitstatus = 1
