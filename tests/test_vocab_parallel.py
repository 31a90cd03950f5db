"""The vocab-parallel embedding, the tiny GPT's TP + SP plan and their refusals.

* pure checks (one process, no process group): masking, padding, the corpus and its loader,
  the refusals that need no group, the activation formula;
* on the session's real 4-engine gloo cluster: hypothesis draws token ids (shard boundaries
  included); the engines run ``tests/vocab_torchrun_worker.py``'s functions, shipped by
  reference, and the results are checked here against the dense ``nn.Embedding``;
* under ``torchrun --standalone --nproc_per_node=4`` (gloo): the same functions, the refusals
  (no collective before any of them) and the TP + SP loss curve against dense.
"""

from __future__ import annotations

import os
import site
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers.data import CORPUS_PATH, CharTokenizer, get_batch, load_corpus, padded_size
from helpers.models import GPTConfig
from helpers.models.plans import check_ids, check_tp_config
from helpers.tp import pad_embedding, vocab_mask

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"
WORKER = TESTS / "vocab_torchrun_worker.py"
V, D = 48, 8            # 12 rows per rank on 4 ranks


# ------------------------------------------------------------------------------ one process
def test_mask_marks_exactly_the_ids_outside_the_range():
    ids = torch.tensor([[0, 11, 12, 23, 24, 47]])
    local, mask = vocab_mask(ids, 12, 24)
    assert mask.tolist() == [[True, True, False, False, True, True]]
    assert local.tolist() == [[0, 0, 0, 11, 0, 0]]


def test_pad_embedding_keeps_the_rows_and_adds_zeros():
    emb = torch.nn.Embedding(35, 4)
    padded = pad_embedding(emb, 4)
    assert padded.weight.shape == (36, 4)
    assert torch.equal(padded.weight[:35], emb.weight) and not padded.weight[35].any()


def test_corpus_is_small_and_shipped():
    assert CORPUS_PATH.stat().st_size < 100_000
    text = load_corpus()
    tok = CharTokenizer(text, pad_to_multiple=8)
    assert len(tok.chars) == 35 and tok.vocab_size == 40 == padded_size(35, 8)
    assert tok.decode(tok.encode(text[:50])) == text[:50]
    with pytest.raises(ValueError, match="not in the vocabulary"):
        tok.encode("§")


def test_batches_are_the_same_wherever_they_are_drawn():
    ids = CharTokenizer(load_corpus()).encode(load_corpus())
    x1, y1 = get_batch(ids, 4, 16, step=3)
    torch.manual_seed(99)                       # the global RNG does not matter
    x2, y2 = get_batch(ids, 4, 16, step=3)
    assert torch.equal(x1, x2) and torch.equal(y1, y2) and torch.equal(x1[:, 1:], y1[:, :-1])


@pytest.mark.parametrize("cfg, p, match", [
    (GPTConfig(vocab_size=40, n_heads=4), 3, "n_heads=4 is not divisible by tp degree 3"),
    (GPTConfig(vocab_size=35), 4, "vocab_size=35 is not divisible by tp degree 4; .* pad vocab_size to 36"),
    (GPTConfig(vocab_size=40, d_model=40, n_heads=5), 2, "n_heads=5 is not divisible by tp degree 2"),
])
def test_model_refuses_a_split_it_cannot_make(cfg, p, match):
    with pytest.raises(ValueError, match=match):
        check_tp_config(cfg, p)


def test_ids_are_checked_with_the_numbers():
    with pytest.raises(ValueError, match=r"token id 40 is outside the vocabulary 0..39"):
        check_ids(torch.tensor([[1, 40]]), 40)
    with pytest.raises(ValueError, match=r"token id -2 is outside"):
        check_ids(torch.tensor([[-2, 3]]), 40)
    with pytest.raises(ValueError, match=r"sequence length T=10 is not divisible by tp degree 4.*T=8 or T=12"):
        check_ids(torch.zeros(2, 10, dtype=torch.long), 40, p=4, sequence_parallel=True)
    check_ids(torch.zeros(2, 10, dtype=torch.long), 40, p=4, sequence_parallel=False)   # TP alone: fine
    with pytest.raises(TypeError):
        check_ids(torch.zeros(2, 8), 40)


# ------------------------------------------------------------------------------ on the cluster
@pytest.fixture(scope="module")
def engines(cluster):
    cluster.apply(site.addsitedir, str(TESTS))      # the engines import the worker's functions
    import vocab_torchrun_worker as worker

    return cluster, worker


ids_strategy = st.integers(1, 3).flatmap(lambda b: st.integers(1, 6).flatmap(
    lambda t: st.lists(st.one_of(st.sampled_from([0, 11, 12, 23, 24, 35, 36, 47]), st.integers(0, V - 1)),
                       min_size=b * t, max_size=b * t).map(lambda xs: torch.tensor(xs).view(b, t))))


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ids=ids_strategy, seed=st.integers(0, 3))
def test_vocab_parallel_matches_dense_on_the_cluster(engines, ids, seed):
    cluster, worker = engines
    ref = worker.dense_forward_backward(ids, V, D, seed)
    mine = cluster.apply(worker.vocab_parallel_forward_backward, ids, V, D, seed)
    for r, res in enumerate(mine):
        assert (res["start"], res["stop"]) == (12 * r, 12 * (r + 1))
        torch.testing.assert_close(res["out"], ref["out"])           # the full embedding on every rank
    torch.testing.assert_close(torch.cat([res["dW"] for res in mine]), ref["dW"])   # the shards, in rank order
    dt = cluster.apply(worker.dtensor_forward_backward, ids, V, D, seed)
    for res in dt:
        torch.testing.assert_close(res["out"], ref["out"])
        torch.testing.assert_close(res["dW"], ref["dW"])


def test_refusals_on_the_cluster(engines):
    cluster, worker = engines
    messages = cluster.apply(worker.refusals)                       # raises if a case ran a collective
    assert all(m == messages[0] for m in messages)                  # every rank refused the same way
    m = messages[0]
    assert "vocab_size=17 is not divisible by tp degree 4" in m["vocab"] and "Pad the vocabulary to 20" in m["vocab"]
    assert "n_heads=5 is not divisible by tp degree 4" in m["heads"]
    assert "sequence length T=17 is not divisible by tp degree 4" in m["seq len"]
    assert "token id 32 is outside the vocabulary 0..31" in m["id too large"]
    assert "token id -1" in m["id negative"] and "token id 16" in m["id by hand"]


# ------------------------------------------------------------------------------ under torchrun
@pytest.mark.timeout(200)
def test_vocab_parallel_and_lm_under_torchrun():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4", str(WORKER)]
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"torchrun worker hung for 180 s\nstdout:\n{e.stdout}\nstderr:\n{e.stderr}")
    assert proc.returncode == 0, (f"worker exited with {proc.returncode}\nstdout:\n{proc.stdout}\n"
                                  f"stderr:\n{proc.stderr[-6000:]}")
    assert "all vocab/lm checks passed" in proc.stdout
    assert "max |TP+SP − dense|" in proc.stdout
    assert "clip_grad_norm_ on DTensors: same total norm as dense" in proc.stdout
    print("\n" + "\n".join(line for line in proc.stdout.splitlines()
                            if "loss curves" in line or "clip_grad_norm_" in line))
