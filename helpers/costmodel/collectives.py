"""What a collective sends, and how long it takes: ONE byte convention, pure Python, no torch.

**The convention.** ``n`` is the bytes of the *full* (unsharded) tensor; every function answers
"bytes sent (or received) per rank", on ``p`` ranks, under the algorithm stated here. The
recorder of :mod:`helpers.measure.comm`, the formulas of notebooks 03 and 04 and the calculator
all call :func:`bytes_sent` / :func:`bytes_received`, so measured == formula exactly whenever
the code issues the collectives it should.

===============  =====================================  ======================  ======================  ========
collective       n (bytes of the full tensor)           sent per rank           received per rank       steps
===============  =====================================  ======================  ======================  ========
all_reduce       the tensor every rank holds            2(p-1)/p · n            2(p-1)/p · n            2(p-1)
all_gather       the gathered result (p shards of n/p)  (p-1)/p · n             (p-1)/p · n             p-1
reduce_scatter   the input every rank holds             (p-1)/p · n             (p-1)/p · n             p-1
all_to_all       one rank's whole input                 (p-1)/p · n             (p-1)/p · n             p-1
broadcast        the tensor                             root (p-1)·n, others 0  root 0, others n        p-1
reduce (sum)     the tensor                             root 0, others n        root (p-1)·n, others 0  p-1
===============  =====================================  ======================  ======================  ========

all_reduce, all_gather, reduce_scatter: a ring (an all-reduce is a reduce-scatter, then an
all-gather); broadcast and reduce: the root talks to each other rank directly. Real libraries pick
other algorithms (trees, pipelines) whose per-rank bytes differ by small factors; the ratios
between layouts do not depend on that choice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .dims import ModelDims, check_whole, precision_of
from .hardware import DERECHO, Link, tp_link

__all__ = ["KINDS", "bytes_sent", "bytes_received", "steps", "collective_time", "fit_link", "RingTime", "ring_time",
           "fit_alpha_beta", "tp_collectives_per_layer", "tp_bytes_per_layer", "tp_comm_time_per_layer", "grid_side",
           "bytes_1d_column", "bytes_1d_row", "bytes_summa", "COMM_FORMULAS", "mlp_bytes_1d", "mlp_bytes_2d",
           "mlp_crossover_tokens", "loss_parallel_bytes"]

KINDS = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all", "broadcast", "reduce")


def bytes_sent(kind: str, n: float, p: int, *, root: bool = False) -> float:
    """Bytes one rank sends in collective ``kind`` of a full tensor of ``n`` bytes over ``p`` ranks
    (``root``: this rank is the root of a broadcast or reduce). See the module's table.

    >>> bytes_sent("all_reduce", 1000, 4), bytes_sent("all_gather", 1000, 4), bytes_sent("broadcast", 1000, 4, root=True)
    (1500.0, 750.0, 3000.0)
    """
    n_steps = steps(kind, p)                       # refuses an unknown kind or p
    if kind == "broadcast":
        return float((p - 1) * n) if root else 0.0
    if kind == "reduce":
        return 0.0 if root or p == 1 else float(n)
    return n_steps * n / p                         # a ring: one chunk of n/p per step


def bytes_received(kind: str, n: float, p: int, *, root: bool = False) -> float:
    """Bytes one rank receives; the mirror of :func:`bytes_sent`: a broadcast receives what a reduce
    sends and the other way round, the ring kinds receive what they send.

    >>> bytes_received("broadcast", 1000, 4), bytes_received("reduce", 1000, 4, root=True)
    (1000.0, 3000.0)
    """
    return bytes_sent({"broadcast": "reduce", "reduce": "broadcast"}.get(kind, kind), n, p, root=root)


def steps(kind: str, p: int) -> int:
    """Latency-bound steps of one collective: 2(p-1) for an all-reduce, p-1 for the others."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    check_whole("p", p, " of ranks")
    return 2 * (p - 1) if kind == "all_reduce" else p - 1


def collective_time(nbytes: float, bandwidth: float, latency: float = 0.0, kind: str = "all_reduce",
                    p: int = 2) -> float:
    """Seconds for one collective (the alpha-beta model): every one of its :func:`steps` pays the
    link's latency, and the busiest rank pushes its bytes (:func:`bytes_sent`, or received at a
    reduce's root) through its link. ``nbytes``: the full tensor (the module's convention);
    ``bandwidth``: bytes/s in one direction on the slowest link; ``latency``: s per step.

    >>> collective_time(1e6, 1e9, 0.0, "all_reduce", 4)   # 1.5 MB over 1 GB/s
    0.0015
    >>> round(collective_time(1e6, 1e9, 1e-6, "all_reduce", 4), 7)   # + 6 steps × 1 µs
    0.001506
    """
    if not bandwidth > 0:
        raise ValueError(f"bandwidth must be a positive number of bytes/s, got {bandwidth!r}")
    if latency < 0:
        raise ValueError(f"latency must be >= 0 seconds, got {latency!r}")
    busiest = max(bytes_sent(kind, nbytes, p, root=True), bytes_received(kind, nbytes, p, root=True))
    return steps(kind, p) * latency + busiest / bandwidth


@dataclass(frozen=True)
class RingTime:
    """One ring collective on a node layout: ``seconds`` in all, ``steps`` ring steps of
    ``step_bytes`` per rank each, every step bounded by the link ``bound_by`` (effective
    ``bandwidth`` bytes/s, ``latency`` s per step), over ``nodes`` nodes."""

    seconds: float
    steps: int
    step_bytes: float
    bound_by: str
    bandwidth: float
    latency: float
    nodes: int


def ring_time(kind: str, nbytes: float, p: int, *, ranks_per_node: int, nics_per_node: int = 1,
              nvlink: str = "gpu", node=DERECHO) -> RingTime:
    """A ring collective of a full tensor of ``nbytes`` over ``p`` ranks laid out ``ranks_per_node``
    to a node, on ``node``'s links. Every step, every rank sends one chunk
    (:func:`bytes_sent` / :func:`steps`) to its ring neighbour, all hops at once, so the slowest hop
    bounds EVERY step:

    - all ranks in one node: NVLink, ``nvlink="gpu"`` (all of a GPU's links: NCCL's channels over
      different peers, the upper bound) or ``"pair"`` (one ring, one GPU pair's links);
    - across nodes: each node sends one chunk per step out through its NICs (one crossing per ring
      and node; NCCL splits the chunk over its channels, one NIC each), so the hop runs at
      ``nics_per_node`` × one NIC's bandwidth, unless NVLink inside the node is slower; the step's
      latency is the network's.

    t = steps · (latency + step_bytes / bandwidth). Derecho, 8 ranks on 2 nodes, 100 MB:

    >>> slow = ring_time("all_reduce", 1e8, 8, ranks_per_node=4, nics_per_node=1)
    >>> fast = ring_time("all_reduce", 1e8, 8, ranks_per_node=4, nics_per_node=4)
    >>> slow.bound_by, round(slow.seconds * 1e3, 3), fast.bound_by, round(fast.seconds * 1e3, 3)
    ('Slingshot 11 (one NIC) × 1', 7.196, 'Slingshot 11 (one NIC) × 4', 1.946)
    """
    check_whole("ranks_per_node", ranks_per_node)
    check_whole("nics_per_node", nics_per_node)
    if nvlink not in ("gpu", "pair"):
        raise ValueError(f"nvlink must be 'gpu' (all of a GPU's links) or 'pair' (one GPU pair), got {nvlink!r}")
    n_steps = steps(kind, p)
    if p == 1:
        return RingTime(0.0, 0, 0.0, "none (one rank)", math.inf, 0.0, 1)
    nodes = math.ceil(p / ranks_per_node)
    chunk = max(bytes_sent(kind, nbytes, p, root=True), bytes_received(kind, nbytes, p, root=True)) / n_steps
    intra = node.nvlink if nvlink == "gpu" else node.nvlink_pair
    bound, bw, lat = intra.name, intra.bandwidth, intra.latency
    if nodes > 1:
        lat = max(node.slingshot.latency, intra.latency)
        net_bw = nics_per_node * node.slingshot.bandwidth
        if net_bw <= intra.bandwidth:
            bound, bw = f"{node.slingshot.name} × {nics_per_node}", net_bw
    return RingTime(n_steps * (lat + chunk / bw), n_steps, chunk, bound, bw, lat, nodes)


def fit_link(times: dict[int, float], nbytes: float) -> Link:
    """:func:`fit_alpha_beta` over measured all-reduce seconds ``times[p]`` of ONE ``nbytes`` message
    size; a single measurement fits the bandwidth only.

    >>> link = fit_link({2: 2e-6 * 2 + 1000 / 1e9, 4: 2e-6 * 6 + 1500 / 1e9}, 1000)
    >>> round(link.latency * 1e6, 3), round(link.bandwidth / 1e9, 3)
    (2.0, 1.0)
    """
    return fit_alpha_beta([(p, nbytes, t) for p, t in times.items()], min_points=1)[0]


def fit_alpha_beta(points: list[tuple[int, float, float]], name: str = "fitted", min_points: int = 2) -> tuple[Link, dict]:
    """α (s per ring step) and β (bytes/s) of ring all-reduces, t = 2(p-1)·α + bytes_sent(n, p)/β
    (:func:`collective_time`), least squares over measured ``points`` [(p, n bytes, seconds), ...] --
    several message sizes and/or degrees. Both α, β >= 0: when the best unconstrained fit needs a
    negative one, the better of "latency only" and "bandwidth only" (smaller squared error) is used.
    Returns the link and how well it fits:
    {"r2": coefficient of determination, "max_rel_err": worst |model - measured| / measured,
    "points": how many}.

    >>> pts = [(4, n, 6 * 1e-5 + 1.5 * n / 1e9) for n in (1e4, 1e5, 1e6)]
    >>> link, q = fit_alpha_beta(pts)
    >>> round(link.latency * 1e6, 3), round(link.bandwidth / 1e9, 3), round(q["r2"], 6), q["max_rel_err"] < 1e-9
    (10.0, 1.0, 1.0, True)
    """
    pts = [(steps("all_reduce", p), bytes_sent("all_reduce", n, p), t) for p, n, t in points if p > 1 and t > 0]
    if len(pts) < min_points:
        raise ValueError(f"fit_alpha_beta needs at least {min_points} timing(s) on 2 or more ranks, "
                         f"got {len(pts)}; measure at least 3 message sizes")
    saa = sum(a * a for a, _, _ in pts)
    sxx = sum(x * x for _, x, _ in pts)
    sax = sum(a * x for a, x, _ in pts)
    sat = sum(a * t for a, _, t in pts)
    sxt = sum(x * t for _, x, t in pts)
    det = saa * sxx - sax * sax
    candidates = [(0.0, sxt / sxx)] + ([(sat / saa, 0.0)] if len(pts) > 1 else [])   # one point: bandwidth only
    if det:
        both = ((sat * sxx - sax * sxt) / det, (saa * sxt - sax * sat) / det)
        if both[0] >= 0 and both[1] > 0:
            candidates.append(both)

    def sse(c):
        return sum((a * c[0] + x * c[1] - t) ** 2 for a, x, t in pts)

    alpha, w = min(candidates, key=sse)
    mean = sum(t for _, _, t in pts) / len(pts)
    sst = sum((t - mean) ** 2 for _, _, t in pts)
    quality = {"r2": 1.0 - sse((alpha, w)) / sst if sst > 0 else 1.0,
               "max_rel_err": max(abs(a * alpha + x * w - t) / t for a, x, t in pts), "points": len(pts)}
    return Link(name, 1.0 / w if w > 0 else math.inf, alpha, f"fitted to {len(pts)} measured all-reduces"), quality


# ------------------------------------------------------------------------------ TP per block
def tp_collectives_per_layer(dims: ModelDims, tp: int, *, batch: int, seq_len: int,
                             precision="fp32") -> list[dict]:
    """The collectives Megatron-style TP runs in ONE block, per training step.

    Forward: one all-reduce after each row layer (attention's wo, the MLP's w2: the paper's g).
    Backward: one all-reduce of dL/dx before each group of column layers (the paper's f).
    Each moves the activation x of shape (b, s, d), b = the TP group's micro-batch.
    With tp = 1 there is none.

    >>> from .dims import TINY
    >>> for c in tp_collectives_per_layer(TINY, 2, batch=2, seq_len=8):
    ...     print(c["phase"], c["where"], c["bytes"])
    forward attention out (g) 2048
    forward MLP out (g) 2048
    backward attention in (f) 2048
    backward MLP in (f) 2048
    """
    check_whole("tp degree", tp)
    if tp == 1:
        return []
    nbytes = batch * seq_len * dims.d_model * precision_of(precision).act
    where = [("forward", "attention out (g)"), ("forward", "MLP out (g)"),
             ("backward", "attention in (f)"), ("backward", "MLP in (f)")]
    return [{"phase": ph, "where": w, "kind": "all_reduce", "bytes": nbytes, "p": tp} for ph, w in where]


def tp_bytes_per_layer(dims: ModelDims, tp: int, *, batch: int, seq_len: int, precision="fp32") -> dict:
    """What TP's collectives move in ONE block per step: message bytes and bytes sent by each rank
    (through its link), forward and backward.

    >>> from .dims import TINY
    >>> b = tp_bytes_per_layer(TINY, 4, batch=2, seq_len=8)
    >>> b["collectives"], b["message_bytes"], b["forward_wire_bytes"], b["wire_bytes"]
    (4, 8192, 6144.0, 12288.0)
    """
    colls = tp_collectives_per_layer(dims, tp, batch=batch, seq_len=seq_len, precision=precision)
    fwd = sum(bytes_sent(c["kind"], c["bytes"], tp) for c in colls if c["phase"] == "forward")
    bwd = sum(bytes_sent(c["kind"], c["bytes"], tp) for c in colls if c["phase"] == "backward")
    return {"collectives": len(colls), "message_bytes": sum(c["bytes"] for c in colls),
            "forward_wire_bytes": float(fwd), "backward_wire_bytes": float(bwd), "wire_bytes": float(fwd + bwd)}


def tp_comm_time_per_layer(dims: ModelDims, tp: int, *, batch: int, seq_len: int, precision="bf16-mixed",
                           nics_per_node: int | None = None, nvlink: str = "gpu", node=DERECHO) -> dict:
    """Modelled seconds of TP's collectives in ONE block per step (forward, backward, both), each a
    ring on ``node``'s layout, one rank per GPU (:func:`ring_time`): ``nics_per_node`` (default: all
    the node's NICs, NCCL's channels spread over them; 1: the whole ring through one NIC) and
    ``nvlink`` ("gpu" or "pair"). ``out["link"]`` names the link that bounds every ring step.

    >>> from .dims import LLAMA2_13B
    >>> t = tp_comm_time_per_layer(LLAMA2_13B, 4, batch=1, seq_len=4096)
    >>> round(t["step"] * 1e3, 3), t["link"]   # ms: 4 all-reduces of 42 MB over NVLink, 24 steps × 3.4 µs
    (0.92, 'NVLink 3 (all links of a GPU)')
    """
    out = {"forward": 0.0, "backward": 0.0, "link": tp_link(tp, node).name}
    for c in tp_collectives_per_layer(dims, tp, batch=batch, seq_len=seq_len, precision=precision):
        r = ring_time(c["kind"], c["bytes"], tp, ranks_per_node=node.gpus_per_node,
                      nics_per_node=nics_per_node or node.nics_per_node, nvlink=nvlink, node=node)
        out[c["phase"]] += r.seconds
        out["link"] = r.bound_by
    out["step"] = out["forward"] + out["backward"]
    return out


# ------------------------------------------------------------------------------ 1D vs 2D (notebook 04)
def _check_dims(M, K, N, p, dtype_bytes, n_in=1):
    for name, v in (("M", M), ("K", K), ("N", N), ("p", p), ("dtype_bytes", dtype_bytes)):
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if n_in not in (1, 2):
        raise ValueError(f"n_in must be 1 (plain MLP: w1) or 2 (gated MLP: w1 and w3), got {n_in!r}")


def grid_side(p: int) -> int:
    """s with s × s = p; ``ValueError`` when p is not a perfect square."""
    s = math.isqrt(p)
    if s * s != p:
        raise ValueError(f"2D SUMMA here needs a square grid, but p={p} is not a perfect square; "
                         f"pick p = {s * s} ({s}×{s}) or {(s + 1) ** 2} ({s + 1}×{s + 1})")
    return s


def _result(per_rank, calls) -> dict:
    return {"sent": per_rank, "received": per_rank, "calls": calls}    # every layout here receives what it sends


def bytes_1d_column(M: int, K: int, N: int, p: int, dtype_bytes: int = 4) -> dict:
    """Forward of Y = X·W, W split by columns: one all-gather of Y (M, N) from its p column blocks.

    sent = received = (p-1)/p · M·N · bytes. X (M, K) must already be on every rank.
    """
    _check_dims(M, K, N, p, dtype_bytes)
    return _result(bytes_sent("all_gather", M * N * dtype_bytes, p), int(p > 1))


def bytes_1d_row(M: int, K: int, N: int, p: int, dtype_bytes: int = 4) -> dict:
    """Forward of Y = X·W, W split by rows: one all-reduce of the partial sum (M, N).

    sent = received = 2(p-1)/p · M·N · bytes.
    """
    _check_dims(M, K, N, p, dtype_bytes)
    return _result(bytes_sent("all_reduce", M * N * dtype_bytes, p), int(p > 1))


def bytes_summa(M: int, K: int, N: int, p: int, dtype_bytes: int = 4) -> dict:
    """Forward of Y = X·W by SUMMA on an s × s grid (s = √p): per rank, over s steps,

    sent = received = (s-1) · (M/s·K/s + K/s·N/s) · bytes

    At each step k the X block (M/s, K/s) is broadcast along every grid row from column k and
    the W block (K/s, N/s) along every grid column from row k (groups of s ranks); a rank is the
    root once in s steps for each, and receives in the other s-1. Calls: 2s broadcasts.
    """
    _check_dims(M, K, N, p, dtype_bytes)
    s = grid_side(p)
    blocks = (M * K * dtype_bytes / p, K * N * dtype_bytes / p)        # one X block, one W block
    # my one turn as the root of each block's broadcasts sends it to s-1 ranks; the other s-1 steps receive as much
    return _result(sum(bytes_sent("broadcast", blk, s, root=True) for blk in blocks), 2 * s if p > 1 else 0)


#: The three layouts of notebook 04, by name.
COMM_FORMULAS = {"1D column": bytes_1d_column, "1D row": bytes_1d_row, "2D SUMMA": bytes_summa}


# ------------------------------------------------------------------------------ one MLP block, 1D vs 2D; loss parallel
def mlp_bytes_1d(M: int, D: int, H: int, p: int, dtype_bytes: int = 4, n_in: int = 1) -> dict:
    """ONE Megatron MLP block, column → row (Shoeybi et al. 2019, Fig. 3a), on p ranks, per rank:

    forward:  one all-reduce (*g*) of the output Y (M, D):  2(p-1)/p · M·D · bytes
    backward: one all-reduce (*f*) of dL/dX (M, D): the same bytes. Weight and bias gradients
    are local (each rank's slice of the dense one). ``n_in`` (1, or 2 for a gated MLP's w1 and
    w3) changes nothing: still one all-reduce each way. H, the hidden size, moves no bytes.

    >>> f = mlp_bytes_1d(1024, 64, 256, 4)
    >>> f["forward"]["sent"], f["backward"]["sent"], f["forward"]["calls"]
    (393216.0, 393216.0, 1)
    """
    _check_dims(M, D, H, p, dtype_bytes, n_in)
    one = bytes_1d_row(M, H, D, p, dtype_bytes)      # an all-reduce of an (M, D) tensor
    return {"forward": dict(one), "backward": dict(one)}


def mlp_bytes_2d(M: int, D: int, H: int, p: int, dtype_bytes: int = 4, n_in: int = 1,
                 bias: bool = False) -> dict:
    """ONE MLP block with SUMMA for both matmuls (helpers.tp.summa) on an s × s grid, per rank.

    Blocks: X (M/s, D/s), W1 (D/s, H/s), the hidden activation (M/s, H/s), W2 (H/s, D/s). Each
    SUMMA product broadcasts its input block along grid rows and its weight block down grid
    columns, s steps; a rank is the root once, so it sends (s-1)·block and receives (s-1)·block:

    forward:  (s-1)/p · (M·D + M·H + (n_in + 1)·D·H) · bytes      (2s broadcasts per product)
    backward: twice that: for each product, dX broadcasts W and reduces dX blocks, dW broadcasts
              X and reduces dW blocks (4s calls per product); ``bias``: plus one all-reduce of
              b_j (H/s, then D/s) down each grid column.

    A gated MLP (``n_in=2``) is counted with X broadcast once for w1 and w3 (they share it).

    >>> f = mlp_bytes_2d(1024, 64, 256, 4)
    >>> f["forward"]["sent"], f["backward"]["sent"], f["forward"]["calls"], f["backward"]["calls"]
    (360448.0, 720896.0, 8, 16)
    """
    _check_dims(M, D, H, p, dtype_bytes, n_in)
    s = grid_side(p)
    if s == 1:
        return {"forward": _result(0.0, 0), "backward": _result(0.0, 0)}
    w = n_in + 1                                                # weight matrices: w1 (and w3), w2
    fwd = (s - 1) * (M * D + M * H + w * D * H) * dtype_bytes / p     # every block broadcast, once each
    bwd = 2 * fwd
    calls_fwd = 2 * s * w - (n_in - 1) * s                      # a gated MLP's w1, w3 share X's broadcasts
    calls_bwd = 4 * s * w
    if bias:                                                    # b1 (and b3), then b2
        bwd += sum(bytes_sent("all_reduce", n_bias * dtype_bytes / s, s) for n_bias in (n_in * H, D))
        calls_bwd += w
    return {"forward": _result(fwd, calls_fwd), "backward": _result(bwd, calls_bwd)}


def mlp_crossover_tokens(D: int, H: int, p: int, training: bool = False, n_in: int = 1) -> float:
    """The token count M above which 2D SUMMA sends fewer bytes per rank than 1D, per MLP block
    (``math.inf``: 2D never wins at this p). No biases. From :func:`mlp_bytes_1d` and
    :func:`mlp_bytes_2d` with w = n_in + 1 weight matrices:

    forward:  (s-1)(M·D + M·H + w·D·H) < 2(p-1)·M·D   ⇔   M > w·D·H / ((2s+1)·D − H)
    training: 3(s-1)(M·D + M·H + w·D·H) < 4(p-1)·M·D  ⇔   M > 3w·D·H / ((4s+1)·D − 3H)

    >>> mlp_crossover_tokens(64, 256, 4), mlp_crossover_tokens(64, 256, 4, training=True)
    (512.0, inf)
    """
    _check_dims(1, D, H, p, 1, n_in)
    s = grid_side(p)
    if s == 1:
        return math.inf
    w = n_in + 1
    num, den = (3 * w * D * H, (4 * s + 1) * D - 3 * H) if training else (w * D * H, (2 * s + 1) * D - H)
    return num / den if den > 0 else math.inf


def loss_parallel_bytes(B: int, T: int, V: int, p: int, dtype_bytes: int = 4) -> dict:
    """Bytes per rank of the cross-entropy on logits (B, T, V) sharded on V over p ranks.

    ``"loss_parallel"`` (torch's ``loss_parallel()``): forward three all-reduces of B·T numbers
    (the max, the sum of exponentials, the target's logit); backward none (the gradient
    softmax − one-hot is local to each vocabulary shard).
    ``"gathered"`` (``logits.full_tensor()`` then ``cross_entropy``): forward one all-gather of
    the (B, T, V) logits; backward none (the gradient of the gather keeps this rank's slice).

    >>> lp = loss_parallel_bytes(8, 16, 40, 4)
    >>> [(lp[way][ph]["sent"], lp[way][ph]["calls"]) for way in lp for ph in ("forward", "backward")]
    [(2304.0, 3), (0.0, 0), (15360.0, 1), (0.0, 0)]
    """
    _check_dims(B, T, V, p, dtype_bytes)
    ar = 3 * bytes_sent("all_reduce", B * T * dtype_bytes, p)
    ag = bytes_sent("all_gather", B * T * V * dtype_bytes, p)
    calls = int(p > 1)
    return {"loss_parallel": {"forward": _result(ar, 3 * calls), "backward": _result(0.0, 0)},
            "gathered": {"forward": _result(ag, calls), "backward": _result(0.0, 0)}}
