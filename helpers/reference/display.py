"""How a comparison is shown, injected: one ``compare`` serves a notebook, a batch job and a test.

``compare(..., show=True)`` hands its result to the current display, a function ``display(result)``:
:class:`NotebookDisplay` by default (in IPython the line and, on a mismatch, the error heatmap;
elsewhere the line printed); a batch job sets its own with :func:`set_display` (the line, the
heatmap saved); a test passes ``show=shown.append`` or a ``NotebookDisplay(shell=..., emit=...)``.
Results are read duck-typed: this module imports nothing of the course at import time.
"""

from __future__ import annotations

from typing import Callable

__all__ = ["NotebookDisplay", "set_display", "show_result", "show_again", "text"]


def text(result) -> str:
    """The result's line, and for an expected mismatch the numbers that prove it."""
    line = str(result)
    if result.expect == "mismatch" and not result.matches:
        line += f"\nmismatch, as expected: {result.message}"
    return line


class NotebookDisplay:
    """A result in a notebook: its line (HTML) and its heatmap (PNG); printed outside IPython.

    shell: stands in for ``IPython.get_ipython()`` (its ``execution_count`` names the cell);
    emit: stands in for ``IPython.display.display``.
    """

    def __init__(self, shell=None, emit: Callable | None = None):
        self._shell = shell
        self._emit = emit

    def __call__(self, result, *, again: bool = False) -> None:
        from IPython import get_ipython  # always installed (ipyparallel needs it); None outside a kernel
        from IPython.display import Image, display

        shell = self._shell if self._shell is not None else get_ipython()
        emit = self._emit or display
        if shell is None:
            print(str(result) if again else text(result))
            return
        cell = getattr(shell, "execution_count", None)
        if again and result.shown_in is not None and result.shown_in == cell:
            result.shown_in = None  # compare() showed it in this cell already
            return
        emit({"text/plain": str(result), "text/html": result._repr_html_()}, raw=True)
        if again:
            return
        result.shown_in = cell
        if result.expect == "mismatch" and not result.matches:
            print(f"mismatch, as expected: {result.message}")
        if result.figure is not None:
            from ..viz.figure import figure_to_png

            emit(Image(data=figure_to_png(result.figure), format="png"))   # PNG: shows on any matplotlib backend


_current: Callable = NotebookDisplay()


def set_display(display: Callable | None) -> Callable:
    """Show every later comparison with ``display(result)`` (None: the notebook default).

    Returns the display it replaces, so a caller can put it back.
    """
    global _current
    previous = _current
    _current = display if display is not None else NotebookDisplay()
    return previous


def show_result(result, how=True) -> None:
    """Show ``result`` with ``how`` when it is a function, else with the current display."""
    (how if callable(how) else _current)(result)


def show_again(result) -> None:
    """IPython displays a result (the value a cell ends with): once per cell in a notebook."""
    display = _current if isinstance(_current, NotebookDisplay) else NotebookDisplay()
    display(result, again=True)
