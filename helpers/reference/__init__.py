"""Dense-vs-TP checks, the notebook's side of every comparison (torch; never a collective).

* :mod:`.compare` -- ``compare``, ``compare_grads``, ``reassemble``: pure, a :class:`Result` out;
* :mod:`.display` -- how a result is shown (IPython, printed, a batch job's), injected with
  :func:`set_display`;
* :mod:`.dtensor` -- :class:`DTensorView`, a DTensor living on the ranks seen here
  (``cluster.pull_dtensor``).
"""

from .compare import ComparisonError, Result, compare, compare_grads, error_heatmap, reassemble
from .display import NotebookDisplay, set_display
from .dtensor import DTensorView

__all__ = ["compare", "compare_grads", "reassemble", "error_heatmap", "Result", "ComparisonError",
           "set_display", "NotebookDisplay", "DTensorView"]
