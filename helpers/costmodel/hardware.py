"""Hardware as data, each number with its source (GPUs, Derecho's nodes and links, the reference
shard-efficiency table), and whether ranks share a device (timing caveats). Pure Python, no torch.

A bandwidth is bytes per second **in one direction**; a latency is seconds per ring step;
``1 GB = 1e9 B`` where a vendor says GB. Where sources leave a range, both ends are kept
(``Link`` pairs below) and the notebooks show both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

__all__ = ["Link", "GPU", "A100_40GB", "H100_80GB", "GPUS", "DEFAULT_GPU", "DerechoNode", "DERECHO",
           "NCCL_TUNING", "RING_STEP_LATENCY", "tp_link", "REFERENCE", "REFERENCE_SOURCE", "REFERENCE_SHAPE",
           "REFERENCE_GPU", "reference_curve", "shared_devices", "timing_caveat",
           "NVLINK_A100_SMALL_ALLREDUCE", "DERECHO_DECODE_NVLINK"]


# ------------------------------------------------------------------------------ sources
#: NCAR HPC documentation, "Derecho" → hardware table (opened in the NCAR/ncar-hpc-docs sources):
#: "82 GPU nodes ... 4 NVIDIA 1.41 GHz A100 Tensor Core GPUs per node, 600 GB/s NVIDIA NVLink GPU
#: interconnect"; "328 total A100 GPUs, 40GB HBM2 memory per GPU"; "HPE Slingshot v11 ...
#: 200 Gb/sec per port per direction, 1.7-2.6 usec MPI latency ... GPU nodes - 4 Slingshot
#: injection ports per node".
NCAR_DERECHO = ("NCAR HPC documentation, Derecho hardware table "
                "(https://ncar-hpc-docs.readthedocs.io/en/latest/compute-systems/derecho/)")
#: NVIDIA A100 datasheet (nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf), as tabulated at
#: glennklockwood.com/garden/processors/A100: BF16 Tensor Core 312 TFLOP/s dense (624 with
#: sparsity), FP32 19.5 TFLOP/s, A100 40 GB SXM4, NVLink 3 "300+300 GB/s"; NVIDIA's NVLink page:
#: "up to 12 third-generation NVLink connections for 600 GB/s total".
A100_DATASHEET = ("NVIDIA A100 datasheet (nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf): BF16 Tensor Core "
                  "312 TFLOP/s dense, FP32 19.5 TFLOP/s, 40 GB; NVLink 3: 12 links, 600 GB/s total (300 GB/s each way)")
#: NVIDIA H100 SXM datasheet, as tabulated at glennklockwood.com/garden/processors/h100 and
#: hpctech.co.jp: BF16 Tensor Core 1,979 TFLOP/s *with sparsity* (989 dense), FP32 67 TFLOP/s, 80 GB.
H100_DATASHEET = ("NVIDIA H100 SXM datasheet: BF16 Tensor Core 1,979 TFLOP/s with sparsity = 989 dense, "
                  "FP32 67 TFLOP/s, 80 GB HBM3")
#: Stas Bekman, ml-engineering, compute/accelerator/README.md (commit b9e29720), "Maximum Achievable
#: Matmul FLOPS comparison table", BF16: A100 SXM 271.2 of 312 TFLOP/s (86.9 %), H100 SXM 794.5 of
#: 989 (80.3 %), torch 2.6-2.7 (a mean over 100 matmuls of the best shape found).
MAMF = ("stas00/ml-engineering compute/accelerator/README.md @b9e29720, 'Maximum Achievable Matmul FLOPS': "
        "A100 SXM bf16 271.2 of 312 TFLOP/s (86.9 %)")
#: NVIDIA/nccl src/graph/tuning.cc at commit b6475625fbcaa2c3c0e50eed2fa1255d7514d4a2, ``hwLat``
#: (µs per ring step): Ring on NVLink LL 0.6 / LL128 1.9 / Simple 3.4; Ring on NET LL 2.7 /
#: LL128 4.0 / Simple 14.0; ``baseLat`` Ring Simple 8.4 µs once per call (not modelled here).
#: Large messages (TP's activations: MBs) use the Simple protocol: the model's latency per step.
NCCL_TUNING = ("NVIDIA/nccl src/graph/tuning.cc @b6475625, hwLat per ring step: NVLink 0.6 (LL) - 3.4 µs "
               "(Simple), network 2.7 (LL) - 14.0 µs (Simple)")
RING_STEP_LATENCY = {"nvlink": (0.6e-6, 3.4e-6), "network": (2.7e-6, 14.0e-6)}   # (LL, Simple), s per step
#: Channels over several NICs: NCCL issue #601 (a maintainer: "NCCL detects the 4 NICs correctly and
#: creates 4 rings, each using a different NIC"; multi-NIC aggregation works "when GPUs are connected
#: through NVLink ... split the operations in N parts then balance the traffic onto the N NICs");
#: NCAR's NCCL guide for Derecho (negin513/distributed-pytorch-hpc docs/guide/nccl_tuning.md
#: @7988f894) sets NCCL_CROSS_NIC=1 and NCCL_NCHANNELS_PER_NET_PEER=4 ("Cross-NIC for multi-rail").
MULTI_NIC = ("NCCL issue #601 (4 NICs → 4 rings, each on its own NIC); NCAR's Derecho NCCL guide "
             "(negin513/distributed-pytorch-hpc docs/guide/nccl_tuning.md @7988f894): NCCL_CROSS_NIC=1, "
             "NCCL_NCHANNELS_PER_NET_PEER=4")


# ------------------------------------------------------------------------------ links and GPUs
@dataclass(frozen=True)
class Link:
    """One kind of link: bandwidth in bytes/s per direction, latency in s per ring step, its source."""

    name: str
    bandwidth: float
    latency: float
    source: str


@dataclass(frozen=True)
class GPU:
    """A GPU as data: memory (bytes), dense peak TFLOP/s by dtype, the fraction of that peak a large
    matmul achieves, and where each number comes from. :meth:`rate` = peak × achieved."""

    name: str
    memory: float
    peak_tflops: dict = field(default_factory=dict)      # {"bf16": ..., "fp32": ...}
    achieved: dict = field(default_factory=dict)         # {"bf16": fraction of peak, ...}
    source: str = ""
    achieved_source: str = ""
    memory_bandwidth: float = 0.0                        # bytes/s read from HBM (decoding is bound by it)

    def rate(self, dtype: str) -> float:
        """Achieved matmul TFLOP/s for ``dtype`` ("bf16" or "fp32").

        >>> round(A100_40GB.rate("bf16"), 1), round(H100_80GB.rate("bf16"), 1)
        (271.1, 807.2)
        """
        if dtype not in self.peak_tflops:
            raise ValueError(f"dtype must be one of {sorted(self.peak_tflops)} for {self.name}, got {dtype!r}")
        return self.peak_tflops[dtype] * self.achieved[dtype]


#: Derecho's GPU (NCAR's table: A100 40GB); peaks from NVIDIA's datasheet; achieved bf16 fraction:
#: MAMF's A100 SXM measurement (271.2 / 312 = 0.869). No fp32 measurement is cited: the same
#: fraction is assumed for fp32 (stated in ``achieved_source``).
A100_40GB = GPU("A100 40GB", 40e9, {"bf16": 312.0, "fp32": 19.5}, {"bf16": 0.869, "fp32": 0.869},
                A100_DATASHEET + "; " + NCAR_DERECHO + ": 40GB HBM2 per GPU",
                MAMF + "; fp32: the same fraction assumed (no fp32 measurement cited)",
                memory_bandwidth=1555e9)    # the datasheet's A100 40GB SXM: "GPU Memory Bandwidth 1,555GB/s"
#: The project's H100 (the GPU of benchmarks/bench_shard_gemm.py's table): 80 GB; SXM, since its
#: measured 807.2 TFLOP/s exceeds the PCIe card's 756 dense peak. Achieved: that table's best rows,
#: bf16 807.2 / 989 = 0.816 and fp32 52.3 / 67 = 0.781 (4096 tokens, p = 1).
H100_80GB = GPU("H100 80GB", 80e9, {"bf16": 989.0, "fp32": 67.0}, {"bf16": 807.2 / 989.0, "fp32": 52.3 / 67.0},
                H100_DATASHEET,
                "measured by the project with benchmarks/bench_shard_gemm.py on an H100, torch 2.11, 2026-11-25: "
                "807.2 TFLOP/s bf16, 52.3 fp32 (4096 tokens, p=1)")
GPUS = {g.name: g for g in (A100_40GB, H100_80GB)}
DEFAULT_GPU = A100_40GB.name


@dataclass(frozen=True)
class DerechoNode:
    """A GPU node and its links. ``nvlink``: all of a GPU's NVLinks (the upper bound, several NCCL
    channels at once); ``nvlink_pair``: the links between two GPUs (one ring); ``slingshot``: ONE
    NIC (port); ``nics_per_node`` of them serve a node."""

    gpu: GPU
    gpus_per_node: int
    nics_per_node: int
    nvlink: Link
    nvlink_pair: Link
    slingshot: Link
    source: str

    @property
    def gpu_memory(self) -> float:
        return self.gpu.memory


#: Derecho's GPU nodes, cited (see the source constants above):
#: - NVLink 3 per GPU: 600 GB/s total = 300 GB/s each way (NCAR's table; the chapter: "600 GB/s
#:   bidirectional"; NVIDIA's A100 datasheet: 12 links); per pair, with the 4 GPUs fully connected
#:   (as on NVIDIA's HGX A100 4-GPU board): 12 links / 3 peers = 4 links = 100 GB/s each way.
#: - Slingshot 11: 200 Gb/s per port per direction = 25 GB/s per NIC, 4 NICs per GPU node (NCAR's
#:   table); with NCCL's channels spread over all 4 (MULTI_NIC): 100 GB/s per node.
#: - Latency per ring step: NCCL's own tuning model (NCCL_TUNING), Simple protocol: 3.4 µs on
#:   NVLink, 14 µs on the network (LL: 0.6 and 2.7 µs). NCAR's 1.7-2.6 µs is MPI's point-to-point
#:   latency, not an NCCL ring step: not used.
DERECHO = DerechoNode(
    gpu=A100_40GB,
    gpus_per_node=4,
    nics_per_node=4,
    nvlink=Link("NVLink 3 (all links of a GPU)", 600e9 / 2, RING_STEP_LATENCY["nvlink"][1],
                "NCAR's table and the chapter: 600 GB/s NVLink per GPU (bidirectional); " + A100_DATASHEET
                + "; latency: " + NCCL_TUNING),
    nvlink_pair=Link("NVLink 3 (one GPU pair)", 600e9 / 2 / 3, RING_STEP_LATENCY["nvlink"][1],
                     "12 NVLink 3 links over 3 peers (4 GPUs fully connected, as on NVIDIA's HGX A100 4-GPU "
                     "board) = 4 links = 100 GB/s each way; " + A100_DATASHEET),
    slingshot=Link("Slingshot 11 (one NIC)", 200e9 / 8, RING_STEP_LATENCY["network"][1],
                   NCAR_DERECHO + ": 200 Gb/s per port per direction, 4 ports per GPU node; latency: "
                   + NCCL_TUNING),
    source=NCAR_DERECHO + ": 4 A100 40GB per GPU node, 4 Slingshot NICs; " + MULTI_NIC,
)


def tp_link(tp: int, node=DERECHO) -> Link:
    """The link a TP group of ``tp`` GPUs crosses: NVLink while it fits in one node, the network
    (one NIC) as soon as it crosses the node boundary. For both network bounds (1 NIC / all NICs)
    use :func:`helpers.costmodel.collectives.ring_time`.

    >>> tp_link(4).name, tp_link(8).name
    ('NVLink 3 (all links of a GPU)', 'Slingshot 11 (one NIC)')
    """
    return node.nvlink if tp <= node.gpus_per_node else node.slingshot


#: A small all-reduce over NVLink is set by latency: NVIDIA/nccl issue #583 ("AllReduce bandwidth change
#: curve with respect to data size", https://github.com/NVIDIA/nccl/issues/583) reports all_reduce_perf on
#: 2 A100-SXM4-40GB: 32 B in 10.14 µs. In the ring model that is 2(p-1)·α = 10.14 µs at p=2: a measured
#: 5.07 µs per step, against NCCL's own model's 0.6 µs (LL) to 3.4 µs (Simple) per step plus its
#: per-call base latency (NCCL_TUNING): the range a decode model should keep in mind.
NVLINK_A100_SMALL_ALLREDUCE = (2, 32, 10.14e-6)     # (ranks, bytes, seconds)

#: Derecho's NVLink for decoding (notebook 07): the cited bandwidth (300 GB/s each way) and the latency
#: per ring step that the measured small all-reduce implies (10.14 µs / 2 steps).
DERECHO_DECODE_NVLINK = Link("NVLink (A100), latency from nccl#583", DERECHO.nvlink.bandwidth,
                             NVLINK_A100_SMALL_ALLREDUCE[2] / 2,
                             DERECHO.nvlink.source + "; latency: NVIDIA/nccl issue #583, 32 B all-reduce "
                             "on 2 A100-SXM4-40GB in 10.14 µs")


# ------------------------------------------------------------------------------ reference data
REFERENCE_GPU = H100_80GB.name
REFERENCE_SOURCE = "measured by the project with benchmarks/bench_shard_gemm.py on an H100 (80 GB), torch 2.11, 2026-11-25"
REFERENCE_SHAPE = ("one (tokens × 8192)·(8192 × 28672/p) matmul, a Llama-70B-sized MLP shard; "
                   "% = rate relative to p=1")
#: (dtype, tokens) -> (TFLOP/s at p=1, {p: rate at p / rate at p=1}); source: REFERENCE_SOURCE
REFERENCE: dict[tuple[str, int], tuple[float, dict[int, float]]] = {
    ("bf16", 16): (47.0, {1: 1.0, 2: 0.98, 4: 0.92, 8: 0.73, 16: 0.37}),
    ("bf16", 512): (752.7, {1: 1.0, 2: 0.95, 4: 0.95, 8: 0.88, 16: 0.75}),
    ("bf16", 4096): (807.2, {1: 1.0, 2: 0.94, 4: 0.91, 8: 0.83, 16: 0.78}),
    ("bf16", 16384): (731.2, {1: 1.0, 2: 1.02, 4: 0.99, 8: 0.99, 16: 0.98}),
    ("fp32", 16): (17.1, {1: 1.0, 2: 0.98, 4: 0.88, 8: 0.71, 16: 0.54}),
    ("fp32", 4096): (52.3, {1: 1.0, 2: 0.99, 4: 0.99, 8: 0.98, 16: 0.96}),
}


def reference_curve(dtype: str, tokens: int) -> tuple[float, dict[int, float], int]:
    """The :data:`REFERENCE` row of ``dtype`` whose token count is nearest (on a log scale):
    (TFLOP/s at p=1 on the H100, efficiency by p, the row's tokens).

    >>> reference_curve("bf16", 3000)[2], reference_curve("fp32", 100)[2]
    (4096, 16)
    """
    rows = [t for (d, t) in REFERENCE if d == dtype]
    if not rows:
        raise ValueError(f"dtype must be one of {sorted({d for d, _ in REFERENCE})}, got {dtype!r}")
    best = min(rows, key=lambda t: abs(math.log(t) - math.log(max(tokens, 1))))
    rate, eff = REFERENCE[(dtype, best)]
    return rate, dict(eff), best


# ------------------------------------------------------------------------------ shared devices
def shared_devices(layout: list[dict]) -> dict[str, list[int]]:
    """The GPUs that more than one rank uses: {"host/cuda:i": [ranks]}. ``layout``: one dict per
    rank with ``rank``, ``host`` and ``device`` (``cluster.info()``).

    >>> shared_devices([{"rank": r, "host": "h", "device": "cuda:0"} for r in range(4)])
    {'h/cuda:0': [0, 1, 2, 3]}
    """
    users: dict[str, list[int]] = {}
    for i, e in enumerate(layout):
        if str(e["device"]).startswith("cuda"):
            users.setdefault(f"{e['host']}/{e['device']}", []).append(int(e.get("rank", i)))
    return {k: v for k, v in users.items() if len(v) > 1}


def timing_caveat(layout: list[dict]) -> dict:
    """What a timing on this layout can and cannot say, decided before timing (a pure function of
    ``cluster.info()``): {"label", "shared", "note"}, label "shared GPU", "CPU engines" or "" (one
    GPU per rank: nothing to warn about).

    >>> timing_caveat([{"rank": r, "host": "h", "device": "cuda:0"} for r in range(4)])["label"]
    'shared GPU'
    >>> timing_caveat([{"rank": r, "host": "h", "device": f"cuda:{r}"} for r in range(4)])["note"]
    ''
    """
    shared = shared_devices(layout)
    if shared:
        where = "; ".join(f"ranks {', '.join(map(str, rs))} on {dev}" for dev, rs in shared.items())
        return {"label": "shared GPU", "shared": True,
                "note": (f"⚠ ranks share a GPU ({where}): they take turns on one device, so the times below "
                         "measure contention on one GPU, not one GPU per rank. Figures are labelled "
                         "'shared GPU'; read them as the shape of the costs, not as a cluster's speed.")}
    if all(not str(e["device"]).startswith("cuda") for e in layout):
        hosts = sorted({e["host"] for e in layout})
        where = "one host" if len(hosts) == 1 else f"{len(hosts)} hosts"
        return {"label": "CPU engines", "shared": False,
                "note": (f"CPU engines: {len(layout)} ranks on {where} share the cores over gloo; "
                         "the times show the shape of TP's costs on sockets, not a GPU cluster's speed.")}
    return {"label": "", "shared": False, "note": ""}
