"""Does my model need TP, and what will it cost? A pure function (no torch) behind notebook 06's
calculator widget.

:func:`plan` takes :class:`CalculatorInputs` (a transformer's shapes, the tokens of one
micro-batch, the precision, the GPU and its links) and returns a :class:`Plan`:

* memory per GPU, from notebook 03's model (:mod:`.memory`): one layer, the whole model,
  and FSDP's floor (what every GPU keeps however many GPUs shard the rest: its activations and
  one all-gathered layer), at each TP degree;
* the time of one layer's training step at each degree: compute (the layer's FLOPs over p GPUs
  (:func:`.flops.block_flops`) at the GPU's achieved matmul rate (:data:`.hardware.GPUS`: A100 40GB,
  Derecho's, by default; or a learner's own measured rate) times an efficiency curve e(p) --
  measured in the notebook, or the relative curve of the H100 :data:`.hardware.REFERENCE` table)
  plus TP's four all-reduces as rings on the node layout (:func:`.collectives.ring_time`: NVLink
  inside a node; across nodes all the node's NICs, and the one-NIC bound beside it), no overlap;
* the recommendation, in the chapter's terms: TP within the node, FSDP across.

Input problems never raise from :func:`check_inputs`: it returns the messages (the widget shows
them). :func:`plan` raises one ``ValueError`` listing them all.

Also here: notebook 07's inference rows (weights and KV cache per GPU, time per decoded token).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from .collectives import collective_time, tp_comm_time_per_layer
from .dims import LLAMA2_70B, PRECISIONS, ModelDims, Setup, check_whole, layer_param_specs
from .flops import block_flops
from .hardware import (
    A100_40GB,
    DEFAULT_GPU,
    DERECHO,
    DERECHO_DECODE_NVLINK,
    GPU,
    GPUS,
    REFERENCE_GPU,
    REFERENCE_SOURCE,
    Link,
    reference_curve,
)
from .memory import kv_cache_bytes, kv_heads_per_rank, memory_per_rank, param_elements_per_rank

__all__ = ["DTYPES", "CalculatorInputs", "DegreeRow", "Plan", "check_inputs", "plan", "interpolate_efficiency",
           "derecho_inputs", "inference_weight_bytes", "InferenceFit", "sequences_that_fit", "decode_token_time"]

GB = 1e9

#: the calculator's dtype names -> notebook 03's training precisions
DTYPES = {"bf16": "bf16-mixed", "fp32": "fp32"}


def interpolate_efficiency(curve: dict[int, float], p: int) -> float:
    """The efficiency at degree ``p``: linear in log2(p) between the curve's points; below its
    first point 1.0, beyond its last point the last value (held, not extrapolated).

    >>> interpolate_efficiency({1: 1.0, 2: 0.9, 8: 0.6}, 4)    # log2: halfway from 2 to 8
    0.75
    >>> interpolate_efficiency({1: 1.0, 2: 0.9}, 16)
    0.9
    """
    pts = sorted((int(k), float(v)) for k, v in curve.items())
    if not pts or p < pts[0][0]:
        return 1.0
    for (p0, e0), (p1, e1) in zip(pts, pts[1:]):
        if p0 <= p <= p1:
            w = (math.log2(p) - math.log2(p0)) / (math.log2(p1) - math.log2(p0))
            return round(e0 + w * (e1 - e0), 12)
    return pts[-1][1]


# ------------------------------------------------------------------------------ inputs
@dataclass(frozen=True)
class CalculatorInputs:
    """What the calculator needs. Defaults: Llama 2 70B on Derecho (4 A100 40 GB per node,
    NVLink 300 GB/s per GPU and direction, Slingshot 25 GB/s per NIC and direction, 4 NICs per
    node: :data:`.hardware.DERECHO`).

    batch × seq_len = the tokens of one micro-batch (what one TP group processes per step).
    ``tp``: the degree you are considering. ``gpu``: a :data:`.hardware.GPUS` name (its achieved
    rate for ``dtype``). ``matmul_tflops``: your own measured rate of one GPU at TP=1, replacing the
    GPU's (None: the GPU's). ``nics_per_node``: the NICs NCCL's channels spread over (1: the whole
    ring through one NIC).
    ``flash_attention``: a fused attention kernel keeps no (heads × s × s) score matrix for the
    backward (notebook 03's model keeps it by default).
    """

    d_model: int = LLAMA2_70B.d_model
    n_layers: int = LLAMA2_70B.n_layers
    n_heads: int = LLAMA2_70B.n_heads
    d_ff: int = LLAMA2_70B.d_ff
    n_kv_heads: int | None = LLAMA2_70B.n_kv_heads
    vocab: int = LLAMA2_70B.vocab
    gated_mlp: bool = LLAMA2_70B.gated_mlp
    bias: bool = LLAMA2_70B.bias
    batch: int = 1
    seq_len: int = 2048
    dtype: str = "bf16"
    gpu_memory_gb: float = DERECHO.gpu_memory / GB
    gpus_per_node: int = DERECHO.gpus_per_node
    intra_node_gb_s: float = DERECHO.nvlink.bandwidth / GB
    inter_node_gb_s: float = DERECHO.slingshot.bandwidth / GB
    nics_per_node: int = DERECHO.nics_per_node
    gpu: str = DEFAULT_GPU
    tp: int = DERECHO.gpus_per_node
    matmul_tflops: float | None = None
    flash_attention: bool = False

    @property
    def tokens(self) -> int:
        return self.batch * self.seq_len


#: the fields :class:`CalculatorInputs` shares with :class:`.dims.ModelDims`
_SHAPE = ("d_model", "n_layers", "n_heads", "d_ff", "n_kv_heads", "vocab", "gated_mlp", "bias")


def derecho_inputs(model: ModelDims = LLAMA2_70B, **changes) -> CalculatorInputs:
    """:class:`CalculatorInputs` for ``model`` on Derecho's defaults, with ``changes`` applied."""
    return CalculatorInputs(**{**{k: getattr(model, k) for k in _SHAPE}, **changes})


def _whole(v, low: int = 1) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


def _positive(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 and math.isfinite(v)


def check_inputs(inp: CalculatorInputs) -> list[str]:
    """Every problem with ``inp``, as sentences a learner can act on (empty: all fine).

    >>> check_inputs(derecho_inputs(tp=8))  # doctest: +ELLIPSIS
    ['TP degree 8 is above the 4 GPUs of a node: its all-reduces would cross the node boundary ...']
    """
    rules = [(name, _whole, "a positive whole number") for name in (
        "d_model", "n_layers", "n_heads", "d_ff", "batch", "seq_len", "gpus_per_node", "tp", "nics_per_node")]
    rules += [("vocab", lambda v: _whole(v, 0), "a whole number >= 0 (0: no embedding)"),
              ("n_kv_heads", lambda v: v is None or _whole(v), "a positive whole number (or empty)"),
              ("gpu_memory_gb", _positive, "a positive number of GB"),
              ("intra_node_gb_s", _positive, "a positive number of GB/s"),
              ("inter_node_gb_s", _positive, "a positive number of GB/s"),
              ("matmul_tflops", lambda v: v is None or _positive(v), "a positive number (or empty for the reference)"),
              ("gpu", lambda v: v in GPUS, f"one of {', '.join(GPUS)}"),
              ("dtype", lambda v: v in DTYPES, f"one of {', '.join(sorted(DTYPES))}")]
    problems = [f"{name} must be {what}, got {getattr(inp, name)!r}" for name, ok, what in rules
                if not ok(getattr(inp, name))]
    if problems:
        return problems
    try:
        dims = _dims(inp)
    except ValueError as e:
        return [str(e)]
    if inp.tp > inp.gpus_per_node:
        problems.append(f"TP degree {inp.tp} is above the {inp.gpus_per_node} GPUs of a node: its "
                        "all-reduces would cross the node boundary (the chapter: avoid). Pick a TP "
                        f"degree of at most {inp.gpus_per_node} and use FSDP across nodes.")
    elif not _splits(dims, inp.tp):
        ok = ", ".join(str(t) for t in range(1, inp.gpus_per_node + 1) if _splits(dims, t))
        problems.append(f"TP degree {inp.tp} does not divide the heads ({dims.n_heads}, key/value "
                        f"heads {dims.kv_heads}) and d_ff ({dims.d_ff}) evenly; within a node pick one "
                        f"of {{{ok}}}")
    return problems


def _dims(inp: CalculatorInputs) -> ModelDims:
    return ModelDims("your model", **{k: getattr(inp, k) for k in _SHAPE})


def _splits(dims: ModelDims, t: int) -> bool:
    return dims.n_heads % t == 0 and dims.kv_heads % t == 0 and dims.d_ff % t == 0


# ------------------------------------------------------------------------------ the plan
@dataclass(frozen=True)
class DegreeRow:
    """One TP degree: memory per GPU (bytes), one layer's step time (s), where TP communicates."""

    tp: int
    layer_bytes: float
    gathered_layer_bytes: float
    model_bytes: float
    fsdp_floor_bytes: float
    layer_fits: bool
    model_fits: bool
    fsdp_fits: bool
    link: str
    within_node: bool
    compute_s: float
    comm_s: float
    efficiency: float
    comm_s_slow: float = 0.0      # the slow bound: one NIC across nodes, one NVLink pair per ring

    @property
    def comm_share(self) -> float:
        step = self.compute_s + self.comm_s
        return self.comm_s / step if step > 0 else 0.0


@dataclass(frozen=True)
class Plan:
    inputs: CalculatorInputs
    rows: list[DegreeRow]
    rate_tflops: float
    efficiency_source: str
    recommendation: list[str]

    def row(self, tp: int) -> DegreeRow:
        for r in self.rows:
            if r.tp == tp:
                return r
        raise KeyError(f"no row for TP degree {tp}; degrees: {[r.tp for r in self.rows]}")

    @property
    def layer_fits_without_tp(self) -> bool:
        return self.row(1).layer_fits

    @property
    def model_fits_without_tp(self) -> bool:
        return self.row(1).model_fits

    @property
    def smallest_tp_for_layer(self) -> int | None:
        return next((r.tp for r in self.rows if r.layer_fits), None)

    @property
    def smallest_tp_for_model(self) -> int | None:
        return next((r.tp for r in self.rows if r.model_fits), None)

    @property
    def smallest_tp_with_fsdp(self) -> int | None:
        """The smallest TP degree at which FSDP (across the other GPUs) can hold the model."""
        return next((r.tp for r in self.rows if r.fsdp_fits), None)


def _node(inp: CalculatorInputs):
    """Derecho's node with the inputs' GPUs per node, NICs and link speeds (latencies: NCCL's)."""
    pair_gb_s = inp.intra_node_gb_s / max(inp.gpus_per_node - 1, 1)     # a GPU's links, shared by its peers
    links = {attr: replace(getattr(DERECHO, attr), name=name, bandwidth=gb_s * GB) for attr, name, gb_s in (
        ("nvlink", f"intra-node ({inp.intra_node_gb_s:g} GB/s per GPU)", inp.intra_node_gb_s),
        ("nvlink_pair", f"intra-node, one GPU pair ({pair_gb_s:g} GB/s)", pair_gb_s),
        ("slingshot", f"inter-node ({inp.inter_node_gb_s:g} GB/s per NIC)", inp.inter_node_gb_s))}
    return replace(DERECHO, gpu=GPUS[inp.gpu], gpus_per_node=inp.gpus_per_node, nics_per_node=inp.nics_per_node,
                   **links)


def _degree_row(dims, inp, t, rate, curve) -> DegreeRow:
    precision = DTYPES[inp.dtype]
    cap = inp.gpu_memory_gb * GB
    setup = Setup(f"TP={t}", tp=t)
    one = memory_per_rank(dims, setup, precision, batch=inp.batch, seq_len=inp.seq_len, layers=1,
                          optimizer_steps_counted=False, attention_scores=not inp.flash_attention)
    prec = PRECISIONS[precision]
    embed = 2 * dims.vocab * dims.d_model // t * (prec.param + prec.grad + prec.optim)
    model = embed + dims.n_layers * one.total
    # FSDP's floor: the rest sharded away, each GPU still keeps every layer's activations and
    # one layer all-gathered (its weights and their full gradients before the reduce-scatter)
    gathered = param_elements_per_rank(dims, setup) * (prec.param + prec.grad)
    floor = dims.n_layers * one.activations + gathered
    layout = dict(batch=inp.batch, seq_len=inp.seq_len, precision=precision, node=_node(inp))
    fast = tp_comm_time_per_layer(dims, t, nics_per_node=inp.nics_per_node, nvlink="gpu", **layout)
    slow = tp_comm_time_per_layer(dims, t, nics_per_node=1, nvlink="pair", **layout)
    eff = interpolate_efficiency(curve, t)
    compute = block_flops(dims, inp.tokens, inp.seq_len) / t / (rate * 1e12 * eff)
    return DegreeRow(t, one.total, gathered, model, floor, one.total <= cap, model <= cap, floor <= cap,
                     fast["link"], t <= inp.gpus_per_node, compute, fast["step"], eff, slow["step"])


def plan(inp: CalculatorInputs, efficiency: dict[int, float] | None = None,
         efficiency_source: str | None = None) -> Plan:
    """Memory, step time and a recommendation at every TP degree that splits the model evenly,
    up to 4 nodes' worth of GPUs (see the module docstring). ``efficiency``: {p: rate relative
    to p=1} (None: the :data:`.hardware.REFERENCE` row nearest in tokens and dtype).

    >>> p = plan(derecho_inputs())                 # Llama 2 70B, 2048 tokens, bf16, Derecho
    >>> p.model_fits_without_tp, p.layer_fits_without_tp, p.smallest_tp_with_fsdp
    (False, True, 4)
    """
    problems = check_inputs(inp)
    if problems:
        raise ValueError("; ".join(problems))
    dims = _dims(inp)
    _, ref_curve, ref_tokens = reference_curve(inp.dtype, inp.tokens)
    gpu = GPUS[inp.gpu]
    rate = inp.matmul_tflops or gpu.rate(inp.dtype)
    curve = efficiency or ref_curve                # interpolate_efficiency reads its keys as ints
    source = efficiency_source or ("measured" if efficiency else f"e(p): the {REFERENCE_GPU} reference's relative "
                                   f"curve, {inp.dtype}, {ref_tokens} tokens ({REFERENCE_SOURCE})")
    source += "; rate at TP=1: " + (f"{rate:g} TFLOP/s (yours)" if inp.matmul_tflops else
                                    f"{rate:.0f} TFLOP/s = {gpu.name}'s {inp.dtype} peak {gpu.peak_tflops[inp.dtype]:g} "
                                    f"× {gpu.achieved[inp.dtype]:.3f} achieved ({gpu.achieved_source})")
    top = max(16, 4 * inp.gpus_per_node)
    degrees = sorted({t for t in [2 ** k for k in range(int(math.log2(top)) + 1)] + [inp.gpus_per_node, inp.tp]
                      if t <= top and _splits(dims, t)})
    rows = [_degree_row(dims, inp, t, rate, curve) for t in degrees]
    return Plan(inp, rows, rate, source, _recommend(inp, rows))


def _gb(x: float) -> str:
    return f"{x / GB:.1f} GB"


def _recommend(inp: CalculatorInputs, rows: list[DegreeRow]) -> list[str]:
    cap = inp.gpu_memory_gb * GB
    r1 = rows[0]                                   # TP=1: every plan starts there
    if r1.model_fits or r1.fsdp_fits:
        if r1.model_fits:
            lines = [f"The whole model fits one GPU ({_gb(r1.model_bytes)} of {_gb(cap)}): no TP. Train "
                     "with data parallelism (DDP, or FSDP to save memory)."]
        else:
            lines = [f"The model does not fit one GPU ({_gb(r1.model_bytes)}), but FSDP can hold it: "
                     f"its floor (every layer's activations + one all-gathered layer) is "
                     f"{_gb(r1.fsdp_floor_bytes)} per GPU, however many GPUs share the rest. Use FSDP "
                     "across GPUs, no TP."]
        tp2 = next((r for r in rows if r.tp > 1), None)
        if tp2:
            lines.append(f"TP={tp2.tp} would {'only ' if r1.model_fits else ''}add communication: "
                         f"{tp2.comm_share:.0%} of each step.")
        return lines
    if r1.gathered_layer_bytes > cap:
        lines = [f"One layer's weights and gradients alone need {_gb(r1.gathered_layer_bytes)} on one "
                 f"GPU, more than its {_gb(cap)}: a single layer is too large for one GPU, the first "
                 "reason to use TP."]
    else:
        lines = [f"FSDP alone fails: even with everything else sharded away, each GPU needs "
                 f"{_gb(r1.fsdp_floor_bytes)} (every layer's activations and one all-gathered layer) "
                 f"> {_gb(cap)}: FSDP's temporary all-gather runs out of memory, the second reason "
                 "to use TP."]
    in_node = [r for r in rows if r.within_node]
    across = next((r for r in rows if not r.within_node), None)
    best = next((r for r in in_node if r.model_fits or r.fsdp_fits), None)
    if best is None:
        top = in_node[-1]
        lines.append(f"Even TP={top.tp} (a whole node) leaves {_gb(top.fsdp_floor_bytes)} per GPU > "
                     f"{_gb(cap)}. TP across nodes is the chapter's 'avoid'"
                     + (f" (its all-reduces would take {across.comm_share:.0%} of the step over the "
                        f"{across.link} link)" if across else "")
                     + ": use fewer tokens per micro-batch, a fused (flash) attention, or recompute "
                     "activations (activation checkpointing), then check again.")
        return lines
    where, need = (("it holds the whole model", best.model_bytes) if best.model_fits
                   else ("with FSDP across nodes for the rest", best.fsdp_floor_bytes))
    lines.append(f"Use TP={best.tp} within the node ({best.link}), {where}: {_gb(need)} per GPU; "
                 f"communication is {best.comm_share:.0%} of each step.")
    if across:
        slow_share = across.comm_s_slow / (across.compute_s + across.comm_s_slow)
        lines.append(f"Do not stretch TP across nodes: at TP={across.tp} the all-reduces run over the "
                     f"network ({across.link}) and take {across.comm_share:.0%} of the step with "
                     f"{inp.nics_per_node} NIC(s) per node in use, {slow_share:.0%} through one NIC.")
    return lines


# ------------------------------------------------------------------------------ inference (notebook 07)
def inference_weight_bytes(dims: ModelDims, tp: int, bytes_per_el: int = 2) -> int:
    """Bytes of the weights ONE of ``tp`` ranks serves: every block split Megatron's way (wk, wv: this
    rank's kv heads, one replicated head when tp > kv heads), the norms whole, and the embedding and
    output head split by vocabulary (vLLM's way). No gradients, no optimizer state.

    >>> from .dims import LLAMA2_7B
    >>> inference_weight_bytes(LLAMA2_7B, 1)      # 6,738,411,520 parameters × 2 B (final norm left out)
    13476823040
    """
    kv_local = kv_heads_per_rank(dims.kv_heads, tp) * dims.head_dim
    per_layer = 0
    for spec in layer_param_specs(dims):
        if spec.name.startswith(("attn.wk.", "attn.wv.")):
            per_layer += spec.numel // dims.kv_dim * kv_local      # whole kv heads, replicated if need be
        elif spec.split in ("col", "row"):
            if spec.numel % tp:
                raise ValueError(f"tp={tp} does not divide {spec.name} {spec.shape}")
            per_layer += spec.numel // tp
        else:
            per_layer += spec.numel
    return (dims.n_layers * per_layer + 2 * dims.vocab * dims.d_model // tp) * bytes_per_el


@dataclass(frozen=True)
class InferenceFit:
    """One TP degree: weights and KV cache per GPU, and how many sequences fit."""

    tp: int
    seq_len: int
    weights_bytes: int
    kv_bytes_per_sequence: int
    capacity: float
    sequences: int

    @property
    def weights_fit(self) -> bool:
        return self.weights_bytes < self.capacity


def sequences_that_fit(dims: ModelDims, seq_len: int, tp: int, gpu: GPU = A100_40GB,
                       bytes_per_el: int = 2) -> InferenceFit:
    """How many concurrent sequences of ``seq_len`` tokens fit in ``gpu``'s memory at TP=``tp``,
    after the weights: floor((capacity − weights per GPU) / KV cache of one sequence per GPU).
    A model, not a measurement: no activations, no CUDA context, no allocator slack.

    >>> from .dims import LLAMA2_7B, LLAMA2_70B
    >>> [sequences_that_fit(LLAMA2_7B, 4096, t).sequences for t in (1, 2, 4)]
    [12, 30, 68]
    >>> [sequences_that_fit(LLAMA2_70B, 4096, t).sequences for t in (1, 2, 4)]
    [0, 0, 16]
    """
    check_whole("seq_len", seq_len, " of tokens")
    weights = inference_weight_bytes(dims, tp, bytes_per_el)
    kv = kv_cache_bytes(dims.n_layers, seq_len, dims.kv_heads, dims.head_dim, bytes_per_el, p=tp)
    n = int((gpu.memory - weights) // kv) if gpu.memory > weights else 0
    return InferenceFit(tp, seq_len, weights, kv, gpu.memory, n)


def decode_token_time(dims: ModelDims, tp: int, context: int, batch: int = 1, gpu: GPU = A100_40GB,
                      link: Link | None = None, bytes_per_el: int = 2) -> dict:
    """Seconds to generate ONE token per sequence of a batch at TP=``tp`` (a model):

    * memory: decoding is memory-bound, so every weight of this rank and its KV cache of
      ``batch`` × ``context`` tokens are read once from HBM, at ``gpu.memory_bandwidth``;
    * communication: 2 all-reduces per layer (after wo and w2) of a (batch, 1, d_model) message,
      alpha-beta on ``link`` (default: Derecho's NVLink with the latency of a measured small
      all-reduce, :data:`.hardware.DERECHO_DECODE_NVLINK`, up to the 4 GPUs of a node; Slingshot
      beyond). The embedding's and the head's collectives and any overlap are left out.

    >>> from .dims import LLAMA2_7B
    >>> t = decode_token_time(LLAMA2_7B, 4, context=1024)
    >>> round(t["memory_s"] * 1e3, 3), round(t["comm_s"] * 1e6, 1), t["fits"]
    (2.253, 1949.5, True)
    """
    link = link or (DERECHO_DECODE_NVLINK if tp <= DERECHO.gpus_per_node else DERECHO.slingshot)
    weights = inference_weight_bytes(dims, tp, bytes_per_el)
    kv = kv_cache_bytes(dims.n_layers, context, dims.kv_heads, dims.head_dim, bytes_per_el, p=tp, batch=batch)
    memory_s = (weights + kv) / gpu.memory_bandwidth
    message = batch * dims.d_model * bytes_per_el
    comm_s = 2 * dims.n_layers * collective_time(message, link.bandwidth, link.latency, "all_reduce", tp)
    token_s = memory_s + comm_s
    return {"tp": tp, "memory_s": memory_s, "comm_s": comm_s, "token_s": token_s,
            "tokens_per_s": batch / token_s, "weights_bytes": weights, "kv_bytes": kv,
            "fits": weights + kv < gpu.memory, "link": link.name, "message_bytes": message}
