"""The course's models, built from one set of parts (:mod:`.parts`), and their TP plans (:mod:`.plans`).

Torch only: the same code runs on ipyparallel engines and under torchrun.

* :mod:`.parts` -- ``Attention`` (``n_heads``, ``n_kv_heads``, an optional ``KVCache``), ``MLP``,
  ``GatedMLP``, the pre-norm ``Block``, ``interleave_qkv``;
* :mod:`.transformer` -- ``TinyTransformer`` (notebook 03), ``GPTConfig`` and ``TinyGPT``
  (notebooks 05, 07), ``lm_loss``, ``greedy``;
* :mod:`.plans` -- the plans as plain dicts and the functions that apply them;
* :mod:`.parallel_block` -- notebook 06's hand-built, timed ``ParallelBlock``.
"""

from __future__ import annotations

from .parts import MLP, Attention, Block, GatedMLP, KVCache, attend, interleave_qkv
from .transformer import GPTConfig, TinyGPT, TinyTransformer, greedy, lm_loss

__all__ = ["attend", "KVCache", "Attention", "MLP", "GatedMLP", "Block", "interleave_qkv",
           "TinyTransformer", "GPTConfig", "TinyGPT", "lm_loss", "greedy"]
