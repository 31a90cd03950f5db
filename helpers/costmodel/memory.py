"""Memory per rank, as formulas: pure Python, no torch. A training step's weights, gradients, AdamW
state and activations (dense, TP, FSDP, TP × FSDP, sequence parallelism), and notebook 07's KV
cache during generation (the ONE home of its formula). Checked by hand in the tests and against
storage sizes measured on the engines (:mod:`helpers.measure.memory`) in notebooks 03 and 05.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..common.numbers import divisors
from .dims import ModelDims, Setup, check_setup, check_whole, layer_param_specs, precision_of

__all__ = ["param_elements_per_rank", "param_bytes", "activation_elements_per_layer",
           "block_activation_bytes", "MemoryBreakdown", "memory_per_rank", "layers_that_fit",
           "kv_heads_per_rank", "kv_cache_bytes"]


def param_elements_per_rank(dims: ModelDims, setup: Setup) -> int:
    """Parameter elements one rank stores for ONE block.

    TP divides the split weights by ``tp`` (norms and row biases stay whole); FSDP2 then cuts
    dim 0 of every local tensor into ``fsdp`` pieces, padding dim 0 up to a multiple of ``fsdp``.

    >>> from .dims import TINY
    >>> param_elements_per_rank(TINY, Setup("dense")), param_elements_per_rank(TINY, Setup("tp", tp=4))
    (12672, 3312)
    """
    check_setup(dims, setup)
    total = 0
    for spec in layer_param_specs(dims):
        shape = list(spec.shape)
        if spec.split != "rep":
            shape[spec.split == "row"] //= setup.tp      # col: dim 0 (output features), row: dim 1
        total += math.ceil(shape[0] / setup.fsdp) * math.prod(shape[1:])
    return total


def param_bytes(dims: ModelDims, setup: Setup, precision="fp32", *, layers: int | None = None) -> int:
    """Bytes of the weights one rank stores for ``layers`` blocks (default: all of them).

    >>> from .dims import TINY
    >>> param_bytes(TINY, Setup("dense"))      # 25344 parameters × 4 B
    101376
    """
    n = dims.n_layers if layers is None else layers
    return n * param_elements_per_rank(dims, setup) * precision_of(precision).param


def activation_elements_per_layer(dims: ModelDims, setup: Setup, batch: int, seq_len: int, *,
                                  attention_scores: bool = True, norm_stats: bool = True,
                                  sequence_parallel: bool = False) -> int:
    """Elements autograd keeps for the backward of ONE block, per rank.

    The block (pre-norm, explicit-matmul attention, GELU MLP), with b = batch / fsdp samples on
    this rank, s tokens, d = d_model, f = d_ff, h = n_heads, and p = tp:

    * whole on every TP rank: the block input and the residual (the norms' inputs), both norms'
      outputs (the inputs of the column layers): 4·b·s·d, plus each norm's mean and 1/std: 4·b·s;
    * split by TP: q, k, v and the attention output (the row layer's input): 4·b·s·d/p;
      the softmax probabilities: b·(h/p)·s²; the MLP's hidden activation before and after GELU:
      2·b·s·f/p.

    ``sequence_parallel``: the norms run on s/p positions, so their inputs (2·b·s·d) and
    statistics are split too; their outputs, all-gathered for the column layers, are still kept
    whole. Megatron-LM goes further (Korthikanti et al. 2022, §4.2.2): it keeps the s/p slice and
    all-gathers it again in the backward, so every term is divided by p.

    Weights are not counted (they are parameters). Korthikanti et al. 2022 (arXiv:2205.05198,
    §4.1) count the same way for a 16-bit block with dropout. ``attention_scores=False`` leaves out
    the b·(h/p)·s² probabilities, as a fused (flash) attention kernel keeps none;
    ``norm_stats=False`` leaves out the norms' statistics (a few KB).

    >>> from .dims import TINY
    >>> activation_elements_per_layer(TINY, Setup("dense"), batch=4, seq_len=8)
    18560
    """
    check_setup(dims, setup, batch)
    b, s, d, f, h, p = batch // setup.fsdp, seq_len, dims.d_model, dims.d_ff, dims.n_heads, setup.tp
    norms = 2 * b * s * d + (4 * b * s if norm_stats else 0)       # the norms' inputs and statistics
    scores = b * (h // p) * s * s if attention_scores else 0
    split = 4 * b * s * d + 2 * b * s * f + (norms if sequence_parallel else 0)
    return 2 * b * s * d + (0 if sequence_parallel else norms) + split // p + scores  # 2·b·s·d: the norms' outputs


def block_activation_bytes(B: int, T: int, cfg, p: int = 1, mode: str = "dense") -> int:
    """What one block of notebook 05's model saves for its backward, in fp32 bytes, counted tensor by
    tensor (:func:`activation_elements_per_layer` without the norms' statistics). ``cfg``: anything
    with ``d_model``, ``n_heads`` and ``d_ff``. N = B·T·D elements, A = B·heads·T² (attention scores):

        dense   16 N + A            (d_ff = 4 D: w1 out and gelu out are 4 N each)
        TP      4 N + 12 N/p + A/p  norms' inputs/outputs replicated, the rest split
        TP+SP   2 N + 14 N/p + A/p  norms on T/p; the all-gathered inputs of q/k/v and w1 kept whole

    >>> from types import SimpleNamespace
    >>> cfg = SimpleNamespace(d_model=32, n_heads=4, d_ff=128)
    >>> [block_activation_bytes(8, 16, cfg, 4, m) for m in ("dense", "tp", "tp+sp")]
    [294912, 122880, 98304]
    """
    if mode not in ("dense", "tp", "tp+sp"):
        raise ValueError(f"mode must be 'dense', 'tp' or 'tp+sp', got {mode!r}")
    dims = ModelDims("block", cfg.d_model, 1, cfg.n_heads, cfg.d_ff)
    setup = Setup(mode, tp=1 if mode == "dense" else p)
    return 4 * activation_elements_per_layer(dims, setup, B, T, norm_stats=False,      # fp32: 4 bytes
                                             sequence_parallel=mode == "tp+sp")


@dataclass(frozen=True)
class MemoryBreakdown:
    """Bytes per rank, by kind."""

    params: int
    grads: int
    optimizer: int
    activations: int

    @property
    def total(self) -> int:
        return self.params + self.grads + self.optimizer + self.activations

    def as_dict(self) -> dict[str, int]:
        return {"parameters": self.params, "gradients": self.grads,
                "optimizer state": self.optimizer, "activations": self.activations}


def memory_per_rank(dims: ModelDims, setup: Setup, precision="fp32", *, batch: int, seq_len: int,
                    layers: int | None = None, optimizer_steps_counted: bool = True,
                    attention_scores: bool = True) -> MemoryBreakdown:
    """Bytes one rank holds for ``layers`` blocks (default all) during a training step with AdamW.

    parameters and gradients: :func:`param_elements_per_rank` × the precision's bytes; optimizer
    state: AdamW's two moments (plus, in fp32, ``torch.optim.AdamW``'s 4-byte ``step`` counter per
    weight tensor when ``optimizer_steps_counted``); activations: what autograd keeps for the
    backward (:func:`activation_elements_per_layer`), at its peak, right after the forward.

    >>> from .dims import TINY
    >>> m = memory_per_rank(TINY, Setup("dense"), batch=4, seq_len=8)
    >>> m.params, m.grads, m.optimizer, m.activations
    (101376, 101376, 202872, 148480)
    """
    p = precision_of(precision)
    n = dims.n_layers if layers is None else layers
    elems = param_elements_per_rank(dims, setup)
    steps = 4 * len(layer_param_specs(dims)) if optimizer_steps_counted else 0
    return MemoryBreakdown(
        params=n * elems * p.param,
        grads=n * elems * p.grad,
        optimizer=n * (elems * p.optim + steps),
        activations=n * activation_elements_per_layer(dims, setup, batch, seq_len,
                                                      attention_scores=attention_scores) * p.act)


def layers_that_fit(dims: ModelDims, setup: Setup, capacity_bytes: float, precision="bf16-mixed", *, batch: int,
                    seq_len: int, attention_scores: bool = True) -> int:
    """How many of the model's blocks fit in ``capacity_bytes`` per GPU (at most ``n_layers``),
    after the embedding and output head (sharded the same way as the blocks) are placed.

    A model, not a measurement: no allocator fragmentation, no temporary buffers (FSDP's
    all-gathered layer, the collectives' buffers), no CUDA context (~0.5 GB).

    >>> from .dims import LLAMA2_7B
    >>> layers_that_fit(LLAMA2_7B, Setup("dense"), 40e9, batch=1, seq_len=4096)
    7
    """
    p = precision_of(precision)
    one = memory_per_rank(dims, setup, precision, batch=batch, seq_len=seq_len, layers=1, optimizer_steps_counted=False,
                         attention_scores=attention_scores).total
    extra = 2 * dims.vocab * dims.d_model // setup.ranks * (p.param + p.grad + p.optim)   # embedding and head
    return int(max(0, min(dims.n_layers, (capacity_bytes - extra) // one)))


# ------------------------------------------------------------------------------ inference: the KV cache
def kv_heads_per_rank(n_kv_heads: int, p: int) -> int:
    """Key/value heads one of ``p`` TP ranks caches: n_kv_heads/p when p divides them; ONE when
    p is a multiple of n_kv_heads (each kv head is replicated on p/n_kv_heads ranks, vLLM's rule);
    refused otherwise, with the degrees that work.

    >>> kv_heads_per_rank(8, 4), kv_heads_per_rank(2, 4), kv_heads_per_rank(4, 1)
    (2, 1, 4)
    >>> kv_heads_per_rank(3, 4)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ValueError: n_kv_heads=3 and tp degree 4 divide neither way ...: {1, 3, 6, 9, 12}
    """
    check_whole("n_kv_heads", n_kv_heads)
    check_whole("tp degree", p)
    if n_kv_heads % p == 0:
        return n_kv_heads // p
    if p % n_kv_heads == 0:
        return 1
    ok = sorted(set(divisors(n_kv_heads)) | {n_kv_heads * k for k in range(2, 5)})
    raise ValueError(f"n_kv_heads={n_kv_heads} and tp degree {p} divide neither way ({p} kv heads would "
                     f"split a head, {n_kv_heads} would leave ranks without one); pick a degree that divides "
                     f"{n_kv_heads} or is a multiple of it: {{{', '.join(map(str, ok))}}}")


def kv_cache_bytes(layers: int, tokens: int, kv_heads: int, head_dim: int, bytes_per_el: int = 2,
                   p: int = 1, batch: int = 1) -> int:
    """Bytes of the KV cache ONE rank holds: keys and values (2) of every layer, for ``tokens``
    positions of ``batch`` sequences, of its kv heads (:func:`kv_heads_per_rank`)::

        2 · layers · batch · tokens · kv_heads/p · head_dim · bytes

    (kv_heads/p becomes 1 when p > kv_heads: the heads are replicated, not split).

    >>> kv_cache_bytes(2, 24, 8, 8, 4, p=4)          # notebook 07's tiny GPT, fp32, 24 tokens
    6144
    >>> kv_cache_bytes(32, 4096, 32, 128, 2) / 2**30   # Llama 2 7B, bf16, one 4096-token sequence
    2.0
    """
    for name, v in (("layers", layers), ("tokens", tokens), ("head_dim", head_dim), ("bytes_per_el", bytes_per_el),
                    ("batch", batch)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"{name} must be a whole number >= 0, got {v!r}")
    return 2 * layers * batch * tokens * kv_heads_per_rank(kv_heads, p) * head_dim * bytes_per_el
