"""Hardware, each number with its source: Derecho's GPU nodes and links, and the reference
matmul-efficiency table the calculator falls back on. Pure Python, no torch.

A bandwidth is bytes per second **in one direction**; a latency is seconds per step; ``1 GB = 1e9 B``
where a vendor says GB.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["Link", "DerechoNode", "DERECHO", "tp_link", "GPU", "A100_40GB", "NVLINK_A100_SMALL_ALLREDUCE",
           "DERECHO_DECODE_NVLINK", "REFERENCE", "REFERENCE_SOURCE",
           "REFERENCE_SHAPE", "reference_curve"]


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


# ------------------------------------------------------------------------------ one GPU (inference)
@dataclass(frozen=True)
class GPU:
    """One GPU's memory capacity (bytes) and memory bandwidth (bytes/s), with its source."""

    name: str
    memory: float
    memory_bandwidth: float
    source: str


#: Derecho's GPU. NVIDIA A100 Tensor Core GPU datasheet
#: (https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/a100/pdf/nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf),
#: A100 40GB SXM: "GPU Memory 40GB HBM2", "GPU Memory Bandwidth 1,555GB/s" (the datasheet's table, as
#: reproduced at https://glennklockwood.com/garden/processors/A100, which cites it).
A100_40GB = GPU("A100 40 GB (SXM)", 40e9, 1555e9,
                "NVIDIA A100 datasheet (nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf): 40GB HBM2, 1,555GB/s")

#: A small all-reduce over NVLink is set by latency: NVIDIA/nccl issue #583 ("AllReduce bandwidth change
#: curve with respect to data size", https://github.com/NVIDIA/nccl/issues/583) reports all_reduce_perf on
#: 2 A100-SXM4-40GB: 32 B in 10.14 µs. In the ring model that is 2(p-1)·α = 10.14 µs at p=2.
NVLINK_A100_SMALL_ALLREDUCE = (2, 32, 10.14e-6)     # (ranks, bytes, seconds)

#: Derecho's NVLink for decoding: the cited bandwidth (300 GB/s each way) and the latency per ring step
#: that the measured small all-reduce implies (10.14 µs / 2 steps).
DERECHO_DECODE_NVLINK = Link("NVLink (A100), latency from nccl#583", DERECHO.nvlink.bandwidth,
                             NVLINK_A100_SMALL_ALLREDUCE[2] / 2,
                             DERECHO.nvlink.source + "; latency: NVIDIA/nccl issue #583, 32 B all-reduce "
                             "on 2 A100-SXM4-40GB in 10.14 µs")


# ------------------------------------------------------------------------------ reference data
REFERENCE_SOURCE = "measured by the project on an H100, torch 2.11, 2026-11-25"
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
    (TFLOP/s at p=1, efficiency by p, the row's tokens).

    >>> reference_curve("bf16", 3000)[2], reference_curve("fp32", 100)[2]
    (4096, 16)
    """
    rows = [t for (d, t) in REFERENCE if d == dtype]
    if not rows:
        raise ValueError(f"dtype must be one of {sorted({d for d, _ in REFERENCE})}, got {dtype!r}")
    best = min(rows, key=lambda t: abs(math.log(t) - math.log(max(tokens, 1))))
    rate, eff = REFERENCE[(dtype, best)]
    return rate, dict(eff), best
