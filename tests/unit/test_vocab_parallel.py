"""The vocab-parallel embedding, the tiny GPT's TP + SP plan and their refusals, in one process (no
process group): masking, padding, the corpus and its loader, the refusals that need no group, the
activation formula.

On the session's real 4-engine cluster: tests/cluster/test_vocab_parallel_cluster.py; under
torchrun: tests/torchrun/test_vocab_parallel_torchrun.py.
"""

from __future__ import annotations

import pytest
import torch

from helpers.data import CORPUS_PATH, CharTokenizer, get_batch, load_corpus, padded_size
from helpers.models import GPTConfig
from helpers.models.plans import check_ids, check_tp_config
from helpers.tp import pad_embedding, vocab_mask


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
