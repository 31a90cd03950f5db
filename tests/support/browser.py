"""The browser tests' shared pieces: JupyterLab's and Chromium's processes (for the fixtures of
tests/browser/conftest.py) and what every test does on the page (run all cells, wait for them,
read the errors).

The browser is the system's Chromium (``executable_path``); nothing is downloaded
(never ``playwright install``).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time

import psutil

CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--force-color-profile=srgb",
]
LAB_START_TIMEOUT = 90      # s: JupyterLab answering /api/status on a busy 2-core machine
RUN_ALL_TIMEOUT = 240       # s: kernel start + every cell of a notebook (01's, 04's, 06's)


# ---------------------------------------------------------------------------------- processes
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def kernels_of(server_pid: int) -> list[psutil.Process]:
    """Kernels the server started (they carry JPY_PARENT_PID), even if reparented."""
    found = []
    for p in psutil.process_iter(["pid"]):
        try:
            if p.environ().get("JPY_PARENT_PID") == str(server_pid):
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    return found


def write_lab_settings(settings_dir: str) -> None:
    """Lab settings for a test: every cell in the DOM, no autosave, no news/update pop-ups."""
    files = {
        "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
        # never write outputs into the committed notebook
        "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
        "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
            "fetchNews": "false", "checkForUpdates": False},
    }
    for rel, content in files.items():
        path = os.path.join(settings_dir, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            json.dump(content, f)


# ------------------------------------------------------------------------------------- the page
_STARTED_JS = """
() => [...document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputPrompt')]
        .some(p => /\\[(\\*|\\d+)\\]/.test(p.textContent))
"""


def run_all(page) -> None:
    """Run → Run All Cells, from the menu bar (with the notebook focused); clicked again if no
    cell has started 30 s later (seen once here: a click that landed while JupyterLab was still
    attaching the kernel was lost, and every cell stayed ``[ ]``)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    for attempt in range(3):
        page.locator(".jp-NotebookPanel .jp-Notebook").first.click(position={"x": 5, "y": 5})
        page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
        page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
        try:
            page.wait_for_function(_STARTED_JS, timeout=30_000)
            return
        except PlaywrightTimeout:
            if attempt == 2:
                raise


# Done when every code cell has an execution count, or as soon as one shows a traceback
# (JupyterLab stops "run all" at the first error, so the rest would never get a count).
ALL_DONE_JS = """
() => {
  const errors = [...document.querySelectorAll(
      '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')];
  if (errors.some(e => e.textContent.includes('Traceback'))) return true;
  const prompts = [...document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputPrompt')];
  if (prompts.length === 0) return false;
  return prompts.every(p => /\\[\\d+\\]/.test(p.textContent));
}
"""


def errors_in_page(page) -> list[str]:
    texts = page.locator(
        '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]').all_inner_texts()
    return [t[-800:] for t in texts if "Traceback" in t]


def open_and_run_all(page, lab, nb_name: str, ready: str) -> float:
    """Open ``nb_name`` in the lab, Run All, wait until the ``ready`` selector shows and every cell
    finished, with no error output in the page. Returns the seconds it took."""
    t0 = time.monotonic()
    page.goto(f"{lab['base']}/lab/tree/{nb_name}?token={lab['token']}")
    page.locator(".jp-NotebookPanel .jp-Notebook .jp-Cell").first.wait_for(state="visible")
    run_all(page)
    page.locator(ready).wait_for(state="visible", timeout=RUN_ALL_TIMEOUT * 1000)
    page.wait_for_function(ALL_DONE_JS, timeout=RUN_ALL_TIMEOUT * 1000, polling=1000)
    lab["remember"]()
    seconds = time.monotonic() - t0
    errors = errors_in_page(page)
    assert not errors, "error output in the page:\n" + "\n---\n".join(errors)
    return seconds


@contextlib.contextmanager
def screenshot_on_failure(page, lab, tmp_path):
    """A failing browser test leaves a full-page screenshot (and says where, with the lab's log)."""
    try:
        yield
    except BaseException:
        try:
            page.screenshot(path=str(tmp_path / "failure.png"), full_page=True)
            print(f"\nscreenshot: {tmp_path / 'failure.png'}; lab log: {lab['log']}")
        except Exception:
            pass
        raise
