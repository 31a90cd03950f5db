"""Notebook 01 in a real browser: JupyterLab + headless Debian Chromium, driven by Playwright.

JupyterLab is started in a fixture with the session cluster's TP_CLUSTER_ID / TP_PROFILE_DIR,
so the notebook's ``connect()`` attaches to the session's 4-engine gloo cluster. The test runs
all cells, waits for the layout explorer, checks its picture shows the colours of ranks 0..3,
changes the TP-degree slider to 2 (through the slider's editable readout, as a learner would),
waits for the new picture, and checks it shows exactly ranks 0 and 1. No cell may show an error.

The fixtures (``lab``, ``browser_page``) are in tests/browser/conftest.py, the page helpers in
tests/support/browser.py.
"""

from __future__ import annotations

import time

import pytest
from support.browser import errors_in_page, open_and_run_all, screenshot_on_failure

from helpers.viz import count_rank_colors

pytestmark = pytest.mark.browser

NB_NAME = "01_basic_tensor_parallel.ipynb"
EXPLORER = ".tp-layout-explorer"
IMAGE = f"{EXPLORER} img.tp-layout-image"


def _shot_colors(page) -> tuple[set[int], bytes]:
    img = page.locator(IMAGE)
    img.scroll_into_view_if_needed()
    png = img.screenshot()
    return count_rank_colors(png), png


# ---------------------------------------------------------------------------------------- test
def test_layout_explorer_in_jupyterlab(lab, browser_page, tmp_path):
    page = browser_page
    t0 = time.monotonic()
    with screenshot_on_failure(page, lab, tmp_path):
        t_run = open_and_run_all(page, lab, NB_NAME, IMAGE)
        assert page.locator(".jp-OutputArea-output", has_text="❌ not yet").count() == 2

        src_before = page.locator(IMAGE).get_attribute("src")
        assert src_before
        before, png_before = _shot_colors(page)
        (tmp_path / "explorer-degree4.png").write_bytes(png_before)
        assert before == set(range(4)), f"degree 4: rank colours {sorted(before)}"

        # TP degree 4 -> 2 through the slider's editable readout
        readout = page.locator(f"{EXPLORER} .tp-degree .widget-readout")
        readout.click()
        page.keyboard.press("End")
        for _ in range(3):
            page.keyboard.press("Backspace")
        page.keyboard.type("2")
        page.keyboard.press("Enter")
        page.wait_for_function(
            "([sel, old]) => { const i = document.querySelector(sel);"
            " return i && i.getAttribute('src') && i.getAttribute('src') !== old && i.complete; }",
            arg=[IMAGE, src_before], timeout=60_000)
        page.wait_for_function(
            "(sel) => { const i = document.querySelector(sel); return i && i.naturalWidth > 0; }",
            arg=IMAGE)
        after, png_after = _shot_colors(page)
        (tmp_path / "explorer-degree2.png").write_bytes(png_after)
        assert after == set(range(2)), f"degree 2: rank colours {sorted(after)}"
        assert readout.inner_text().strip() == "2"

        errors = errors_in_page(page)
        assert not errors, "error output in the page:\n" + "\n---\n".join(errors)
        print(f"\nbrowser: run all {t_run:.1f} s, whole test {time.monotonic() - t0:.1f} s")
