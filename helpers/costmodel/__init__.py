"""The course's cost model: pure Python (the standard library and :mod:`helpers.common`), no torch.

* :mod:`.dims` -- a transformer's shapes, the precisions, how ranks share it (``Setup``);
* :mod:`.collectives` -- the ONE byte convention (n = bytes of the full tensor; bytes sent per
  rank), the alpha-beta time, the link fit, TP's collectives per block, 1D vs 2D layouts;
* :mod:`.memory` -- parameters, gradients, optimizer state and activations per rank;
* :mod:`.flops` -- a block's FLOPs;
* :mod:`.hardware` -- Derecho's nodes and links and the reference efficiency table, with sources;
* :mod:`.calculator` -- notebook 06's "does my model need TP?" plan.
"""
