"""Fixtures shared by every kind of test (unit, cluster, notebooks, browser, torchrun), and the
session's last check: nothing a test started may outlive the suite.

Fixtures and hooks only; the functions the tests share are in tests/support/.  Each kind's own
fixtures are in its folder's conftest.py (notebooks/: the notebook runs; browser/: JupyterLab
and Chromium).
"""

from __future__ import annotations

import os
import sys

import pytest
from support import SESSION_PREFIX, ClusterFactory, new_cluster_id

from helpers import cluster as hc


@pytest.fixture
def cluster_factory(tmp_path_factory):
    """Real clusters for one test (``cluster_factory.make(n=2, tag="restart")``); at the end every
    one is stopped and none of its processes may be left."""
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

def pytest_ignore_collect(collection_path, config):
    """--doctest-modules would import every conftest.py as a module named ``conftest`` (they are
    in no package), and the second one clashes with the first; they hold no doctests."""
    if collection_path.name == "conftest.py":
        return True
    return None


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
