"""Vocab-parallel embedding, Megatron's way (Shoeybi et al. 2019, Section 3; Megatron-LM's
``VocabParallelEmbedding``).

Rank r owns rows ``[r·V/p, (r+1)·V/p)`` of the (V, D) table. Every rank sees all token ids:

    ids (B, T) on every rank
      ├─ in my range?  yes → look up row id - start          no → masked: 0 for now
      ├─ zero the rows of masked ids                          (B, T, D): only my tokens are non-zero
      └─ g = reduce_from_tp_region: all-reduce (sum)          (B, T, D): each token found on exactly one rank

The backward of *g* is the identity, and the gradient of a masked position never reaches this
rank's table (its output row was multiplied by 0), so each rank's weight gradient is exactly its
block of the dense gradient.

A vocabulary that ``p`` does not divide is refused with the numbers; :func:`pad_embedding`
appends rows (never looked up by real ids) as Megatron does with ``make-vocab-size-divisible-by``.
Token ids outside the vocabulary are refused *before* the all-reduce: every rank sees the same
ids, so every rank refuses together and none is left waiting.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .checks import check_module, degrees_text, shard_range, tp_degree_and_rank
from .ops import reduce_from_tp_region

__all__ = ["VocabParallelEmbedding", "pad_embedding", "vocab_mask", "check_token_ids"]


def check_token_ids(ids, vocab_size: int) -> None:
    """Refuse ids that are not integers inside ``0..vocab_size-1`` (on every rank alike, see above)."""
    if not isinstance(ids, torch.Tensor) or ids.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"token ids must be an integer tensor, got {getattr(ids, 'dtype', type(ids).__name__)}")
    if ids.numel():
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= vocab_size:
            raise ValueError(f"token id {lo if lo < 0 else hi} is outside the vocabulary 0..{vocab_size - 1} "
                             f"(vocab_size={vocab_size}); check the tokenizer")


def vocab_mask(ids: torch.Tensor, start: int, stop: int):
    """(local ids, mask): ``mask`` is True where an id is NOT in ``[start, stop)``; those local
    ids are set to 0 so the lookup stays inside the shard."""
    mask = (ids < start) | (ids >= stop)
    return (ids - start).masked_fill(mask, 0), mask


def pad_embedding(dense: nn.Embedding, multiple: int) -> nn.Embedding:
    """A copy of ``dense`` with rows appended (zeros) up to a multiple of ``multiple``."""
    check_module(dense, nn.Embedding, "pad_embedding")
    rows = -dense.num_embeddings % multiple                           # zero rows appended: up to the next multiple
    return nn.Embedding.from_pretrained(F.pad(dense.weight.detach(), (0, 0, 0, rows)), freeze=False)


class VocabParallelEmbedding(nn.Module):
    """An ``nn.Embedding`` whose (V, D) table is split by rows (the vocabulary) over the group.

    weight: (V/p, D) on every rank, rows ``start..stop-1`` of the dense table.
    forward(ids (…)) → (…, D), the same full embedding on every rank.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, group=None, device=None, dtype=None):
        super().__init__()
        self.group = group
        self.tp_degree, self.tp_rank = tp_degree_and_rank(group)
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        if num_embeddings % self.tp_degree:
            padded = -(-num_embeddings // self.tp_degree) * self.tp_degree
            raise ValueError(
                f"vocab_size={num_embeddings} is not divisible by tp degree {self.tp_degree}: "
                f"{num_embeddings} rows cannot be split into {self.tp_degree} equal ranges. Pad the "
                f"vocabulary to {padded} (helpers.tp.pad_embedding(emb, {self.tp_degree})), as "
                f"Megatron does, or pick a degree in {degrees_text(num_embeddings)}")
        self.start, self.stop = shard_range(num_embeddings, self.tp_degree, self.tp_rank, "vocab_size")
        self.weight = nn.Parameter(torch.empty(self.stop - self.start, embedding_dim,   # (V/p, D)
                                               device=device, dtype=dtype))
        nn.init.normal_(self.weight)

    @classmethod
    def from_embedding(cls, dense: nn.Embedding, group=None) -> "VocabParallelEmbedding":
        """This rank's rows of ``dense.weight``, copied (dense and TP start from one table)."""
        check_module(dense, nn.Embedding, "from_embedding")
        layer = cls(*dense.weight.shape, group=group, device=dense.weight.device, dtype=dense.weight.dtype)  # (V, D)
        with torch.no_grad():
            layer.weight.copy_(dense.weight[layer.start:layer.stop])
        return layer

    def forward(self, ids):
        check_token_ids(ids, self.num_embeddings)                    # before the all-reduce
        if ids.device != self.weight.device:
            raise ValueError(f"ids are on {ids.device} but the table is on {self.weight.device}")
        local, mask = vocab_mask(ids, self.start, self.stop)          # (…,), (…,) bool
        out = F.embedding(local, self.weight)                          # (…, D): rows of my range
        out = out.masked_fill(mask.unsqueeze(-1), 0.0)                 # zero the ids I do not own
        return reduce_from_tp_region(out, self.group)                  # g: sum over the ranks

    def extra_repr(self) -> str:
        return (f"{self.num_embeddings}, {self.embedding_dim}, rows {self.start}..{self.stop - 1} "
                f"on tp rank {self.tp_rank} of {self.tp_degree}")
