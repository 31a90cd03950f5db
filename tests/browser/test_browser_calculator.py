"""Notebook 06's TP calculator in a real browser: JupyterLab + headless Debian Chromium, Playwright.

Uses the fixtures of tests/browser/conftest.py (``lab``: JupyterLab attached to the session's 4-engine
gloo cluster; ``browser_page``: the system's Chromium) and the page helpers of tests/support/browser.py.
The test runs every cell of notebook 06, then drives the calculator as a learner would: types a TP
degree above the GPUs of a node (a message, no traceback), goes back to 4 (the recommendation
again), types a negative GPU memory (a message), and picks the Llama 2 7B preset (a different
recommendation, a new picture).
"""

from __future__ import annotations

import time

import pytest
from support.browser import errors_in_page, open_and_run_all, screenshot_on_failure

pytestmark = pytest.mark.browser

NB_NAME = "06_when_tp_pays_off.ipynb"
CALC = ".tp-calculator"
MESSAGE = f"{CALC} .tp-calc-message"
RESULT = f"{CALC} .tp-calc-result"
IMAGE = f"{CALC} img.tp-calc-image"


def _type_into(page, field: str, value: str) -> None:
    """Type ``value`` into the calculator's ``field`` and commit it (Enter), as a learner would."""
    box = page.locator(f"{CALC} .tp-calc-{field} input")
    box.scroll_into_view_if_needed()
    box.fill(value)
    box.press("Enter")


def _wait_text(page, selector: str, text: str, present: bool = True) -> None:
    page.wait_for_function(
        "([sel, text, present]) => { const e = document.querySelector(sel);"
        " return !!e && e.textContent.includes(text) === present; }",
        arg=[selector, text, present], timeout=60_000)


def test_calculator_in_jupyterlab(lab, browser_page, tmp_path):
    page = browser_page
    t0 = time.monotonic()
    with screenshot_on_failure(page, lab, tmp_path):
        t_run = open_and_run_all(page, lab, NB_NAME, IMAGE)

        # the defaults: Llama 2 70B on Derecho
        assert "Use TP=4 within the node" in page.locator(RESULT).inner_text()
        assert page.locator(MESSAGE).inner_text().strip() == ""

        # a TP degree above the GPUs of a node: a message in the widget, no plan, no traceback
        _type_into(page, "tp", "8")
        _wait_text(page, MESSAGE, "TP degree 8 is above the 4 GPUs of a node")
        assert "no plan until the inputs make sense" in page.locator(RESULT).inner_text()

        # back to 4: the message goes, the plan comes back
        _type_into(page, "tp", "4")
        _wait_text(page, MESSAGE, "TP degree 8", present=False)
        _wait_text(page, RESULT, "Use TP=4 within the node")

        # nonsense memory: a message; then a sensible value again
        _type_into(page, "gpu_memory_gb", "-40")
        _wait_text(page, MESSAGE, "gpu_memory_gb must be a positive number of GB")
        _type_into(page, "gpu_memory_gb", "40")
        _wait_text(page, RESULT, "Use TP=4 within the node")

        # another model: Llama 2 7B needs FSDP, no TP; the picture is redrawn
        src_before = page.locator(IMAGE).get_attribute("src")
        page.locator(f"{CALC} .tp-calc-preset select").select_option("Llama 2 7B")
        _wait_text(page, RESULT, "Use FSDP across GPUs, no TP")
        page.wait_for_function(
            "([sel, old]) => { const i = document.querySelector(sel);"
            " return i && i.getAttribute('src') !== old && i.complete && i.naturalWidth > 0; }",
            arg=[IMAGE, src_before], timeout=60_000)
        assert page.locator(f"{CALC} .tp-calc-d_model input").input_value() == "4096"

        errors = errors_in_page(page)
        assert not errors, "error output in the page:\n" + "\n---\n".join(errors)
        (tmp_path / "calculator.png").write_bytes(page.locator(CALC).screenshot())
        print(f"\nbrowser (notebook 06): run all {t_run:.1f} s, whole test {time.monotonic() - t0:.1f} s")
