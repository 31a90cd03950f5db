"""The cost model pinned to its cited constants, and held to cases computed by hand.

Each constant has ONE named test: change a constant in helpers/costmodel/hardware.py and exactly
the test that names its source breaks. Sources: NVIDIA's A100 datasheet, NCAR's Derecho hardware
table, NVIDIA/nccl src/graph/tuning.cc @b6475625 (ring-step latencies), stas00/ml-engineering's MAMF
table (A100's achieved bf16 rate), the project's H100 shard-GEMM table (benchmarks/bench_shard_gemm.py).
"""

from __future__ import annotations

import math

import pytest

from helpers.costmodel.calculator import derecho_inputs, plan
from helpers.costmodel.collectives import fit_alpha_beta, ring_time
from helpers.costmodel.dims import LLAMA2_70B
from helpers.costmodel.hardware import (
    A100_40GB,
    DEFAULT_GPU,
    DERECHO,
    GPUS,
    H100_80GB,
    RING_STEP_LATENCY,
    shared_devices,
    timing_caveat,
)


# ------------------------------------------------------------------------------ constants, one test each
def test_a100_datasheet_rates_and_memory():
    assert A100_40GB.peak_tflops == {"bf16": 312.0, "fp32": 19.5}     # NVIDIA A100 datasheet, dense
    assert A100_40GB.memory == 40e9                                      # NCAR: 40GB HBM2 per GPU
    assert "312" in A100_40GB.source and "ncar-hpc-docs" in A100_40GB.source


def test_a100_achieved_fraction_is_mamf():
    assert A100_40GB.achieved["bf16"] == 0.869                           # 271.2 / 312, stas00 MAMF table
    assert "271.2" in A100_40GB.achieved_source


def test_h100_datasheet_and_project_measurement():
    assert H100_80GB.peak_tflops == {"bf16": 989.0, "fp32": 67.0}        # 1979 with sparsity / 2
    assert H100_80GB.rate("bf16") == pytest.approx(807.2) and H100_80GB.rate("fp32") == pytest.approx(52.3)
    assert "bench_shard_gemm.py" in H100_80GB.achieved_source


def test_derecho_is_a100_and_h100_is_only_selectable():
    assert DERECHO.gpu is A100_40GB and DEFAULT_GPU == "A100 40GB" and set(GPUS) == {"A100 40GB", "H100 80GB"}
    assert DERECHO.gpu_memory == 40e9 and DERECHO.gpus_per_node == 4


def test_nvlink3_per_gpu_and_per_pair():
    assert DERECHO.nvlink.bandwidth == 300e9          # 600 GB/s bidirectional per GPU → 300 each way
    assert DERECHO.nvlink_pair.bandwidth == 100e9     # 12 links / 3 peers = 4 links × 25 GB/s
    assert "600 GB/s" in DERECHO.nvlink.source


def test_slingshot_per_nic_and_nics_per_node():
    assert DERECHO.slingshot.bandwidth == 25e9        # 200 Gb/s per port per direction (NCAR)
    assert DERECHO.nics_per_node == 4                 # "GPU nodes - 4 Slingshot injection ports per node"
    assert "NCCL_CROSS_NIC=1" in DERECHO.source and "NCCL_NCHANNELS_PER_NET_PEER=4" in DERECHO.source


def test_nccl_ring_step_latencies():
    # NVIDIA/nccl tuning.cc hwLat, Ring (LL, Simple): NVLink 0.6 / 3.4 µs, NET 2.7 / 14.0 µs
    assert RING_STEP_LATENCY == {"nvlink": (0.6e-6, 3.4e-6), "network": (2.7e-6, 14.0e-6)}
    assert DERECHO.nvlink.latency == 3.4e-6 and DERECHO.slingshot.latency == 14.0e-6
    assert "tuning.cc" in DERECHO.slingshot.source and "tuning.cc" in DERECHO.nvlink.source


# ------------------------------------------------------------------------------ formulas by hand
def test_derecho_ring_all_reduce_8_ranks_2_nodes_one_nic():
    # 100 MB over 8 ranks: 14 steps of 12.5 MB per rank; the node's one NIC (25 GB/s) bounds each:
    # 14 · (14 µs + 12.5e6 / 25e9 s) = 14 · 514 µs = 7.196 ms
    r = ring_time("all_reduce", 1e8, 8, ranks_per_node=4, nics_per_node=1)
    assert (r.steps, r.step_bytes, r.nodes) == (14, 12.5e6, 2)
    assert r.bound_by == "Slingshot 11 (one NIC) × 1" and r.bandwidth == 25e9
    assert r.seconds == pytest.approx(14 * (14e-6 + 12.5e6 / 25e9)) == pytest.approx(7.196e-3)


def test_derecho_ring_all_reduce_8_ranks_2_nodes_four_nics():
    # the same over all 4 NICs (NCCL's channels, one NIC each): 100 GB/s per node, still below
    # NVLink's 300: 14 · (14 µs + 12.5e6 / 100e9 s) = 14 · 139 µs = 1.946 ms
    r = ring_time("all_reduce", 1e8, 8, ranks_per_node=4, nics_per_node=4)
    assert r.bound_by == "Slingshot 11 (one NIC) × 4" and r.bandwidth == 100e9
    assert r.seconds == pytest.approx(1.946e-3)


def test_ring_inside_one_node_both_nvlink_bounds():
    # 100 MB over the 4 GPUs of a node: 6 steps of 25 MB; 6 · (3.4 µs + 25e6 / 300e9) = 0.5204 ms
    # (all of a GPU's links) and 6 · (3.4 µs + 25e6 / 100e9) = 1.5204 ms (one GPU pair)
    fast = ring_time("all_reduce", 1e8, 4, ranks_per_node=4, nvlink="gpu")
    slow = ring_time("all_reduce", 1e8, 4, ranks_per_node=4, nvlink="pair")
    assert fast.seconds == pytest.approx(0.5204e-3) and slow.seconds == pytest.approx(1.5204e-3)
    assert (fast.nodes, fast.bound_by) == (1, "NVLink 3 (all links of a GPU)")
    with pytest.raises(ValueError, match="nics_per_node must be a positive"):
        ring_time("all_reduce", 1e8, 8, ranks_per_node=4, nics_per_node=0)


def test_calculator_70b_tp8_over_tp4_between_2_and_6():
    p = plan(derecho_inputs())          # Llama 2 70B, 2048 tokens, bf16, Derecho's defaults (4 NICs)
    ratio = p.row(8).comm_s / p.row(4).comm_s
    assert 2 <= ratio <= 6, ratio                                   # ≈ 4.2, not 14
    one_nic = p.row(8).comm_s_slow / p.row(4).comm_s
    assert one_nic > 10                                             # the old one-NIC picture: ≈ 13.5


def test_calculator_derecho_rows_use_the_a100_rate():
    p = plan(derecho_inputs())
    assert p.rate_tflops == pytest.approx(312 * 0.869)             # never the H100's 807 TFLOP/s
    assert "A100 40GB" in p.efficiency_source
    h = plan(derecho_inputs(gpu="H100 80GB", gpu_memory_gb=80.0))
    assert h.rate_tflops == pytest.approx(807.2)
    mine = plan(derecho_inputs(matmul_tflops=123.0))                # a learner's own measured rate
    assert mine.rate_tflops == 123.0 and "yours" in mine.efficiency_source
    assert p.row(4).compute_s == pytest.approx(mine.row(4).compute_s * 123.0 / (312 * 0.869))


def test_fit_alpha_beta_three_sizes_and_its_quality():
    alpha, beta = 50e-6, 0.5e9
    pts = [(p, n, 2 * (p - 1) * alpha + 2 * (p - 1) / p * n / beta) for p in (2, 4) for n in (1e4, 1e5, 1e6)]
    link, q = fit_alpha_beta(pts)
    assert link.latency == pytest.approx(alpha) and link.bandwidth == pytest.approx(beta)
    assert q["r2"] == pytest.approx(1.0) and q["max_rel_err"] < 1e-9 and q["points"] == 6
    noisy = [(p, n, t * (1.2 if i % 2 else 0.8)) for i, (p, n, t) in enumerate(pts)]
    assert fit_alpha_beta(noisy)[1]["max_rel_err"] > 0.1
    with pytest.raises(ValueError, match="at least 3 message sizes"):
        fit_alpha_beta([(4, 1e6, 1e-3)])


# ------------------------------------------------------------------------------ timing on shared devices
def _layout(devices, host="h"):
    return [{"rank": r, "host": host, "device": d} for r, d in enumerate(devices)]


def test_timing_caveat_shared_gpu_layouts():
    one = timing_caveat(_layout(["cuda:0"] * 4))                    # the README's default on 1 GPU
    assert one["shared"] and one["label"] == "shared GPU" and "ranks 0, 1, 2, 3 on h/cuda:0" in one["note"]
    two = _layout(["cuda:0", "cuda:1", "cuda:0", "cuda:1"])         # 4 ranks on 2 GPUs, round-robin
    assert shared_devices(two) == {"h/cuda:0": [0, 2], "h/cuda:1": [1, 3]}
    assert timing_caveat(two)["label"] == "shared GPU"


def test_timing_caveat_says_nothing_misleading_elsewhere():
    own = timing_caveat(_layout([f"cuda:{r}" for r in range(4)]))
    assert own == {"label": "", "shared": False, "note": ""}
    cpu = timing_caveat(_layout(["cpu"] * 4))
    assert cpu["label"] == "CPU engines" and not cpu["shared"] and "GPU" not in cpu["label"]
    # the same cuda:0 on two different hosts is two GPUs, not a shared one
    two_hosts = _layout(["cuda:0"], "a") + [{"rank": 1, "host": "b", "device": "cuda:0"}]
    assert timing_caveat(two_hosts)["shared"] is False
    assert math.isfinite(ring_time("all_reduce", 1.0, 1, ranks_per_node=1).seconds)


def test_llama70b_activation_message_is_what_the_ratio_uses():
    assert LLAMA2_70B.d_model == 8192       # 2048 tokens × 8192 × 2 B = 33.6 MB per all-reduce
