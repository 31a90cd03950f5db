"""Dense-vs-TP checks, the notebook's side of every comparison (torch; never a collective)."""

from .compare import ComparisonError, Result, compare, compare_grads, error_heatmap, reassemble
from .display import NotebookDisplay, set_display
from .dtensor import DTensorView

__all__ = ["compare", "compare_grads", "reassemble", "error_heatmap", "Result", "ComparisonError",
           "set_display", "NotebookDisplay", "DTensorView"]
