"""The course's models, built from one set of parts (:mod:`.parts`), and their TP plans (:mod:`.plans`).

Torch only: the same code runs on ipyparallel engines and under torchrun.
"""

from __future__ import annotations

from .parts import MLP, Attention, Block, GatedMLP, KVCache, attend, interleave_qkv
from .transformer import GPTConfig, TinyGPT, TinyTransformer, greedy, lm_loss

__all__ = ["attend", "KVCache", "Attention", "MLP", "GatedMLP", "Block", "interleave_qkv",
           "TinyTransformer", "GPTConfig", "TinyGPT", "lm_loss", "greedy"]
