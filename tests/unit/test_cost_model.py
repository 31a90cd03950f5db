"""The cost model (helpers/costmodel: shapes, memory, collectives, hardware) against cases computed by hand.

Pure functions: no torch, no process. Each expected number is worked out in the comment beside it.
"""

from __future__ import annotations

import ast
import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from helpers.costmodel.collectives import (
    bytes_received,
    bytes_sent,
    collective_time,
    tp_bytes_per_layer,
    tp_collectives_per_layer,
    tp_comm_time_per_layer,
)
from helpers.costmodel.dims import (
    LLAMA2_7B,
    LLAMA2_13B,
    LLAMA2_70B,
    TINY,
    ModelDims,
    Setup,
    check_setup,
    layer_param_specs,
    param_count,
)
from helpers.costmodel.hardware import DERECHO, tp_link
from helpers.costmodel.memory import (
    activation_elements_per_layer,
    block_activation_bytes,
    layers_that_fit,
    memory_per_rank,
    param_bytes,
    param_elements_per_rank,
)

REPO = Path(__file__).resolve().parents[2]
SMALL = ModelDims("small", d_model=8, n_layers=3, n_heads=2, d_ff=16)


def test_costmodel_imports_with_torch_unimportable():
    # a fresh interpreter where `import torch` fails: every module of the cost model still imports
    code = ("import sys; sys.modules['torch'] = None\n"
            "import helpers.costmodel.calculator, helpers.costmodel.collectives, helpers.costmodel.flops\n"
            "import helpers.costmodel.hardware, helpers.costmodel.memory, helpers.costmodel.dims\n"
            "import helpers.viz.calculator, helpers.tp\n"
            "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
            "print('torch-free')")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "torch-free" in out.stdout, out.stderr[-3000:]
    # and by its source: the standard library and helpers.common only
    for path in (REPO / "helpers" / "costmodel").glob("*.py"):
        tree = ast.parse(path.read_text())
        mods = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        mods |= {("." * n.level) + (n.module or "") for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        outside = {m for m in mods if m.startswith("..") and not m.startswith("..common")}
        outside |= {m for m in mods if not m.startswith(".") and m.split(".")[0] not in sys.stdlib_module_names}
        assert not outside, f"{path.name} imports {outside}"


# The byte convention, by hand: n = bytes of the full tensor, p = 4 ranks (or 1).
# (kind, n, p, root, sent per rank, received per rank)
BYTE_CASES = [
    ("all_reduce", 1000, 4, False, 1500, 1500),        # 2·3/4·1000: reduce-scatter, then all-gather
    ("all_gather", 1000, 4, False, 750, 750),          # the gathered tensor: 4 shards of 250, 3 go out
    ("reduce_scatter", 1000, 4, False, 750, 750),      # the input: 3 of its 4 blocks go out
    ("all_to_all", 1000, 4, False, 750, 750),          # 3 of this rank's 4 blocks go to the others
    ("broadcast", 1000, 4, True, 3000, 0),             # the root sends the tensor to 3 others
    ("broadcast", 1000, 4, False, 0, 1000),
    ("reduce", 1000, 4, True, 0, 3000),                # the root receives 3 tensors
    ("reduce", 1000, 4, False, 1000, 0),
    ("all_reduce", 1000, 1, False, 0, 0),              # one rank: nothing on the wire
    ("all_gather", 800, 2, False, 400, 400),
    ("all_reduce", 800, 8, False, 1400, 1400),         # 2·7/8·800
]


@pytest.mark.parametrize("kind, n, p, root, sent, received", BYTE_CASES)
def test_byte_convention_by_hand(kind, n, p, root, sent, received):
    assert bytes_sent(kind, n, p, root=root) == sent
    assert bytes_received(kind, n, p, root=root) == received


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
    # without the (B, heads, S, S) attention scores (notebook 03: a fused-attention kernel) more fit
    no_scores = memory_per_rank(LLAMA2_7B, Setup("d"), "bf16-mixed", batch=1, seq_len=4096, layers=1,
                                optimizer_steps_counted=False, attention_scores=False).total
    assert layers_that_fit(LLAMA2_7B, Setup("d"), 40e9, batch=1, seq_len=4096,
                           attention_scores=False) == int(left // no_scores) > 7


# ------------------------------------------------------------------------------ refusals
def test_refusals_name_the_numbers():
    with pytest.raises(ValueError, match=r"tp=3 does not divide n_heads=8.*\{1, 2, 4, 8\}"):
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
        bytes_sent("gather", 1, 2)
    with pytest.raises(ValueError, match="bandwidth must be a positive"):
        collective_time(1, 0)


# ------------------------------------------------------------------------------ communication
def test_megatron_block_has_two_all_reduces_each_way():
    colls = tp_collectives_per_layer(SMALL, 2, batch=2, seq_len=4)
    assert [c["phase"] for c in colls] == ["forward", "forward", "backward", "backward"]
    assert {c["bytes"] for c in colls} == {2 * 4 * 8 * 4}       # b·s·d fp32 elements
    assert tp_collectives_per_layer(SMALL, 1, batch=2, seq_len=4) == []


def test_ring_wire_bytes_and_time_by_hand():
    assert bytes_sent("all_reduce", 800, 8) == 2 * 7 / 8 * 800 == 1400
    assert bytes_sent("reduce_scatter", 800, 2) == 400
    # 2(p-1) = 6 latency steps of 2 µs + 1.5 MB at 1 GB/s
    assert math.isclose(collective_time(1e6, 1e9, 2e-6, "all_reduce", 4), 6 * 2e-6 + 1.5e-3)
    assert math.isclose(collective_time(1e6, 1e9, 2e-6, "all_gather", 4), 3 * 2e-6 + 0.75e-3)
    assert collective_time(1e6, 1e9, 2e-6, "all_reduce", 1) == 0.0
    b = tp_bytes_per_layer(SMALL, 4, batch=2, seq_len=4)
    assert b["message_bytes"] == 4 * 256 and b["wire_bytes"] == 4 * 1.5 * 256


def test_derecho_links_and_the_node_boundary():
    assert tp_link(4) is DERECHO.nvlink and tp_link(8) is DERECHO.slingshot
    # Llama 2 13B, one 4096-token sequence, bf16: each all-reduce carries 4096 · 5120 · 2 B = 41.9 MB;
    # a ring step moves m/p per rank and pays NCCL's per-step latency (3.4 µs NVLink, 14 µs network)
    m = 4096 * 5120 * 2
    t4 = tp_comm_time_per_layer(LLAMA2_13B, 4, batch=1, seq_len=4096)
    assert math.isclose(t4["step"], 4 * 6 * (3.4e-6 + m / 4 / 300e9))
    t8 = tp_comm_time_per_layer(LLAMA2_13B, 8, batch=1, seq_len=4096)            # all 4 NICs: 100 GB/s a node
    assert math.isclose(t8["step"], 4 * 14 * (14e-6 + m / 8 / 100e9))
    t8_one = tp_comm_time_per_layer(LLAMA2_13B, 8, batch=1, seq_len=4096, nics_per_node=1)   # one 25 GB/s NIC
    assert math.isclose(t8_one["step"], 4 * 14 * (14e-6 + m / 8 / 25e9))
    assert t8["link"] == "Slingshot 11 (one NIC) × 4" and t8_one["link"] == "Slingshot 11 (one NIC) × 1"
    assert 2 < t8["step"] / t4["step"] < 6 < t8_one["step"] / t4["step"]


def test_activation_formula_orders_dense_tp_sp():
    # notebook 05's block: d 32, 4 heads, d_ff 128; N = B·T·D = 4096, A = B·heads·T² = 8192,
    # the MLP's two hidden tensors 2·B·T·F = 32768 (fp32: ×4)
    cfg = SimpleNamespace(d_model=32, n_heads=4, d_ff=128)
    dense, tp, sp = (block_activation_bytes(8, 16, cfg, 4, m) for m in ("dense", "tp", "tp+sp"))
    assert dense == 4 * (8 * 4096 + 32768 + 8192)                        # 16 N + A
    assert tp == 4 * (4 * 4096 + (4 * 4096 + 32768 + 8192) // 4)          # 4 N + 12 N/p + A/p
    assert sp == 4 * (2 * 4096 + (6 * 4096 + 32768 + 8192) // 4)          # 2 N + 14 N/p + A/p
    assert dense > tp > sp
    assert block_activation_bytes(8, 16, cfg, 1, "tp") == dense == block_activation_bytes(8, 16, cfg, 1, "tp+sp")
    with pytest.raises(ValueError, match="mode must be 'dense', 'tp' or 'tp\\+sp'"):
        block_activation_bytes(8, 16, cfg, 4, "sp")
