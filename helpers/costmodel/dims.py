"""A transformer's shapes (notebook 03's tiny model, Llama 2's real sizes, cited), bytes per element
by precision, and how ``tp × fsdp`` ranks share the model: pure Python, no torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..common.numbers import divisors

__all__ = ["Precision", "PRECISIONS", "precision_of", "ModelDims", "ParamSpec", "Setup", "TINY", "LLAMA2_7B",
           "LLAMA2_13B", "LLAMA2_70B", "REAL_MODELS", "PRESETS", "layer_param_specs", "param_count", "check_setup",
           "check_whole"]


def check_whole(name: str, v, unit: str = "") -> None:
    """Refuse ``v`` unless it is a positive whole number (``True`` is not one)."""
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{name} must be a positive whole number{unit}, got {v!r}")


# ------------------------------------------------------------------------------ precisions
@dataclass(frozen=True)
class Precision:
    """Bytes per parameter element for the weights, their gradients and the optimizer state,
    and bytes per activation element.

    ``fp32``: everything in float32; AdamW keeps two moments (8 B per parameter).
    ``bf16-mixed``: bf16 weights and gradients, fp32 master weights + two moments (12 B per
    parameter): the "16 bytes per parameter" of the ZeRO paper (Rajbhandari et al. 2020, §3.1).
    """

    name: str
    param: int
    grad: int
    optim: int
    act: int


PRECISIONS = {
    "fp32": Precision("fp32", 4, 4, 8, 4),
    "bf16-mixed": Precision("bf16-mixed", 2, 2, 12, 2),
}


def precision_of(precision: str) -> Precision:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    return PRECISIONS[precision]


# ------------------------------------------------------------------------------ the model
@dataclass(frozen=True)
class ModelDims:
    """A decoder-only transformer's shapes.

    d_model, n_layers, n_heads, d_ff: as usual; n_kv_heads: fewer key/value heads (grouped-query
    attention; default: n_heads); gated_mlp: SwiGLU's three MLP matrices instead of two;
    bias: biases on the linear layers and LayerNorm (Llama has neither: RMSNorm, weight only);
    vocab: embedding and output head (0: none, as in notebook 03's tiny model).
    """

    name: str
    d_model: int
    n_layers: int
    n_heads: int
    d_ff: int
    vocab: int = 0
    n_kv_heads: int | None = None
    gated_mlp: bool = False
    bias: bool = True

    def __post_init__(self):
        for k in ("d_model", "n_layers", "n_heads", "d_ff"):
            check_whole(k, getattr(self, k))
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if self.n_heads % self.kv_heads:
            raise ValueError(f"n_heads={self.n_heads} is not divisible by n_kv_heads={self.kv_heads}")

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim


#: notebook 03's model: 2 blocks, d_model 32, 8 heads, d_ff 128, no embedding
TINY = ModelDims("tiny (notebook 03)", d_model=32, n_layers=2, n_heads=8, d_ff=128)
# Llama 2 shapes: Touvron et al. 2023, "Llama 2", arXiv:2307.09288, Table 1 and §2.2, and the
# released config.json files (hidden_size, num_hidden_layers, num_attention_heads,
# num_key_value_heads, intermediate_size, vocab_size 32000).
LLAMA2_7B = ModelDims("Llama 2 7B", 4096, 32, 32, 11008, vocab=32000, gated_mlp=True, bias=False)
LLAMA2_13B = ModelDims("Llama 2 13B", 5120, 40, 40, 13824, vocab=32000, gated_mlp=True, bias=False)
LLAMA2_70B = ModelDims("Llama 2 70B", 8192, 80, 64, 28672, vocab=32000, n_kv_heads=8,
                       gated_mlp=True, bias=False)
REAL_MODELS = (LLAMA2_7B, LLAMA2_13B, LLAMA2_70B)
#: the calculator's model presets, by name
PRESETS = {m.name: m for m in REAL_MODELS}


@dataclass(frozen=True)
class ParamSpec:
    """One weight of a block: its PyTorch shape and how Megatron-style TP splits it.

    split: ``"col"`` (ColwiseParallel: dim 0 of ``nn.Linear.weight``, the output features, and the
    bias), ``"row"`` (RowwiseParallel: dim 1, the input features; its bias stays whole) or ``"rep"``
    (replicated on every TP rank: norms, a row layer's bias).
    """

    name: str
    shape: tuple[int, ...]
    split: str

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def layer_param_specs(dims: ModelDims) -> list[ParamSpec]:
    """The weights of one block, in order: norm, wq, wk, wv, wo, norm, w1 (w3), w2.

    ``bias`` puts a bias on every linear layer except wk: adding the same vector to every key
    shifts all of a query's scores equally, which softmax ignores, so a key bias never learns
    (its gradient is zero up to rounding, and Adam would turn that rounding into updates).

    >>> [(s.name, s.split) for s in layer_param_specs(TINY)][:4]
    [('attn_norm.weight', 'rep'), ('attn_norm.bias', 'rep'), ('attn.wq.weight', 'col'), ('attn.wq.bias', 'col')]
    """
    d, f, kv = dims.d_model, dims.d_ff, dims.kv_dim
    specs: list[ParamSpec] = []

    def norm(name):
        specs.append(ParamSpec(f"{name}.weight", (d,), "rep"))
        if dims.bias:
            specs.append(ParamSpec(f"{name}.bias", (d,), "rep"))

    def linear(name, out_f, in_f, split, bias=dims.bias):
        specs.append(ParamSpec(f"{name}.weight", (out_f, in_f), split))
        if bias:
            specs.append(ParamSpec(f"{name}.bias", (out_f,), "col" if split == "col" else "rep"))

    norm("attn_norm")
    linear("attn.wq", d, d, "col")
    linear("attn.wk", kv, d, "col", bias=False)   # softmax ignores a shift shared by all keys
    linear("attn.wv", kv, d, "col")
    linear("attn.wo", d, d, "row")
    norm("mlp_norm")
    linear("mlp.w1", f, d, "col")
    if dims.gated_mlp:
        linear("mlp.w3", f, d, "col")
    linear("mlp.w2", d, f, "row")
    return specs


def param_count(dims: ModelDims) -> int:
    """Parameters of the whole model: n_layers blocks (+ embedding, output head and final norm).

    >>> param_count(TINY)   # 2 × (norms 4·32 + wq,wk,wv,wo 4·32·32 + 3 biases·32 + w1 128·32+128 + w2 32·128+32)
    25344
    >>> round(param_count(LLAMA2_7B) / 1e9, 2)
    6.74
    """
    per_layer = sum(s.numel for s in layer_param_specs(dims))
    extra = (2 * dims.vocab * dims.d_model + dims.d_model) if dims.vocab else 0
    return dims.n_layers * per_layer + extra


# ------------------------------------------------------------------------------ setups
@dataclass(frozen=True)
class Setup:
    """How ``tp × fsdp`` ranks share the model: ``tp`` ranks split every layer (Megatron style),
    ``fsdp`` ranks shard the rest (FSDP2: dim 0 of every local tensor) and each process its own
    micro-batch of ``batch / fsdp`` samples.
    """

    name: str
    tp: int = 1
    fsdp: int = 1

    def __post_init__(self):
        for k in ("tp", "fsdp"):
            check_whole(f"{k} degree", getattr(self, k))

    @property
    def ranks(self) -> int:
        return self.tp * self.fsdp


def check_setup(dims: ModelDims, setup: Setup, batch: int | None = None) -> None:
    """Refuse a setup that does not split this model evenly (heads, d_ff) or a global batch the
    FSDP ranks cannot share evenly, with the numbers.

    >>> check_setup(TINY, Setup("x", tp=3))
    Traceback (most recent call last):
    ValueError: tp=3 does not divide n_heads=8 (each TP rank needs whole heads); pick tp in {1, 2, 4, 8}
    >>> check_setup(TINY, Setup("x", fsdp=4), batch=6)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ValueError: the global batch of 6 samples is not divisible by the FSDP degree 4: ... use a batch of 8 (or 4, 12, ...)
    """
    tp = setup.tp
    for label, n, why in (("n_heads", dims.n_heads, " (each TP rank needs whole heads)"),
                          ("n_kv_heads", dims.kv_heads, " (each TP rank needs whole key/value heads)"),
                          ("d_ff", dims.d_ff, "")):
        if n % tp:
            ok = ", ".join(str(k) for k in divisors(n))
            raise ValueError(f"tp={tp} does not divide {label}={n}{why}; pick tp in {{{ok}}}")
    if batch is not None:
        check_whole("batch", batch, " of samples")
        if batch % setup.fsdp:
            up = math.ceil(batch / setup.fsdp) * setup.fsdp
            raise ValueError(f"the global batch of {batch} samples is not divisible by the FSDP degree {setup.fsdp}: "
                             f"each FSDP rank needs the same micro-batch size; use a batch of {up} "
                             f"(or {setup.fsdp}, {up + setup.fsdp}, ...)")
