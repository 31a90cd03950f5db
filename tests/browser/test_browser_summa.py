"""Notebook 04's widgets in a real browser: JupyterLab + headless Debian Chromium, Playwright.

Uses the fixtures of tests/browser/conftest.py (``lab``: JupyterLab on the session's 4-engine gloo
cluster; ``browser_page``: the system's Chromium) and the page helpers of tests/support/browser.py.
Runs every cell of notebook 04, then drives its two widgets as a learner would:

* the 2D layout explorer: picking p = 16 redraws a 4 x 4 grid (rank colours 0..7 wrap, so the
  picture gains colours); picking a p that is not a square draws the message instead of blocks;
* the SUMMA stepper: step 1 -> 2 through the slider's readout redraws the real blocks.
"""

from __future__ import annotations

import time

import pytest
from support.browser import errors_in_page, open_and_run_all, screenshot_on_failure

from helpers.viz import count_rank_colors

pytestmark = pytest.mark.browser

NB_NAME = "04_2d_tensor_parallel.ipynb"
EXPLORER = ".tp-layout-explorer"
STEPPER = ".tp-summa-stepper"


def _new_image(page, selector: str, old: str) -> None:
    page.wait_for_function(
        "([sel, old]) => { const i = document.querySelector(sel);"
        " return i && i.getAttribute('src') !== old && i.complete && i.naturalWidth > 0; }",
        arg=[selector, old], timeout=60_000)


def _colors(page, selector: str) -> set[int]:
    img = page.locator(selector)
    img.scroll_into_view_if_needed()
    return count_rank_colors(img.screenshot())


def test_summa_widgets_in_jupyterlab(lab, browser_page, tmp_path):
    page = browser_page
    t0 = time.monotonic()
    with screenshot_on_failure(page, lab, tmp_path):
        t_run = open_and_run_all(page, lab, NB_NAME, f"{STEPPER} img")

        # the explorer: 2D SUMMA on p = 4 shows ranks 0..3; p = 16 draws more blocks
        image = f"{EXPLORER} img.tp-layout-image"
        assert _colors(page, image) >= set(range(4))
        old = page.locator(image).get_attribute("src")
        page.locator(f"{EXPLORER} .tp-p select").select_option("16")
        _new_image(page, image, old)
        assert _colors(page, image) == set(range(8))  # 16 ranks: the 8 rank colours, twice
        # p = 8 is not a square: the picture becomes the message (no blocks, no traceback)
        old = page.locator(image).get_attribute("src")
        page.locator(f"{EXPLORER} .tp-p select").select_option("8")
        _new_image(page, image, old)
        assert _colors(page, image) == set(), "p = 8 drew blocks instead of saying it is not a square"

        # the stepper: step 1 -> 2 through the slider's readout
        step_image = f"{STEPPER} img"
        old = page.locator(step_image).get_attribute("src")
        readout = page.locator(f"{STEPPER} .tp-summa-step .widget-readout")
        readout.click()
        page.keyboard.press("End")
        page.keyboard.press("Backspace")
        page.keyboard.type("2")
        page.keyboard.press("Enter")
        _new_image(page, step_image, old)
        assert readout.inner_text().strip() == "2"
        assert _colors(page, step_image) == set(range(4))

        errors = errors_in_page(page)
        assert not errors, "error output in the page:\n" + "\n---\n".join(errors)
        (tmp_path / "summa-step2.png").write_bytes(page.locator(STEPPER).screenshot())
        print(f"\nbrowser (notebook 04): run all {t_run:.1f} s, whole test {time.monotonic() - t0:.1f} s")
