"""Notebook 06's TP calculator (helpers/costmodel/calculator.py) against cases computed by hand.

Pure functions: no torch, no process. Each expected number is worked out in the comment beside it.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from helpers.costmodel.calculator import CalculatorInputs, check_inputs, derecho_inputs, interpolate_efficiency, plan
from helpers.costmodel.collectives import collective_time, fit_link
from helpers.costmodel.dims import TINY, ModelDims
from helpers.costmodel.flops import block_flops
from helpers.costmodel.hardware import DERECHO, REFERENCE, REFERENCE_SOURCE, reference_curve

# One wide layer, no bias, no gating, no embedding: d = 16384, f = 65536, 128 heads; fp32
# (4 B weight + 4 B gradient + 8 B AdamW moments = 16 B per parameter, 4 B per activation);
# one token (batch 1, seq_len 1), so the activations are tiny.
BIG = ModelDims("big", d_model=16384, n_layers=4, n_heads=128, d_ff=65536, bias=False)


def big_inputs(**changes) -> CalculatorInputs:
    return derecho_inputs(BIG, vocab=0, n_kv_heads=None, gated_mlp=False, dtype="fp32",
                          batch=1, seq_len=1, **changes)


def test_a_layer_too_big_for_40_gb_at_tp1_fits_at_tp4():
    p = plan(big_inputs())
    # TP=1 weights: 2 norms 2·16384 + wq,wk,wv,wo 4·16384² + w1,w2 2·16384·65536
    #   = 32,768 + 1,073,741,824 + 2,147,483,648 = 3,221,258,240 parameters × 16 B = 51,540,131,840 B
    # activations (costmodel.memory.activation_elements_per_layer, b = s = 1, p = 1):
    #   4·d + 4 + 4·d + 128·1 + 2·f = 65,540 + 65,536 + 128 + 131,072 = 262,276 × 4 B = 1,049,104 B
    assert p.row(1).layer_bytes == 51_540_131_840 + 1_049_104
    assert not p.layer_fits_without_tp
    # TP=4 weights: 32,768 + 268,435,456 + 536,870,912 = 805,339,136 × 16 B = 12,885,426,176 B
    # activations: 65,540 + (16,384 + 32 + 32,768) = 114,724 × 4 B = 458,896 B
    assert p.row(4).layer_bytes == 12_885_426_176 + 458_896
    assert p.row(4).layer_fits
    # TP=2: 1,610,645,504 × 16 B + 163,908 × 4 B = 25,770,983,696 B < 40 GB: the smallest
    assert p.row(2).layer_bytes == 25_770_328_064 + 655_632
    assert p.smallest_tp_for_layer == 2
    # with 20 GB GPUs, TP=2's 25.8 GB no longer fits: TP=4 is the smallest
    assert plan(big_inputs(gpu_memory_gb=20)).smallest_tp_for_layer == 4


def test_whole_model_and_fsdp_floor_by_hand():
    p = plan(big_inputs())
    # 4 layers × 51.54 GB: the model needs 206.2 GB at TP=1, 4 × 12.886 GB = 51.5 GB at TP=4,
    # 4 × 6.44 GB = 25.8 GB at TP=8 (the first that fits 40 GB, across nodes)
    assert p.row(1).model_bytes == 4 * p.row(1).layer_bytes
    assert not p.model_fits_without_tp
    assert p.smallest_tp_for_model == 8
    # FSDP's floor at TP=1: 4 layers' activations (4 × 1,049,104 B) + one gathered layer's
    # weights and gradients (3,221,258,240 × 8 B = 25,770,065,920 B) = 25.77 GB < 40 GB
    assert p.row(1).fsdp_floor_bytes == 4 * 1_049_104 + 25_770_065_920
    assert p.row(1).fsdp_fits
    assert "FSDP across GPUs, no TP" in " ".join(p.recommendation)


def test_a_layer_whose_weights_alone_exceed_the_gpu_needs_tp():
    # 20 GB GPUs: the gathered layer (25.77 GB of weights + gradients) does not fit at TP=1;
    # at TP=2 it is 1,610,645,504 × 8 B = 12.89 GB + activations: TP=2 within the node with FSDP
    p = plan(big_inputs(gpu_memory_gb=20))
    text = " ".join(p.recommendation)
    assert "a single layer is too large for one GPU" in text
    assert p.smallest_tp_with_fsdp == 2
    assert "Use TP=2 within the node" in text and "FSDP across nodes" in text


def test_small_model_needs_no_tp():
    inp = derecho_inputs(TINY, batch=4, seq_len=8)
    p = plan(inp)
    assert p.model_fits_without_tp and p.layer_fits_without_tp
    assert p.smallest_tp_for_model == 1
    assert p.recommendation[0].startswith("The whole model fits one GPU") and "no TP" in p.recommendation[0]


def test_llama70b_on_derecho_recommends_tp4_in_node_fsdp_across():
    p = plan(derecho_inputs())      # Llama 2 70B, 1 × 2048 tokens, bf16-mixed, 4 A100 40 GB per node
    text = " ".join(p.recommendation)
    assert "FSDP alone fails" in text
    assert "Use TP=4 within the node" in text
    assert "Do not stretch TP across nodes: at TP=8" in text
    # communication grows with the degree, and jumps when TP leaves NVLink for Slingshot
    shares = [p.row(t).comm_share for t in (1, 2, 4, 8)]
    assert shares[0] == 0 and shares[1] < shares[2] < shares[3]
    assert p.row(4).link.startswith("intra-node") and p.row(8).link.startswith("inter-node")
    assert p.row(8).comm_share > 0.25 and p.row(8).comm_s_slow > p.row(8).comm_s


def test_comm_share_by_hand():
    # a custom model with round numbers: d = 1000, f = 4000, 10 heads,
    # 1 layer, fp32, batch 1 × seq 1000 tokens; TP=2 over a 1 GB/s, 0-latency link.
    dims = ModelDims("hand", d_model=1000, n_layers=1, n_heads=10, d_ff=4000, bias=False)
    inp = derecho_inputs(dims, vocab=0, n_kv_heads=None, gated_mlp=False, dtype="fp32", batch=1,
                         seq_len=1000, intra_node_gb_s=1.0, matmul_tflops=1.0, tp=2)
    p = plan(inp, efficiency={1: 1.0, 2: 0.5})
    # each all-reduce moves 1000 tokens × 1000 × 4 B = 4 MB; ring at p=2: 2·(1/2)·4 MB = 4 MB per
    # rank, over 1 GB/s = 4 ms, + 2 ring steps × NCCL's 3.4 µs NVLink latency; 4 all-reduces per step
    assert DERECHO.nvlink.latency == 3.4e-6
    assert p.row(2).comm_s == pytest.approx(4 * collective_time(4e6, 1e9, 3.4e-6, "all_reduce", 2))
    assert p.row(2).comm_s == pytest.approx(0.016 + 4 * 2 * 3.4e-6)
    # compute: linear weights 4·1000² + 2·1000·4000 = 12e6; FLOPs = 3·(2·1000·12e6 + 2·2·1000·1000·1000)
    #   = 3·(24e9 + 4e9) = 84e9; at TP=2: 42e9 FLOPs at 1 TFLOP/s × 0.5 = 84 ms
    assert block_flops(dims, 1000, 1000) == 84e9
    assert p.row(2).compute_s == pytest.approx(0.084)
    assert p.row(2).comm_share == pytest.approx(p.row(2).comm_s / (0.084 + p.row(2).comm_s))
    assert p.row(1).compute_s == pytest.approx(0.084) and p.row(1).comm_s == 0


def test_reference_table_is_the_cited_one():
    assert REFERENCE_SOURCE == ("measured by the project with benchmarks/bench_shard_gemm.py on an H100 (80 GB), "
                                "torch 2.11, 2026-11-25")
    assert REFERENCE[("bf16", 4096)] == (807.2, {1: 1.0, 2: 0.94, 4: 0.91, 8: 0.83, 16: 0.78})
    assert REFERENCE[("fp32", 16)][1][16] == 0.54
    assert reference_curve("bf16", 20000)[2] == 16384
    assert reference_curve("fp32", 1000)[2] == 4096        # log-nearest: 1000 is nearer 4096 than 16
    assert interpolate_efficiency({1: 1.0, 2: 0.98, 4: 0.92}, 3) == pytest.approx(
        0.98 + (math.log2(3) - 1) * (0.92 - 0.98))


def test_fit_link_recovers_latency_and_bandwidth():
    # two measured all-reduces of 1 MB generated with α = 50 µs, β = 0.5 GB/s
    def t(p):
        return 2 * (p - 1) * 50e-6 + 2 * (p - 1) / p * 1e6 / 0.5e9
    link = fit_link({2: t(2), 4: t(4)}, 1e6)
    assert link.latency == pytest.approx(50e-6) and link.bandwidth == pytest.approx(0.5e9)
    only = fit_link({2: 0.004}, 4e6)        # one point: bandwidth only, 4 MB in 4 ms
    assert only.latency == 0 and only.bandwidth == pytest.approx(1e9)
    # times growing faster than the bytes (2 ms at p=2, 9 ms at p=4; the bytes grow only 1.5×) need a
    # negative β in the joint fit: latency only wins, α = (2·2 + 6·9) ms / (2² + 6²) = 1.45 ms
    slow = fit_link({2: 2e-3, 4: 9e-3}, 262_144)
    assert slow.latency == pytest.approx(1.45e-3) and slow.bandwidth == math.inf
    with pytest.raises(ValueError, match="on 2 or more ranks"):
        fit_link({1: 0.1}, 1e6)


@pytest.mark.parametrize("changes, needle", [
    (dict(d_model=0), "d_model must be a positive whole number, got 0"),
    (dict(n_layers=-2), "n_layers must be a positive whole number, got -2"),
    (dict(seq_len=0), "seq_len must be a positive whole number"),
    (dict(gpu_memory_gb=0), "gpu_memory_gb must be a positive number of GB, got 0"),
    (dict(gpu_memory_gb=-40.0), "gpu_memory_gb must be a positive number of GB"),
    (dict(intra_node_gb_s=0.0), "intra_node_gb_s must be a positive number of GB/s"),
    (dict(gpus_per_node=0), "gpus_per_node must be a positive whole number"),
    (dict(dtype="fp8"), "dtype must be one of bf16, fp32"),
    (dict(tp=8), "TP degree 8 is above the 4 GPUs of a node"),
    (dict(tp=3), "TP degree 3 does not divide the heads"),
    (dict(d_model=1000), "d_model=1000 is not divisible by n_heads=64"),
])
def test_bad_inputs_are_sentences_not_tracebacks(changes, needle):
    inp = replace(derecho_inputs(), **changes)
    problems = check_inputs(inp)
    assert any(needle in msg for msg in problems), problems
    with pytest.raises(ValueError, match="."):
        plan(inp)


def test_good_inputs_have_no_problems():
    assert check_inputs(derecho_inputs()) == []
    assert check_inputs(derecho_inputs(tp=1, gpus_per_node=1)) == []
