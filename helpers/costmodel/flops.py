"""FLOPs of a transformer block's training step: ONE formula, pure Python, no torch."""

from __future__ import annotations

from .dims import ModelDims, layer_param_specs

__all__ = ["block_flops"]


def block_flops(dims: ModelDims, tokens: int, seq_len: int) -> int:
    """FLOPs of ONE block's training step (forward + backward = 3 × forward): 2 FLOPs per weight
    of the linear layers per token, plus attention's two batched matmuls (scores and weighted
    values), 2·2·tokens·s·d, no causal saving counted. For a plain block (d_model D, d_ff F, no
    GQA, no gate) the linear layers are 4·D² + 2·D·F weights.

    >>> block_flops(ModelDims("t", d_model=4, n_layers=1, n_heads=1, d_ff=8, bias=False), tokens=2, seq_len=2)
    1728
    """
    linear = sum(s.numel for s in layer_param_specs(dims) if len(s.shape) == 2)
    return 3 * (2 * tokens * linear + 2 * 2 * tokens * seq_len * dims.d_model)
