"""Faults, for real: wrong collectives, interrupts, dead engines, bad input, isolation, teardown.

Two clusters side by side are covered in test_cluster.py.

A cluster of its own (4 engines, a 5 s process-group timeout) so the session
cluster is never broken.  Interrupts go through a real Jupyter kernel
(jupyter_client), exactly as the notebook's stop button sends them.
"""

from __future__ import annotations

import os
import signal
import stat
import textwrap
import time

import psutil
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import REPO, new_cluster_id, run_in_kernel

from helpers import cluster as hc
from helpers import connect
from helpers.cluster import CollectiveError, DeadRankError

PG_TIMEOUT = 5.0
pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def fc(tmp_path_factory):
    """The fault cluster, plus an IPython shell with its %%px magics."""
    from IPython.testing.globalipapp import start_ipython

    shell = start_ipython()
    profile = str(tmp_path_factory.mktemp("faults"))
    cid = new_cluster_id("faults")
    tc = connect(n=4, cluster_id=cid, profile_dir=profile, timeout=PG_TIMEOUT)
    tc.shell = shell
    try:
        yield tc
    finally:
        tc.shutdown(quiet=True)
        assert hc.cluster_processes(cid) == []


def px(tc, code: str, line: str = ""):
    tc.activate()
    return tc.shell.run_cell_magic("px", line, textwrap.dedent(code))


def healthy(tc) -> bool:
    tc.run("_h = torch.ones(1); dist.all_reduce(_h); _h = _h.item()")
    return tc.pull("_h") == [float(tc.world_size)] * tc.world_size


# ----------------------------------------------------------------- wrong collectives
def test_partial_collective_fails_fast_with_one_clear_message(fc):
    px(fc, "kept = 100 + rank")
    t0 = time.monotonic()
    with pytest.raises(CollectiveError) as e:
        px(fc, """
            t = torch.ones(1)
            if rank != 3:
                dist.all_reduce(t)
        """)
    elapsed = time.monotonic() - t0
    assert elapsed < PG_TIMEOUT + 5, f"took {elapsed:.1f} s"
    msg = str(e.value)
    for r in (0, 1, 2):
        assert f"rank {r}: waited in `dist.all_reduce(t)` (cell line 3)" in msg
    assert "rank 3: finished the cell without entering that collective" in msg
    assert msg.strip().splitlines()[-1].startswith("The process group is broken")
    assert "cluster.recover()" in msg

    t0 = time.monotonic()
    fc.recover()
    assert time.monotonic() - t0 <= 2.0
    assert fc.pull("kept") == [100, 101, 102, 103], "engine variables survive recover()"
    assert healthy(fc)


def test_targets_slip_names_the_ranks_left_out(fc):
    with pytest.raises(CollectiveError) as e:
        px(fc, "t = torch.ones(1); dist.all_reduce(t)", line="--targets 0:2")  # the first two engines: ranks 0 and 1
    msg = str(e.value)
    assert "rank 0: waited in" in msg and "rank 1: waited in" in msg
    assert "rank(s) 2, 3: not targeted by this cell" in msg
    fc.recover()
    assert healthy(fc)


def test_ordinary_errors_are_shown_as_they_are(fc):
    from ipyparallel.error import CompositeError

    with pytest.raises(CompositeError, match="NameError"):
        px(fc, "undefined_name + 1")
    assert healthy(fc)


# ----------------------------------------------------------------- interrupts
@pytest.fixture
def kernel(fc):
    """A real Jupyter kernel attached to the fault cluster (as a notebook would be)."""
    from jupyter_client.manager import start_new_kernel

    env = dict(os.environ, TP_CLUSTER_ID=fc.cluster_id, TP_PROFILE_DIR=fc.profile_dir)
    km, kc = start_new_kernel(kernel_name="python3", env=env, cwd=REPO)
    try:
        reply, out = run_in_kernel(kc, "from helpers import connect\ncluster = connect()")
        assert reply["content"]["status"] == "ok", out
        yield km, kc
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
        # the kernel took the cluster over (one notebook drives it at a time): take it back
        connect(cluster_id=fc.cluster_id, profile_dir=fc.profile_dir)


def test_interrupt_inside_a_collective_stops_every_engine_within_2s(fc, kernel):
    km, kc = kernel
    fc.init_distributed(force=True, timeout=60)  # a long timeout: only the interrupt can end it
    try:
        reply, out = run_in_kernel(kc, textwrap.dedent("""
            %%px
            t = torch.ones(1)
            if rank != 3:
                dist.all_reduce(t)
        """), interrupt_after=2.0, km=km)
        assert reply["_interrupt_to_reply"] <= 2.5, reply["_interrupt_to_reply"]
        assert "did NOT survive" in out and "cluster.recover()" in out, out
        assert set(fc.recovery.busy_ranks()) == set()
        reply, out = run_in_kernel(kc, "cluster.recover()")
        assert "every engine variable was kept" in out, out
    finally:
        fc.init_distributed(force=True, timeout=PG_TIMEOUT)
    assert healthy(fc)


def test_interrupt_of_a_python_loop_keeps_the_process_group(fc, kernel):
    km, kc = kernel
    reply, out = run_in_kernel(kc, "%%px\nimport time\nwhile True:\n    time.sleep(0.01)",
                               interrupt_after=1.5, km=km)
    assert reply["_interrupt_to_reply"] <= 2.0
    assert "process group survived" in out, out
    assert healthy(fc)


# ----------------------------------------------------------------- dead engines
def test_dead_engine_is_reported_by_rank_and_recovered(fc):
    px(fc, "weights = torch.full((2,), float(rank))")
    victim = fc.engines[2]
    os.kill(victim.pid, signal.SIGKILL)
    deadline = time.monotonic() + 15
    while victim.engine_id in fc.client.ids and time.monotonic() < deadline:
        time.sleep(0.2)
    with pytest.raises(DeadRankError, match=r"rank 2 \(engine \d+, pid %d" % victim.pid):
        px(fc, "x = 1")
    t0 = time.monotonic()
    msg = fc.recover()
    elapsed = time.monotonic() - t0
    assert elapsed <= 15, f"recover took {elapsed:.1f} s"
    assert fc.pull("rank") == [0, 1, 2, 3]
    assert "weights" in msg and "re-running" in msg
    assert healthy(fc)


# ----------------------------------------------------------------- bad input
@settings(max_examples=25, deadline=None)
@given(n=st.one_of(st.integers(max_value=0), st.text(max_size=4), st.floats(), st.booleans()),
       timeout=st.one_of(st.just(30.0), st.floats(max_value=0), st.text(max_size=3)))
def test_connect_refuses_bad_arguments_before_starting_anything(n, timeout, tmp_path_factory):
    cid = new_cluster_id("fuzz")
    profile = str(tmp_path_factory.getbasetemp() / "fuzz")
    with pytest.raises((ValueError, TypeError)) as e:
        connect(n=n, timeout=timeout, cluster_id=cid, profile_dir=profile, start_timeout=5)
    assert str(e.value)  # a message, with the offending value
    assert not os.path.exists(os.path.join(profile, "security", f"cluster-{cid}.json"))


@settings(max_examples=12, deadline=None)
@given(size=st.integers(min_value=-3, max_value=40), degree=st.sampled_from([2, 4]),
       kind=st.sampled_from(["ColumnParallelLinear", "RowParallelLinear"]))
def test_layer_constructors_refuse_before_any_collective(fc, size, degree, kind):
    """Every rank raises the same ValueError; no rank is left inside a collective."""
    fc.push(_size=size, _degree=degree, _kind=kind)
    fc.run(textwrap.dedent("""
        from helpers import tp as _tp
        _groups = globals().get("_groups") or {2: [dist.new_group([0, 1]), dist.new_group([2, 3])], 4: [None]}
        _g = _groups[_degree][rank // _degree] if _degree == 2 else None
        try:
            getattr(_tp, _kind)(16, _size, group=_g) if _kind == "ColumnParallelLinear" else \\
                getattr(_tp, _kind)(_size, 16, group=_g)
            _err = None
        except (ValueError, TypeError) as e:
            _err = str(e)
    """))
    errs = fc.pull("_err")
    if size > 0 and size % degree == 0:
        assert errs == [None] * 4
    else:
        assert all(e is not None and str(size) in e for e in errs), errs
        assert len(set(errs)) == 1
    assert healthy(fc)


def test_nccl_without_gpus_is_refused(fc):
    if hc.visible_gpus():
        pytest.skip("this machine has GPUs")
    with pytest.raises(ValueError, match="needs one GPU per engine.*runs 4 engines and sees 0 GPU"):
        fc.init_distributed(backend="nccl")
    assert healthy(fc)


# ----------------------------------------------------------------- isolation and security
def test_files_are_private_and_nothing_listens_beyond_loopback(fc):
    sec = os.path.join(fc.profile_dir, "security")
    for name in os.listdir(sec):
        if name.endswith(".json") and ("ipcontroller" in name or name.startswith("tp-")):
            mode = stat.S_IMODE(os.stat(os.path.join(sec, name)).st_mode)
            assert mode & 0o077 == 0, f"{name} is readable by others: {oct(mode)}"
    listening = []
    for p in hc.cluster_processes(fc.cluster_id):
        try:
            for c in p.net_connections("inet"):
                if c.status == psutil.CONN_LISTEN:
                    listening.append((p.pid, c.laddr.ip, c.laddr.port))
        except psutil.NoSuchProcess:
            pass
    assert listening
    wide = [x for x in listening if x[1] not in ("127.0.0.1", "::ffff:127.0.0.1", "::1")]
    assert not wide, f"listening beyond loopback: {wide}"
