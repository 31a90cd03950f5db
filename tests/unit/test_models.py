"""helpers.models in one process: the parts against hand-written references, GQA, the KV cache,
the fused qkv, and the plans applied on a one-rank mesh (no cluster)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist
from torch.testing import assert_close

from helpers.models import MLP, Attention, Block, GatedMLP, GPTConfig, KVCache, TinyGPT, TinyTransformer, lm_loss
from helpers.models.plans import block_plan, check_tp_config, model_plan, parallelize_tiny_gpt, tp_plan


def reference_attention(attn, x, causal):
    """Attention by the textbook, heads made explicit: k and v repeated to the query heads."""
    B, S, D = x.shape
    H, KV, hd = attn.n_heads, attn.n_kv_heads, attn.head_dim
    q = attn.wq(x).reshape(B, S, H, hd).permute(0, 2, 1, 3)
    k = attn.wk(x).reshape(B, S, KV, hd).permute(0, 2, 1, 3)
    v = attn.wv(x).reshape(B, S, KV, hd).permute(0, 2, 1, 3)
    k = torch.stack([k[:, h * KV // H] for h in range(H)], dim=1)   # query head h reads kv head h // (H/KV)
    v = torch.stack([v[:, h * KV // H] for h in range(H)], dim=1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(hd)
    if causal:
        scores = scores + torch.full((S, S), float("-inf")).triu(1)
    y = (scores.softmax(-1) @ v).permute(0, 2, 1, 3).reshape(B, S, D)
    return attn.wo(y)


@pytest.mark.parametrize("n_kv_heads", [None, 4, 2, 1])
@pytest.mark.parametrize("causal", [False, True])
def test_attention_and_gqa_equal_the_textbook(n_kv_heads, causal):
    torch.manual_seed(0)
    attn = Attention(32, 4, n_kv_heads, causal=causal)
    x = torch.randn(2, 5, 32)
    assert attn.wk.weight.shape == (8 * (n_kv_heads or 4), 32) and attn.wk.bias is None
    assert_close(attn(x), reference_attention(attn, x, causal))


def test_gqa_refusals():
    with pytest.raises(ValueError, match="n_heads=4 is not a multiple of n_kv_heads=3"):
        Attention(32, 4, 3)
    with pytest.raises(ValueError, match="d_model=30 is not divisible by n_heads=4"):
        Attention(30, 4)
    with pytest.raises(ValueError, match="fused_qkv needs n_kv_heads == n_heads"):
        Attention(32, 4, 2, fused_qkv=True)


@pytest.mark.parametrize("n_kv_heads", [None, 2])
def test_kv_cache_prefill_then_decode_equals_the_full_forward(n_kv_heads):
    torch.manual_seed(0)
    attn = Attention(32, 4, n_kv_heads, causal=True)
    x = torch.randn(2, 9, 32)
    cache = KVCache()
    assert len(cache) == 0 and cache.nbytes == 0
    steps = [attn(x[:, :4], cache=cache)]                         # prefill 4 positions
    steps += [attn(x[:, t:t + 1], cache=cache) for t in range(4, 8)]   # 4 decode steps, one token each
    steps += [attn(x[:, 8:], cache=cache)]
    assert_close(torch.cat(steps, dim=1), attn(x))
    kv = n_kv_heads or 4
    assert len(cache) == 9 and cache.k.shape == (2, kv, 9, 8)     # the cache holds kv heads, not query heads
    assert cache.nbytes == 2 * 2 * kv * 9 * 8 * 4


def test_tiny_gpt_decodes_with_its_cache_like_the_full_forward():
    torch.manual_seed(0)
    model = TinyGPT(GPTConfig(vocab_size=40, n_kv_heads=2))
    ids = torch.randint(0, 40, (2, 10))
    cache = model.new_cache()
    logits = [model(ids[:, :6], cache=cache)] + [model(ids[:, t:t + 1], cache=cache) for t in range(6, 10)]
    assert_close(torch.cat(logits, dim=1), model(ids))
    assert [len(c) for c in cache] == [10, 10]


def test_fused_qkv_equals_separate_projections():
    torch.manual_seed(0)
    fused = Attention(16, 4, fused_qkv=True)
    split = Attention(16, 4)
    with torch.no_grad():
        wq, wk, wv = fused.wqkv.weight.chunk(3)
        bq, _, bv = fused.wqkv.bias.chunk(3)
        for lin, w, b in ((split.wq, wq, bq), (split.wk, wk, None), (split.wv, wv, bv)):
            lin.weight.copy_(w)
            if b is not None:
                lin.bias.copy_(b)
        split.wo.load_state_dict(fused.wo.state_dict())
        fused.wqkv.bias[16:32].zero_()                            # the separate wk has no bias
    x = torch.randn(2, 3, 16)
    assert_close(fused(x), split(x))


def test_mlps_and_the_pre_norm_block():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8)
    mlp, gated = MLP(8, 16), GatedMLP(8, 16)
    assert_close(mlp(x), mlp.w2(torch.nn.functional.gelu(mlp.w1(x))))
    assert_close(gated(x), gated.w2(torch.nn.functional.silu(gated.w1(x)) * gated.w3(x)))
    block = Block(8, 2, 16)
    h = x + block.attn(block.attn_norm(x))
    assert_close(block(x), h + block.mlp(block.mlp_norm(h)))
    plain = Block(8, 2, 16, norms=False)
    assert isinstance(plain.attn_norm, torch.nn.Identity) and isinstance(plain.mlp_norm, torch.nn.Identity)


def test_plans_name_only_submodules_the_models_have():
    model = TinyTransformer(32, 4, 64, 2)
    names = {n for n, _ in model.named_modules()}
    assert set(tp_plan(model)) <= names and "blocks.1.attn.wo" in tp_plan(model)
    gpt = TinyGPT(GPTConfig())
    assert set(model_plan()) <= {n for n, _ in gpt.named_modules()}
    assert set(block_plan()) <= {n for n, _ in gpt.blocks[0].named_modules()}
    check_tp_config(GPTConfig(n_heads=4, n_kv_heads=2), 4)          # fewer kv heads than ranks: replicated
    with pytest.raises(ValueError, match=r"n_kv_heads=3 and tp degree 4 divide neither way.*\{1, 3, 6, 12\}"):
        check_tp_config(GPTConfig(d_model=96, n_heads=12, n_kv_heads=3), 4)


@pytest.fixture(scope="module")
def mesh1():
    if dist.is_initialized():
        pytest.skip("a process group already exists in this process")
    from torch.distributed.device_mesh import init_device_mesh

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield init_device_mesh("cpu", (1,), mesh_dim_names=("tp",))
    dist.destroy_process_group()


@pytest.mark.parametrize("sequence_parallel", [False, True])
def test_parallelized_tiny_gpt_on_one_rank_equals_dense(mesh1, sequence_parallel):
    import copy

    from torch.distributed.tensor.parallel import loss_parallel

    torch.manual_seed(0)
    dense = TinyGPT(GPTConfig(vocab_size=40, n_kv_heads=2))
    tp = parallelize_tiny_gpt(copy.deepcopy(dense), mesh1, sequence_parallel=sequence_parallel)
    ids, targets = torch.randint(0, 40, (2, 8)), torch.randint(0, 40, (2, 8))
    with loss_parallel():
        loss = lm_loss(tp(ids), targets)
    assert_close(loss.full_tensor(), lm_loss(dense(ids), targets))
    with pytest.raises(ValueError, match="token id 40 is outside the vocabulary"):
        tp(torch.full((1, 8), 40))


def test_parallelized_tiny_gpt_decodes_with_a_cache(mesh1):
    """TP without SP (the decoding layout of notebook 07): the cache passes through the plan's hooks."""
    import copy

    torch.manual_seed(0)
    dense = TinyGPT(GPTConfig(vocab_size=40))
    tp = parallelize_tiny_gpt(copy.deepcopy(dense), mesh1, sequence_parallel=False, loss_parallel=False)
    ids = torch.randint(0, 40, (1, 6))
    cache = tp.new_cache()
    with torch.no_grad():
        steps = [tp(ids[:, :3], cache=cache)] + [tp(ids[:, t:t + 1], cache=cache) for t in range(3, 6)]
        assert_close(torch.cat(steps, dim=1), dense(ids))
