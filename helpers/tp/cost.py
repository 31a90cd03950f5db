"""Memory per rank and the time of TP's collectives, as formulas: pure Python, no torch.

Everything here is a *model*: arithmetic on a transformer's shapes, checked by hand in
``tests/test_cost_model.py`` and against storage sizes measured on the engines in notebook 03.
Nothing runs a collective, so it works in the notebook, on an engine, or on a login node.

The pieces, each usable alone:

* :class:`ModelDims` -- a transformer's shapes (``TINY`` is notebook 03's model, ``LLAMA2_7B`` ...
  the real sizes); :func:`layer_param_specs` lists one block's weights and how TP splits them;
* :class:`Setup` -- how the ranks are used: ``tp`` ranks split every layer, ``fsdp`` ranks shard
  what is left and each take their own micro-batch (``SETUPS``: the four setups of notebook 03);
* :func:`param_elements_per_rank`, :func:`activation_elements_per_layer`,
  :func:`memory_per_rank` (parameters, gradients, optimizer state, activations in bytes),
  :func:`layers_that_fit` (how many blocks fit in one GPU's memory);
* :func:`tp_collectives_per_layer`, :func:`tp_bytes_per_layer` -- what TP's all-reduces move;
* :func:`wire_bytes`, :func:`collective_time` -- the ring (alpha-beta) cost of a collective;
* :data:`DERECHO` -- the links of a Derecho GPU node and between nodes, with their sources.

Conventions: byte counts are plain ints (``1 GB = 1e9 B`` where a vendor says GB); a bandwidth is
bytes per second **in one direction**; times are seconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

__all__ = [
    "Precision", "PRECISIONS", "ModelDims", "ParamSpec", "Setup", "SETUPS", "MemoryBreakdown",
    "TINY", "LLAMA2_7B", "LLAMA2_13B", "LLAMA2_70B", "REAL_MODELS",
    "layer_param_specs", "param_count", "check_setup", "param_elements_per_rank",
    "param_bytes", "activation_elements_per_layer", "memory_per_rank", "layers_that_fit",
    "tp_collectives_per_layer", "tp_bytes_per_layer", "wire_bytes", "collective_time",
    "Link", "DerechoNode", "DERECHO", "tp_link", "tp_comm_time_per_layer",
]


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


def _precision(precision) -> Precision:
    if isinstance(precision, Precision):
        return precision
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
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{k} must be a positive whole number, got {v!r}")
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


#: notebook 03's model: 2 blocks, d_model 32, 4 heads, d_ff 128, no embedding
TINY = ModelDims("tiny (notebook 03)", d_model=32, n_layers=2, n_heads=4, d_ff=128)
# Llama 2 shapes: Touvron et al. 2023, "Llama 2", arXiv:2307.09288, Table 1 and §2.2, and the
# released config.json files (hidden_size, num_hidden_layers, num_attention_heads,
# num_key_value_heads, intermediate_size, vocab_size 32000).
LLAMA2_7B = ModelDims("Llama 2 7B", 4096, 32, 32, 11008, vocab=32000, gated_mlp=True, bias=False)
LLAMA2_13B = ModelDims("Llama 2 13B", 5120, 40, 40, 13824, vocab=32000, gated_mlp=True, bias=False)
LLAMA2_70B = ModelDims("Llama 2 70B", 8192, 80, 64, 28672, vocab=32000, n_kv_heads=8,
                       gated_mlp=True, bias=False)
REAL_MODELS = (LLAMA2_7B, LLAMA2_13B, LLAMA2_70B)


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


def param_count(dims: ModelDims, *, embeddings: bool = True) -> int:
    """Parameters of the whole model: n_layers blocks (+ embedding, output head and final norm).

    >>> param_count(TINY)   # 2 × (norms 4·32 + wq,wk,wv,wo 4·32·32 + 3 biases·32 + w1 128·32+128 + w2 32·128+32)
    25344
    >>> round(param_count(LLAMA2_7B) / 1e9, 2)
    6.74
    """
    per_layer = sum(s.numel for s in layer_param_specs(dims))
    extra = (2 * dims.vocab * dims.d_model + dims.d_model) if (embeddings and dims.vocab) else 0
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
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{k} degree must be a positive whole number, got {v!r}")

    @property
    def ranks(self) -> int:
        return self.tp * self.fsdp


#: notebook 03's four setups on 4 ranks (dense: one device)
SETUPS = (Setup("dense", 1, 1), Setup("TP only", 4, 1), Setup("FSDP only", 1, 4), Setup("TP × FSDP", 2, 2))


def check_setup(dims: ModelDims, setup: Setup, batch: int | None = None) -> None:
    """Refuse a setup that does not split this model evenly (heads, d_ff) or a global batch the
    FSDP ranks cannot share evenly, with the numbers.

    >>> check_setup(TINY, Setup("x", tp=3))
    Traceback (most recent call last):
    ValueError: tp=3 does not divide n_heads=4 (each TP rank needs whole heads); pick tp in {1, 2, 4}
    >>> check_setup(TINY, Setup("x", fsdp=4), batch=6)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ValueError: the global batch of 6 samples is not divisible by the FSDP degree 4: ... use a batch of 8 (or 4, 12, ...)
    """
    tp = setup.tp
    checks = [("n_heads", dims.n_heads, " (each TP rank needs whole heads)"),
              ("n_kv_heads", dims.kv_heads, " (each TP rank needs whole key/value heads)"),
              ("d_ff", dims.d_ff, "")]
    for label, n, why in checks:
        if n % tp:
            ok = ", ".join(str(k) for k in range(1, n + 1) if n % k == 0)
            raise ValueError(f"tp={tp} does not divide {label}={n}{why}; pick tp in {{{ok}}}")
    if batch is not None:
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch must be a positive whole number of samples, got {batch!r}")
        if batch % setup.fsdp:
            up = math.ceil(batch / setup.fsdp) * setup.fsdp
            raise ValueError(
                f"the global batch of {batch} samples is not divisible by the FSDP degree {setup.fsdp}: "
                f"each FSDP rank needs the same micro-batch size; use a batch of {up} "
                f"(or {setup.fsdp}, {up + setup.fsdp}, ...)")


def _local_shape(spec: ParamSpec, tp: int) -> tuple[int, ...]:
    shape = list(spec.shape)
    if spec.split == "col":
        shape[0] //= tp
    elif spec.split == "row":
        shape[1] //= tp
    return tuple(shape)


def param_elements_per_rank(dims: ModelDims, setup: Setup) -> int:
    """Parameter elements one rank stores for ONE block.

    TP divides the split weights by ``tp`` (norms and row biases stay whole); FSDP2 then cuts
    dim 0 of every local tensor into ``fsdp`` pieces, padding dim 0 up to a multiple of ``fsdp``.

    >>> param_elements_per_rank(TINY, Setup("dense")), param_elements_per_rank(TINY, Setup("tp", tp=4))
    (12672, 3312)
    """
    check_setup(dims, setup)
    total = 0
    for spec in layer_param_specs(dims):
        shape = _local_shape(spec, setup.tp)
        rows = math.ceil(shape[0] / setup.fsdp)
        total += rows * math.prod(shape[1:])
    return total


def param_bytes(dims: ModelDims, setup: Setup, precision="fp32", *, layers: int | None = None) -> int:
    """Bytes of the weights one rank stores for ``layers`` blocks (default: all of them).

    >>> param_bytes(TINY, Setup("dense"))      # 25344 parameters × 4 B
    101376
    """
    p = _precision(precision)
    n = dims.n_layers if layers is None else layers
    return n * param_elements_per_rank(dims, setup) * p.param


def activation_elements_per_layer(dims: ModelDims, setup: Setup, batch: int, seq_len: int, *,
                                  attention_scores: bool = True) -> int:
    """Elements autograd keeps for the backward of ONE block, per rank (notebook 03's block).

    The block (pre-norm, explicit-matmul attention, GELU MLP), with b = batch / fsdp samples on
    this rank, s tokens, d = d_model, f = d_ff, h = n_heads, and p = tp:

    * whole on every TP rank: the block input and the residual (the norms' inputs), both norms'
      outputs (the inputs of the column layers): 4·b·s·d, plus each norm's mean and 1/std: 4·b·s;
    * split by TP: q, k, v and the attention output (the row layer's input): 4·b·s·d/p;
      the softmax probabilities: b·(h/p)·s²; the MLP's hidden activation before and after GELU:
      2·b·s·f/p.

    Weights are not counted (they are parameters). Korthikanti et al. 2022 (arXiv:2205.05198,
    §4.1) count the same way for a 16-bit block with dropout. ``attention_scores=False`` leaves out
    the b·(h/p)·s² probabilities, as a fused (flash) attention kernel keeps none.

    >>> activation_elements_per_layer(TINY, Setup("dense"), batch=4, seq_len=8)
    17536
    """
    check_setup(dims, setup, batch)
    b, s, d, f, h, p = batch // setup.fsdp, seq_len, dims.d_model, dims.d_ff, dims.n_heads, setup.tp
    replicated = 4 * b * s * d + 4 * b * s
    scores = b * (h // p) * s * s if attention_scores else 0
    split = 4 * b * s * d // p + scores + 2 * b * s * f // p
    return replicated + split


@dataclass(frozen=True)
class MemoryBreakdown:
    """Bytes per rank, by kind."""

    params: int
    grads: int
    optimizer: int
    activations: int
    setup: Setup = field(default=Setup("dense"), compare=False)

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

    >>> m = memory_per_rank(TINY, Setup("dense"), batch=4, seq_len=8)
    >>> m.params, m.grads, m.optimizer, m.activations
    (101376, 101376, 202872, 140288)
    """
    check_setup(dims, setup, batch)
    p = _precision(precision)
    n = dims.n_layers if layers is None else layers
    elems = param_elements_per_rank(dims, setup)
    steps = 4 * len(layer_param_specs(dims)) if optimizer_steps_counted else 0
    return MemoryBreakdown(
        params=n * elems * p.param,
        grads=n * elems * p.grad,
        optimizer=n * (elems * p.optim + steps),
        activations=n * activation_elements_per_layer(dims, setup, batch, seq_len,
                                                      attention_scores=attention_scores) * p.act,
        setup=setup,
    )


def layers_that_fit(dims: ModelDims, setup: Setup, capacity_bytes: float, precision="bf16-mixed", *,
                    batch: int, seq_len: int, attention_scores: bool = True) -> int:
    """How many of the model's blocks fit in ``capacity_bytes`` per GPU (at most ``n_layers``),
    after the embedding and output head (sharded the same way as the blocks) are placed.

    A model, not a measurement: no allocator fragmentation, no temporary buffers (FSDP's
    all-gathered layer, the collectives' buffers), no CUDA context (~0.5 GB).

    >>> layers_that_fit(LLAMA2_7B, Setup("dense"), 40e9, batch=1, seq_len=4096)
    7
    """
    p = _precision(precision)
    one = memory_per_rank(dims, setup, p, batch=batch, seq_len=seq_len, layers=1,
                          optimizer_steps_counted=False, attention_scores=attention_scores).total
    extra_params = (2 * dims.vocab * dims.d_model) // setup.ranks if dims.vocab else 0
    extra = extra_params * (p.param + p.grad + p.optim)
    if extra >= capacity_bytes:
        return 0
    return int(min(dims.n_layers, (capacity_bytes - extra) // one))


# ------------------------------------------------------------------------------ communication
def tp_collectives_per_layer(dims: ModelDims, tp: int, *, batch: int, seq_len: int,
                             precision="fp32") -> list[dict]:
    """The collectives Megatron-style TP runs in ONE block, per training step.

    Forward: one all-reduce after each row layer (attention's wo, the MLP's w2: the paper's g).
    Backward: one all-reduce of dL/dx before each group of column layers (the paper's f).
    Each moves the activation x of shape (b, s, d), b = the TP group's micro-batch.
    With tp = 1 there is none.

    >>> for c in tp_collectives_per_layer(TINY, 2, batch=2, seq_len=8):
    ...     print(c["phase"], c["where"], c["bytes"])
    forward attention out (g) 2048
    forward MLP out (g) 2048
    backward attention in (f) 2048
    backward MLP in (f) 2048
    """
    if isinstance(tp, bool) or not isinstance(tp, int) or tp < 1:
        raise ValueError(f"tp degree must be a positive whole number, got {tp!r}")
    if tp == 1:
        return []
    nbytes = batch * seq_len * dims.d_model * _precision(precision).act
    where = [("forward", "attention out (g)"), ("forward", "MLP out (g)"),
             ("backward", "attention in (f)"), ("backward", "MLP in (f)")]
    return [{"phase": ph, "where": w, "kind": "all_reduce", "bytes": nbytes, "p": tp} for ph, w in where]


def wire_bytes(kind: str, nbytes: float, p: int) -> float:
    """Bytes each rank sends (and receives) in a ring collective on a message of ``nbytes``.

    all_reduce: 2(p-1)/p · n (reduce-scatter, then all-gather); all_gather and reduce_scatter:
    (p-1)/p · n, where n is the full (gathered) size.

    >>> wire_bytes("all_reduce", 1000, 4), wire_bytes("all_gather", 1000, 4)
    (1500.0, 750.0)
    """
    factors = {"all_reduce": 2.0, "all_gather": 1.0, "reduce_scatter": 1.0}
    if kind not in factors:
        raise ValueError(f"kind must be one of {sorted(factors)}, got {kind!r}")
    if isinstance(p, bool) or not isinstance(p, int) or p < 1:
        raise ValueError(f"p must be a positive whole number of ranks, got {p!r}")
    return factors[kind] * (p - 1) / p * nbytes


def tp_bytes_per_layer(dims: ModelDims, tp: int, *, batch: int, seq_len: int, precision="fp32") -> dict:
    """What TP's collectives move in ONE block per step: message bytes and bytes on each rank's
    link, forward and backward.

    >>> b = tp_bytes_per_layer(TINY, 4, batch=2, seq_len=8)
    >>> b["collectives"], b["message_bytes"], b["forward_wire_bytes"], b["wire_bytes"]
    (4, 8192, 6144.0, 12288.0)
    """
    colls = tp_collectives_per_layer(dims, tp, batch=batch, seq_len=seq_len, precision=precision)
    fwd = sum(wire_bytes(c["kind"], c["bytes"], tp) for c in colls if c["phase"] == "forward")
    bwd = sum(wire_bytes(c["kind"], c["bytes"], tp) for c in colls if c["phase"] == "backward")
    return {"collectives": len(colls), "message_bytes": sum(c["bytes"] for c in colls),
            "forward_wire_bytes": float(fwd), "backward_wire_bytes": float(bwd), "wire_bytes": float(fwd + bwd)}


def collective_time(nbytes: float, bandwidth: float, latency: float = 0.0, kind: str = "all_reduce",
                    p: int = 2) -> float:
    """Seconds for one ring collective (the alpha-beta model): every one of its steps pays the
    link's latency, and every rank pushes :func:`wire_bytes` through its link.

    all_reduce: 2(p-1) steps; all_gather / reduce_scatter: p-1 steps.
    ``bandwidth``: bytes/s in one direction on the slowest link of the ring; ``latency``: s per step.

    >>> collective_time(1e6, 1e9, 0.0, "all_reduce", 4)   # 1.5 MB over 1 GB/s
    0.0015
    >>> round(collective_time(1e6, 1e9, 1e-6, "all_reduce", 4), 7)   # + 6 steps × 1 µs
    0.001506
    """
    if not bandwidth > 0:
        raise ValueError(f"bandwidth must be a positive number of bytes/s, got {bandwidth!r}")
    if latency < 0:
        raise ValueError(f"latency must be >= 0 seconds, got {latency!r}")
    if p == 1:
        return 0.0
    steps = 2 * (p - 1) if kind == "all_reduce" else (p - 1)
    return steps * latency + wire_bytes(kind, nbytes, p) / bandwidth


# ------------------------------------------------------------------------------ Derecho
@dataclass(frozen=True)
class Link:
    """One kind of link: bandwidth in bytes/s per direction per GPU, latency in s, and its source."""

    name: str
    bandwidth: float
    latency: float
    source: str


@dataclass(frozen=True)
class DerechoNode:
    gpus_per_node: int
    gpu_memory: float
    nvlink: Link
    slingshot: Link
    source: str


_NCAR_DOCS = ("NCAR HPC documentation, 'Derecho' → 'Derecho Hardware' "
              "(https://ncar-hpc-docs.readthedocs.io/en/latest/compute-systems/derecho/)")

#: Derecho's GPU nodes, cited. NVLink: "600 GB/s bidirectional" (the chapter, "TP Degree on
#: Derecho"; NCAR's hardware table: "600 GB/s NVIDIA NVLink GPU interconnect"), so 300 GB/s each
#: way; no latency is cited for NVLink, so the model uses none (bandwidth only, optimistic for it).
#: Slingshot: "HPE Slingshot v11 ... 200 Gb/sec per port per direction, 1.7-2.6 usec MPI latency,
#: GPU nodes - 4 Slingshot injection ports per node" (NCAR's table): one 25 GB/s port per GPU,
#: and the upper latency, 2.6 µs.
DERECHO = DerechoNode(
    gpus_per_node=4,
    gpu_memory=40e9,
    nvlink=Link("NVLink (A100, in a node)", 600e9 / 2, 0.0,
                "the chapter, 'TP Degree on Derecho': 600 GB/s bidirectional; " + _NCAR_DOCS),
    slingshot=Link("Slingshot 11 (between nodes)", 200e9 / 8, 2.6e-6,
                   _NCAR_DOCS + ": 200 Gb/s per port per direction, 4 ports per GPU node, 1.7-2.6 µs MPI latency"),
    source=_NCAR_DOCS + ": 4 A100 40 GB per GPU node",
)


def tp_link(tp: int, gpus_per_node: int = DERECHO.gpus_per_node, node=DERECHO) -> Link:
    """The slowest link a TP group of ``tp`` GPUs uses: NVLink while it fits in one node, the
    network as soon as it crosses the node boundary (a ring is as fast as its slowest hop).

    >>> tp_link(4).name, tp_link(8).name
    ('NVLink (A100, in a node)', 'Slingshot 11 (between nodes)')
    """
    return node.nvlink if tp <= gpus_per_node else node.slingshot


def tp_comm_time_per_layer(dims: ModelDims, tp: int, *, batch: int, seq_len: int, precision="bf16-mixed",
                           link: Link | None = None) -> dict:
    """Modelled seconds of TP's collectives in ONE block per step (forward, backward, both) on
    ``link`` (default: :func:`tp_link` of ``tp`` on Derecho).

    >>> t = tp_comm_time_per_layer(LLAMA2_13B, 4, batch=1, seq_len=4096)
    >>> round(t["step"] * 1e3, 3)    # ms: 4 all-reduces of 42 MB over NVLink
    0.839
    """
    link = link or tp_link(tp)
    out = {"forward": 0.0, "backward": 0.0}
    for c in tp_collectives_per_layer(dims, tp, batch=batch, seq_len=seq_len, precision=precision):
        out[c["phase"]] += collective_time(c["bytes"], link.bandwidth, link.latency, c["kind"], tp)
    out["step"] = out["forward"] + out["backward"]
    out["link"] = link.name
    return out
