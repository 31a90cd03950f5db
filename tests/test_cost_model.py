"""The memory and communication formulas (helpers/tp/cost.py) against cases computed by hand.

Pure functions: no torch, no process. Each expected number is worked out in the comment beside it.
"""

from __future__ import annotations

import math

import pytest

from helpers.tp import cost
from helpers.tp.cost import (
    DERECHO,
    LLAMA2_7B,
    LLAMA2_13B,
    LLAMA2_70B,
    TINY,
    ModelDims,
    Setup,
    activation_elements_per_layer,
    check_setup,
    collective_time,
    layer_param_specs,
    layers_that_fit,
    memory_per_rank,
    param_bytes,
    param_count,
    param_elements_per_rank,
    tp_bytes_per_layer,
    tp_collectives_per_layer,
    tp_comm_time_per_layer,
    tp_link,
    wire_bytes,
)

SMALL = ModelDims("small", d_model=8, n_layers=3, n_heads=2, d_ff=16)


def test_module_is_torch_free():
    import ast
    import pathlib

    tree = ast.parse(pathlib.Path(cost.__file__).read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert imported <= {"__future__", "math", "dataclasses"}


# ------------------------------------------------------------------------------ parameters
def test_small_block_parameters_by_hand():
    # norms 2·(8+8) = 32; wq, wv, wo: 3·(8·8 + 8) = 216; wk (no bias): 64; w1: 16·8 + 16 = 144; w2: 8·16 + 8 = 136
    assert sum(s.numel for s in layer_param_specs(SMALL)) == 32 + 216 + 64 + 144 + 136 == 592
    assert param_count(SMALL) == 3 * 592
    assert [s.name for s in layer_param_specs(SMALL)].count("attn.wk.bias") == 0


def test_tp_splits_columns_and_rows_but_not_norms_or_row_biases():
    # tp=2: norms 32 whole; wq, wv 2·(4·8 + 4) = 72; wk 4·8 = 32; wo 8·4 + 8 = 40; w1 8·8 + 8 = 72; w2 8·8 + 8 = 72
    assert param_elements_per_rank(SMALL, Setup("tp", tp=2)) == 32 + 72 + 32 + 40 + 72 + 72 == 320


def test_fsdp_cuts_dim0_of_every_local_tensor_with_padding():
    # fsdp=2: every tensor's dim 0 halves (all even here): 592 / 2
    assert param_elements_per_rank(SMALL, Setup("f", fsdp=2)) == 296
    # fsdp=3: dim 0 padded up to a multiple of 3: norms (8→3 rows) 4·3 = 12; wq..wo weights 4·(3·8) = 96,
    # the biases of wq, wv, wo 3·3 = 9; w1 (16→6 rows)·8 = 48, bias 6; w2 3·16 = 48, bias 3
    assert param_elements_per_rank(SMALL, Setup("f", fsdp=3)) == 12 + 96 + 9 + 48 + 6 + 48 + 3 == 222


def test_tp_times_fsdp_on_the_tiny_model():
    # notebook 03's 2×2: what TP splits is cut in 4 (2 by TP, 2 by FSDP); what TP keeps whole
    # (norms, row biases) only in 2 (by FSDP)
    dense = param_elements_per_rank(TINY, Setup("d"))
    whole_on_tp = 4 * 32 + 2 * 32           # 2 norms (weight + bias) and the 2 row layers' biases
    assert param_elements_per_rank(TINY, Setup("x", 2, 2)) == (dense - whole_on_tp) // 4 + whole_on_tp // 2


def test_llama_sizes_match_their_names():
    assert round(param_count(LLAMA2_7B) / 1e9, 1) == 6.7
    assert round(param_count(LLAMA2_13B) / 1e9, 1) == 13.0
    assert round(param_count(LLAMA2_70B) / 1e9) == 69
    # 70B's grouped-query attention: wk and wv are (8 heads × 128, 8192)
    wk = [s for s in layer_param_specs(LLAMA2_70B) if s.name == "attn.wk.weight"][0]
    assert wk.shape == (1024, 8192)


def test_param_bytes_follow_the_precision():
    assert param_bytes(SMALL, Setup("d")) == 3 * 592 * 4
    assert param_bytes(SMALL, Setup("d"), "bf16-mixed", layers=1) == 592 * 2


# ------------------------------------------------------------------------------ activations and totals
def test_activations_by_hand():
    # b=2, s=4, d=8, f=16, h=2, dense: 4·bsd = 256, 4·bs = 32, 4·bsd = 256, b·h·s² = 64, 2·bsf = 256
    assert activation_elements_per_layer(SMALL, Setup("d"), batch=2, seq_len=4) == 256 + 32 + 256 + 64 + 256
    # tp=2: the split part halves (128 + 32 + 128), the replicated part (288) does not
    assert activation_elements_per_layer(SMALL, Setup("t", tp=2), batch=2, seq_len=4) == 288 + 128 + 32 + 128
    # a fused (flash) attention keeps no b·h·s² scores
    assert activation_elements_per_layer(SMALL, Setup("d"), batch=2, seq_len=4, attention_scores=False) == 864 - 64
    # fsdp=2: each rank holds half the batch: everything halves
    assert activation_elements_per_layer(SMALL, Setup("f", fsdp=2), batch=2, seq_len=4) == 432


def test_memory_per_rank_fp32_adamw():
    m = memory_per_rank(SMALL, Setup("d"), batch=2, seq_len=4)
    assert m.params == m.grads == 3 * 592 * 4
    # two moments of 4 B each, plus AdamW's 4-byte step counter per tensor (15 tensors per block)
    assert m.optimizer == 3 * (592 * 8 + 15 * 4)
    assert m.activations == 3 * 864 * 4
    assert m.total == m.params + m.grads + m.optimizer + m.activations
    assert list(m.as_dict()) == ["parameters", "gradients", "optimizer state", "activations"]


def test_memory_bf16_mixed_is_16_bytes_per_parameter():
    m = memory_per_rank(SMALL, Setup("d"), "bf16-mixed", batch=2, seq_len=4, optimizer_steps_counted=False)
    assert (m.params + m.grads + m.optimizer) == 16 * param_count(SMALL)


def test_layers_that_fit_by_hand():
    # Llama 2 7B, one GPU, bf16-mixed, one 4096-token sequence: one block = 16 B × 202.4 M params
    # + activations; the 2 × 32000 × 4096 embedding/head take 16 B × 262 M = 4.2 GB first.
    one = memory_per_rank(LLAMA2_7B, Setup("d"), "bf16-mixed", batch=1, seq_len=4096, layers=1,
                          optimizer_steps_counted=False).total
    left = 40e9 - 16 * 2 * 32000 * 4096
    assert layers_that_fit(LLAMA2_7B, Setup("d"), 40e9, batch=1, seq_len=4096) == int(left // one) == 7
    # the whole model fits when each GPU holds 1/8 of every layer ... but never more than n_layers
    assert layers_that_fit(TINY, Setup("d"), 40e9, batch=1, seq_len=8) == TINY.n_layers


# ------------------------------------------------------------------------------ refusals
def test_refusals_name_the_numbers():
    with pytest.raises(ValueError, match=r"tp=3 does not divide n_heads=4.*\{1, 2, 4\}"):
        check_setup(TINY, Setup("x", tp=3))
    with pytest.raises(ValueError, match=r"tp=16 does not divide n_kv_heads=8"):
        check_setup(LLAMA2_70B, Setup("x", tp=16))
    with pytest.raises(ValueError, match=r"global batch of 6 samples is not divisible by the FSDP degree 4.*8"):
        memory_per_rank(TINY, Setup("x", fsdp=4), batch=6, seq_len=8)
    with pytest.raises(ValueError, match="tp degree must be a positive"):
        Setup("x", tp=0)
    with pytest.raises(ValueError, match="d_model=10 is not divisible by n_heads=4"):
        ModelDims("bad", 10, 1, 4, 16)
    with pytest.raises(ValueError, match="precision must be one of"):
        param_bytes(TINY, Setup("d"), "fp8")
    with pytest.raises(ValueError, match="kind must be one of"):
        wire_bytes("broadcast", 1, 2)
    with pytest.raises(ValueError, match="bandwidth must be a positive"):
        collective_time(1, 0)


# ------------------------------------------------------------------------------ communication
def test_megatron_block_has_two_all_reduces_each_way():
    colls = tp_collectives_per_layer(SMALL, 2, batch=2, seq_len=4)
    assert [c["phase"] for c in colls] == ["forward", "forward", "backward", "backward"]
    assert {c["bytes"] for c in colls} == {2 * 4 * 8 * 4}       # b·s·d fp32 elements
    assert tp_collectives_per_layer(SMALL, 1, batch=2, seq_len=4) == []


def test_ring_wire_bytes_and_time_by_hand():
    assert wire_bytes("all_reduce", 800, 8) == 2 * 7 / 8 * 800 == 1400
    assert wire_bytes("reduce_scatter", 800, 2) == 400
    # 2(p-1) = 6 latency steps of 2 µs + 1.5 MB at 1 GB/s
    assert math.isclose(collective_time(1e6, 1e9, 2e-6, "all_reduce", 4), 6 * 2e-6 + 1.5e-3)
    assert math.isclose(collective_time(1e6, 1e9, 2e-6, "all_gather", 4), 3 * 2e-6 + 0.75e-3)
    assert collective_time(1e6, 1e9, 2e-6, "all_reduce", 1) == 0.0
    b = tp_bytes_per_layer(SMALL, 4, batch=2, seq_len=4)
    assert b["message_bytes"] == 4 * 256 and b["wire_bytes"] == 4 * 1.5 * 256


def test_derecho_links_and_the_node_boundary():
    assert DERECHO.nvlink.bandwidth == 300e9          # 600 GB/s bidirectional → 300 GB/s each way
    assert DERECHO.slingshot.bandwidth == 25e9        # 200 Gb/s per port per direction = 25 GB/s
    assert DERECHO.slingshot.latency == 2.6e-6
    assert "ncar-hpc-docs" in DERECHO.slingshot.source and "600 GB/s" in DERECHO.nvlink.source
    assert tp_link(4) is DERECHO.nvlink and tp_link(8) is DERECHO.slingshot
    # Llama 2 13B, one 4096-token sequence, bf16: each all-reduce carries 4096 · 5120 · 2 B = 41.9 MB
    m = 4096 * 5120 * 2
    t4 = tp_comm_time_per_layer(LLAMA2_13B, 4, batch=1, seq_len=4096)
    assert math.isclose(t4["step"], 4 * (2 * 3 / 4 * m / 300e9))
    t8 = tp_comm_time_per_layer(LLAMA2_13B, 8, batch=1, seq_len=4096)
    assert math.isclose(t8["step"], 4 * (14 * 2.6e-6 + 2 * 7 / 8 * m / 25e9))
    assert t8["step"] > 10 * t4["step"]
