"""The vocab-parallel embedding on the session's real 4-engine gloo cluster: hypothesis draws token
ids (shard boundaries included); the engines run ``tests/torchrun/vocab_torchrun_worker.py``'s
functions (loaded on every engine by path, shipped by reference), and the results are checked
here against the dense ``nn.Embedding``; the refusals come before any collective.

In one process: tests/unit/test_vocab_parallel.py; under torchrun:
tests/torchrun/test_vocab_parallel_torchrun.py.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import REPO

from helpers.engine import namespace

WORKER = os.path.join(REPO, "tests", "torchrun", "vocab_torchrun_worker.py")
V, D = 48, 8            # 12 rows per rank on 4 ranks


@pytest.fixture(scope="module")
def engines(cluster):
    # loaded by path on the engines and here, so the worker's functions are shipped by reference
    cluster.apply(namespace.load_module, "vocab_torchrun_worker", WORKER)
    return cluster, sys.modules[namespace.load_module("vocab_torchrun_worker", WORKER)]


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
