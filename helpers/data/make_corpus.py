"""Regenerate corpus.txt: `python -m helpers.data.make_corpus` (deterministic, no download).

Simple English sentences about ranks, shards and collectives, drawn from a small grammar with
a fixed seed; about 30 KB, a few dozen distinct characters. Enough for a character-level model
to show a falling loss in 20 steps; not meant to be good prose.
"""

from __future__ import annotations

import random
from pathlib import Path

SUBJECTS = ["the rank", "every rank", "rank zero", "the engine", "each gpu", "the node",
            "the model", "the layer", "the shard", "the head", "the block", "the learner"]
VERBS = ["holds", "sends", "gathers", "reduces", "splits", "keeps", "checks", "computes",
         "scatters", "multiplies", "trains", "samples"]
OBJECTS = ["its shard of the weight", "a slice of the sequence", "the partial sums",
           "the full output", "one block of columns", "the logits of its vocabulary",
           "the gradient", "a copy of the input", "the loss", "the norm of the tokens",
           "the keys and the values", "four heads"]
ENDINGS = ["before the all-reduce", "after the all-gather", "with a reduce-scatter",
           "on every step", "in the forward pass", "in the backward pass", "without a copy",
           "across the node", "on its own device", "for the dense model", "at once", "again"]
JOINS = [", and ", ", then ", "; ", ", while ", ", so "]


def sentence(rng: random.Random) -> str:
    def clause():
        return f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} {rng.choice(ENDINGS)}"
    s = clause()
    if rng.random() < 0.4:
        s += rng.choice(JOINS) + clause()
    return s[0].upper() + s[1:] + rng.choice([".", ".", ".", "!", "?"])


def make(n_chars: int = 30_000, seed: int = 0) -> str:
    rng = random.Random(seed)
    lines, size = [], 0
    while size < n_chars:
        line = " ".join(sentence(rng) for _ in range(rng.randint(1, 3)))
        lines.append(line)
        size += len(line) + 1
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    out = Path(__file__).with_name("corpus.txt")
    out.write_text(make(), encoding="utf-8")
    print(f"wrote {out} ({out.stat().st_size} bytes)")
