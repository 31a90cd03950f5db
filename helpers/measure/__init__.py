"""Rank-side instruments (torch): what a rank sends, how long its step takes, what it holds.

* :mod:`.comm` -- :class:`~.comm.CommRecorder`, the one comm recorder (explicit collectives and
  DTensor's alike; per collective, per module, forward/backward), bytes from :mod:`helpers.costmodel`;
* :mod:`.timer` -- :class:`~.timer.StepTimer` (matmul / communication / other), ``timed_linear``;
* :mod:`.memory` -- storage sizes of parameters, gradients, optimizer state and saved activations.

The formulas these are checked against live in :mod:`helpers.costmodel`.
"""
