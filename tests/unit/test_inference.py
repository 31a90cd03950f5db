"""Notebook 07's formulas and refusals, by hand: the KV cache per rank, the sequences that fit an
A100 40 GB, the decode model, the link fit over message sizes, the head-count rules; and the TP
decoder on one process (p = 1) against the dense model, the kv-head replication of the DTensor
plan against dense. No cluster: a one-rank gloo group where a process group is needed."""

from __future__ import annotations

import copy
import os
import socket

import pytest
import torch
import torch.distributed as dist

from helpers.costmodel import (
    A100_40GB,
    DERECHO_DECODE_NVLINK,
    LLAMA2_7B,
    LLAMA2_70B,
    decode_token_time,
    fit_alpha_beta,
    inference_weight_bytes,
    kv_cache_bytes,
    kv_heads_per_rank,
    sequences_that_fit,
)
from helpers.models import GPTConfig, TinyGPT
from helpers.models.plans import check_heads, check_tp_config, kv_heads_of_rank, replicate_kv_heads


# ------------------------------------------------------------------------------ the KV cache formula
def test_kv_cache_bytes_by_hand():
    # 2 (k and v) · 2 layers · 23 tokens · 8 heads/4 · 8 dims · 4 B (fp32): notebook 07's tiny GPT at p=4
    assert kv_cache_bytes(2, 23, 8, 8, 4, p=4) == 2 * 2 * 23 * 2 * 8 * 4 == 5888
    assert kv_cache_bytes(2, 23, 8, 8, 4, p=1) == 4 * 5888
    # Llama 2 7B, bf16, one sequence of 4096 tokens: 2 · 32 · 4096 · 32 · 128 · 2 B = 2 GiB
    assert kv_cache_bytes(32, 4096, 32, 128, 2) == 2 * 2**30
    assert kv_cache_bytes(32, 4096, 32, 128, 2, batch=3, p=4) == 3 * 2**29 // 1
    # fewer kv heads than ranks: each rank holds one (replicated), not a fraction
    assert kv_cache_bytes(2, 10, 2, 8, 4, p=4) == 2 * 2 * 10 * 1 * 8 * 4


def test_kv_heads_per_rank_and_its_refusal():
    assert [kv_heads_per_rank(8, p) for p in (1, 2, 4, 8, 16)] == [8, 4, 2, 1, 1]
    assert kv_heads_per_rank(2, 4) == 1
    with pytest.raises(ValueError, match=r"n_kv_heads=3 and tp degree 4 divide neither way"):
        kv_heads_per_rank(3, 4)
    with pytest.raises(ValueError, match="positive whole number"):
        kv_heads_per_rank(0, 4)


def test_head_rules_refuse_with_the_degrees_that_work():
    check_heads(8, 8, 4)
    check_heads(8, 2, 4)                        # replicated
    check_heads(8, 2, 8)
    with pytest.raises(ValueError, match=r"n_kv_heads=3 and tp degree 4 divide neither way.*\{1, 3, 6, 12\}"):
        check_heads(12, 3, 4)
    with pytest.raises(ValueError, match=r"n_heads=8 is not divisible by tp degree 3.*\{1, 2, 4, 8\}"):
        check_heads(8, 8, 3)
    assert [kv_heads_of_rank(8, 4, 4, r) for r in range(4)] == [[0], [1], [2], [3]]
    assert [kv_heads_of_rank(8, 2, 4, r) for r in range(4)] == [[0], [0], [1], [1]]
    assert [kv_heads_of_rank(8, 8, 2, r) for r in range(2)] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    # check_tp_config now accepts the replication case and keeps the other refusals
    check_tp_config(GPTConfig(vocab_size=40, n_heads=8, d_model=64, n_kv_heads=2), 4)
    with pytest.raises(ValueError, match="divide neither way"):
        check_tp_config(GPTConfig(vocab_size=40, n_heads=12, d_model=96, n_kv_heads=3), 4)
    with pytest.raises(ValueError, match="vocab_size=35 is not divisible by tp degree 4"):
        check_tp_config(GPTConfig(vocab_size=35), 4)


# ------------------------------------------------------------------------------ the calculator rows
def _llama7b_params_by_hand() -> int:
    d, f, v, layers = 4096, 11008, 32000, 32
    per_layer = 4 * d * d + 3 * d * f + 2 * d      # wq wk wv wo, w1 w3 w2, two RMSNorm weights
    return layers * per_layer + 2 * v * d          # + embedding and head (final norm left out)


def test_sequences_that_fit_an_a100_hand_computed():
    assert A100_40GB.memory == 40e9 and "datasheet" in A100_40GB.source
    w1 = 2 * _llama7b_params_by_hand()
    assert inference_weight_bytes(LLAMA2_7B, 1) == w1 == 13_476_823_040
    kv1 = 2 * 32 * 4096 * 32 * 128 * 2
    f1 = sequences_that_fit(LLAMA2_7B, 4096, 1)
    assert (f1.weights_bytes, f1.kv_bytes_per_sequence, f1.sequences) == (w1, kv1, int((40e9 - w1) // kv1)) \
        == (w1, kv1, 12)
    assert sequences_that_fit(LLAMA2_7B, 4096, 2).sequences == int((40e9 - w1 / 2) // (kv1 / 2)) == 30
    assert sequences_that_fit(LLAMA2_7B, 4096, 4).sequences == int((40e9 - w1 / 4) // (kv1 / 4)) == 68
    # 70B (GQA, 8 kv heads of 128): at TP=4 each GPU holds a quarter of every split weight
    d, f, v, layers, kv = 8192, 28672, 32000, 80, 1024
    per_layer_split = (2 * d * d + 2 * kv * d + 3 * d * f) // 4 + 2 * d
    w4 = 2 * (layers * per_layer_split + 2 * v * d // 4)
    kv4 = 2 * 80 * 4096 * 2 * 128 * 2
    f4 = sequences_that_fit(LLAMA2_70B, 4096, 4)
    assert (f4.weights_bytes, f4.kv_bytes_per_sequence, f4.sequences) == (w4, kv4, int((40e9 - w4) // kv4)) \
        == (w4, kv4, 16)
    assert not sequences_that_fit(LLAMA2_70B, 4096, 1).weights_fit
    assert sequences_that_fit(LLAMA2_70B, 4096, 2).sequences == 0
    with pytest.raises(ValueError, match="seq_len"):
        sequences_that_fit(LLAMA2_7B, 0, 1)


def test_decode_token_time_by_hand():
    t = decode_token_time(LLAMA2_7B, 2, context=1024)
    w = inference_weight_bytes(LLAMA2_7B, 2)
    kv = 2 * 32 * 1024 * 16 * 128 * 2
    assert t["memory_s"] == pytest.approx((w + kv) / 1555e9)
    alpha, beta = DERECHO_DECODE_NVLINK.latency, DERECHO_DECODE_NVLINK.bandwidth
    assert alpha == pytest.approx(10.14e-6 / 2)
    one = 2 * alpha + 4096 * 2 / beta             # ring all-reduce of 8 KB on 2 ranks: 2 steps, n bytes sent
    assert t["comm_s"] == pytest.approx(2 * 32 * one)
    assert t["tokens_per_s"] == pytest.approx(1 / (t["memory_s"] + t["comm_s"]))
    assert decode_token_time(LLAMA2_7B, 1, context=1024)["comm_s"] == 0.0


def test_fit_link_over_message_sizes():
    alpha, beta, p = 80e-6, 1.5e9, 4
    pts = [(p, n, 2 * (p - 1) * alpha + 2 * (p - 1) / p * n / beta) for n in (256, 4096, 65536, 2**20, 4 * 2**20)]
    link, fit = fit_alpha_beta(pts)
    assert link.latency == pytest.approx(alpha) and link.bandwidth == pytest.approx(beta)
    assert fit["r2"] == pytest.approx(1.0) and fit["points"] == 5
    with pytest.raises(ValueError, match="on 2 or more ranks"):
        fit_alpha_beta([(1, 256, 1e-3)])


# ------------------------------------------------------------------------------ the models, one process
@pytest.fixture(scope="module")
def one_rank_group():
    if dist.is_initialized():
        yield
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize("n_kv", [8, 2])
def test_parallel_gpt_on_one_rank_is_the_dense_model(one_rank_group, n_kv):
    from helpers.models.decode import ParallelGPT, cache_bytes, generate

    torch.manual_seed(0)
    dense = TinyGPT(GPTConfig(vocab_size=40, d_model=64, n_heads=8, n_kv_heads=n_kv, n_layers=2, d_ff=256))
    prompt = torch.randint(0, 40, (1, 7))
    ids_d, logits_d, cache_d = generate(dense, prompt, 5, capacity=16)
    tp = ParallelGPT.from_dense(dense)
    ids_t, logits_t, cache_t = generate(tp, prompt, 5, capacity=16)
    assert torch.equal(ids_d, ids_t)
    assert torch.allclose(torch.stack(logits_d), torch.stack(logits_t), atol=1e-5)
    assert cache_bytes(cache_t) == kv_cache_bytes(2, 7 + 5 - 1, n_kv, 8, 4) == sum(c.nbytes for c in cache_d)


def test_prompt_longer_than_the_cache_is_refused_first(one_rank_group):
    from helpers.models.decode import ParallelGPT, generate

    tp = ParallelGPT.from_dense(TinyGPT(GPTConfig(vocab_size=40, d_model=64, n_heads=8)))
    with pytest.raises(ValueError, match=r"the prompt has 30 tokens and 5 are to be generated: 35 > the cache's "
                                         r"capacity of 32 tokens; shorten the prompt to at most 27 tokens"):
        generate(tp, torch.zeros(1, 30, dtype=torch.long), 5, capacity=32)
    cache = tp.new_cache(8)
    with pytest.raises(ValueError, match=r"the KV cache holds 8 tokens: 0 cached \+ 9 new = 9 do not fit"):
        tp(torch.zeros(1, 9, dtype=torch.long), cache=cache)
    assert len(cache[0]) == 0


def test_replicate_kv_heads_keeps_the_function():
    torch.manual_seed(0)
    dense = TinyGPT(GPTConfig(vocab_size=40, d_model=64, n_heads=8, n_kv_heads=2, n_layers=2, d_ff=256))
    rep = replicate_kv_heads(copy.deepcopy(dense), 4)
    assert rep.blocks[0].attn.wk.weight.shape == (4 * 8, 64)       # one kv head per rank of 4
    ids = torch.randint(0, 40, (2, 9))
    with torch.no_grad():
        assert torch.allclose(rep(ids), dense(ids), atol=1e-6)
    assert replicate_kv_heads(dense, 2) is dense                 # 2 kv heads on 2 ranks: nothing to do
