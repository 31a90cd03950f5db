"""The browser tests' fixtures: ``lab``, a JupyterLab server attached to the session's 4-engine
gloo cluster, and ``browser_page``, a page of the system's headless Chromium driven by Playwright.
Both stop everything they started, by PID.  In CI a missing browser is a failure, elsewhere a skip.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request

import psutil
import pytest
from support import require_tool
from support.browser import (
    CHROMIUM_ARGS,
    LAB_START_TIMEOUT,
    descendants,
    free_port,
    kernels_of,
    write_lab_settings,
)
from support.notebook import NB_DIR

from helpers.cluster import kill_processes


@pytest.fixture
def lab(cluster, tmp_path):
    """A JupyterLab server on a free port, rooted at notebooks/, attached to the session cluster."""
    assert os.environ.get("TP_CLUSTER_ID") and os.environ.get("TP_PROFILE_DIR")
    port, token = free_port(), secrets.token_hex(16)
    settings = tmp_path / "lab-settings"
    write_lab_settings(str(settings))
    env = dict(os.environ)  # inherits TP_CLUSTER_ID / TP_PROFILE_DIR from the cluster fixture
    env.update(
        JUPYTERLAB_SETTINGS_DIR=str(settings),
        JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "lab-workspaces"),
        JUPYTER_RUNTIME_DIR=str(tmp_path / "jupyter-runtime"),
        JUPYTER_DATA_DIR=str(tmp_path / "jupyter-data"),  # notebook trust db etc.; kernels: sys.prefix
    )
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={NB_DIR}",
           # the checkpoint JupyterLab makes on opening a notebook goes to tmp, not the repo
           f"--FileCheckpoints.checkpoint_dir={tmp_path / 'checkpoints'}"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")  # containers and CI runners often run as root
    log_path = tmp_path / "jupyterlab.log"
    log = open(log_path, "w")
    proc = subprocess.Popen(
        cmd, cwd=NB_DIR, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    seen: dict[int, psutil.Process] = {}

    def remember_children():
        for p in descendants(proc.pid):
            seen.setdefault(p.pid, p)

    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + LAB_START_TIMEOUT
        while True:
            if proc.poll() is not None:
                pytest.fail(f"JupyterLab exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"JupyterLab did not answer within {LAB_START_TIMEOUT} s:\n"
                            f"{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield {"base": base, "token": token, "remember": remember_children, "log": log_path}
    finally:
        remember_children()  # kernels run in their own session: find them before the server goes
        # The kernels (by PID) and the server at once: the server would otherwise wait for each
        # kernel's graceful shutdown, and a server that outlives its kernel restarts it.
        for p in seen.values():
            try:
                p.terminate()
            except psutil.NoSuchProcess:
                pass
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=10)
        kill_processes([p for p in seen.values() if p.is_running()] + kernels_of(proc.pid))
        log.close()


@pytest.fixture
def browser_page(tmp_path):
    """A headless Chromium page with a fresh profile; the browser is stopped by PID at the end."""
    chromium = require_tool("chromium", "the browser test drives Debian's Chromium")
    from playwright.sync_api import sync_playwright

    me = os.getpid()
    before = {p.pid for p in descendants(me)}
    pw = sync_playwright().start()
    context = None
    started: dict[int, psutil.Process] = {}
    try:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=chromium, headless=True,
            args=CHROMIUM_ARGS, viewport={"width": 1600, "height": 1000}, device_scale_factor=1,
        )
        for p in descendants(me):
            if p.pid not in before:
                started[p.pid] = p
        page = context.pages[0] if context.pages else context.new_page()
        page.set_default_timeout(60_000)
        yield page
    finally:
        for p in descendants(me):
            if p.pid not in before:
                started.setdefault(p.pid, p)
        try:
            if context is not None:
                context.close()
        except Exception:
            pass
        try:
            pw.stop()
        except Exception:
            pass
        kill_processes([p for p in started.values() if p.is_running()])
