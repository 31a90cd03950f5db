"""The course's cost model: pure Python (the standard library and :mod:`helpers.common`), no torch.

What each module owns: helpers/README.md (the map) and each module's docstring.
"""

from . import calculator, collectives, dims, flops, hardware, memory
from .calculator import *  # noqa: F403  (each module's __all__: one flat namespace, ``costmodel.plan``)
from .collectives import *  # noqa: F403
from .dims import *  # noqa: F403
from .flops import *  # noqa: F403
from .hardware import *  # noqa: F403
from .memory import *  # noqa: F403

__all__ = [n for m in (calculator, collectives, dims, flops, hardware, memory) for n in m.__all__]
