"""The course's cost model: pure Python (the standard library and :mod:`helpers.common`), no torch.

* :mod:`.dims` -- a transformer's shapes, the precisions, how ranks share it (``Setup``);
* :mod:`.collectives` -- the ONE byte convention (n = bytes of the full tensor; bytes sent per
  rank), the alpha-beta time, the link fit, TP's collectives per block, 1D vs 2D layouts;
* :mod:`.memory` -- parameters, gradients, optimizer state and activations per rank;
* :mod:`.flops` -- a block's FLOPs;
* :mod:`.hardware` -- Derecho's nodes and links and the reference efficiency table, with sources;
* :mod:`.calculator` -- notebook 06's "does my model need TP?" plan.
"""

from . import calculator, collectives, dims, flops, hardware, memory
from .calculator import *  # noqa: F403  (each module's __all__: one flat namespace, ``costmodel.plan``)
from .collectives import *  # noqa: F403
from .dims import *  # noqa: F403
from .flops import *  # noqa: F403
from .hardware import *  # noqa: F403
from .memory import *  # noqa: F403

__all__ = [n for m in (calculator, collectives, dims, flops, hardware, memory) for n in m.__all__]
