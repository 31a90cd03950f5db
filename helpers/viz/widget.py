"""What every figure widget of the course shares: controls above a figure drawn as PNG.

Each change of a watched control's value redraws exactly once; the figure is closed after
rendering; a drawing error goes, as one line, to an ``Output`` under the picture (never a
traceback), and the widget stays alive.
"""

from __future__ import annotations

import ipywidgets as widgets

from .figure import render_png

__all__ = ["FigureWidget"]


class FigureWidget(widgets.VBox):
    """A ``VBox`` of controls, ``image`` (an ``ipywidgets.Image``, PNG) and ``messages``.

    Subclasses build their controls, call :meth:`_assemble` and define :meth:`figure`.
    ``redraw_count``: pictures drawn (the last one's PNG bytes are ``image.value``).
    """

    what = "figure"  # the message says "could not draw this <what>"

    def _assemble(self, columns, css_class: str, image_class: str | None = None) -> None:
        """``columns``: lists of controls, side by side above the picture; a change of any redraws."""
        self.image = widgets.Image(format="png")
        if image_class:
            self.image.add_class(image_class)
        self.messages = widgets.Output()
        self.redraw_count = 0
        super().__init__([widgets.HBox([widgets.VBox(c) for c in columns]), self.image, self.messages])
        self.add_class(css_class)
        self.redraw()
        for w in (w for c in columns for w in c):
            w.observe(lambda _change: self.redraw(), names="value")

    def figure(self):
        raise NotImplementedError

    def redraw(self) -> None:
        """Render :meth:`figure` for the current control values into ``self.image``."""
        self.messages.clear_output()
        try:
            self.image.value = render_png(self.figure())
        except Exception as e:  # keep the widget alive; say what went wrong under the picture
            self.messages.append_stdout(f"could not draw this {self.what}: {type(e).__name__}: {e}\n")
            return
        self.redraw_count += 1
