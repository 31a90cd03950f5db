"""helpers.tp.summa on the session's real 4-engine gloo cluster: SUMMA forward and backward
against dense on hypothesis-chosen shapes, engine code shipped by reference
(``cluster.apply(summa_case)``, tests/torchrun/summa_check.py loaded on every engine), compared in
this process the way notebook 04 does; the bytes the recorder (helpers.measure.comm) measured ==
the formula (helpers.costmodel.collectives).

The pure parts: tests/unit/test_summa.py; under torchrun: tests/torchrun/test_summa_torchrun.py.
"""

from __future__ import annotations

import os
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import REPO

from helpers.costmodel import collectives as cc
from helpers.engine import namespace
from helpers.reference import compare
from helpers.tp import summa

CHECK = os.path.join(REPO, "tests", "torchrun", "summa_check.py")
# loaded by path here and on the engines, so its functions are shipped by reference
summa_check = sys.modules[namespace.load_module("summa_check", CHECK)]
GRID = (2, 2)

HYPO = settings(max_examples=8, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def _compare_case(results, M, K, N, bias, seed):
    want = summa_check.dense_case(M, K, N, bias, seed)
    coords = [r["coords"] for r in results]
    assert coords == [(0, 0), (0, 1), (1, 0), (1, 1)], "ranks are not laid out row-major"
    for name in ("Y", "dX", "dW"):
        full = summa.assemble_blocks([r[name] for r in results], GRID)
        compare(name, [full], want[name], show=False)
    if bias:
        # b_j lives on both ranks of grid column j: (0, j) and (1, j) must agree with dense
        for r in results:
            j = r["coords"][1]
            compare("db_j", [r["db"]], want["db"][j * N // 2:(j + 1) * N // 2], show=False)


@pytest.mark.timeout(240)
@HYPO
@given(M=st.integers(1, 4), K=st.integers(1, 4), N=st.integers(1, 4), bias=st.booleans(),
       seed=st.integers(0, 1000))
def test_summa_matches_dense_on_cluster(cluster, M, K, N, bias, seed):
    M, K, N = 2 * M, 2 * K, 2 * N  # divisible by the grid side
    cluster.apply(namespace.load_module, "summa_check", CHECK)   # the engines import summa_check
    results = cluster.apply(summa_check.summa_case, M, K, N, bias, seed)
    _compare_case(results, M, K, N, bias, seed)
    formula = cc.bytes_summa(M, K, N, 4)
    for r in results:
        assert r["forward"]["sent"] == formula["sent"]
        assert r["forward"]["received"] == formula["received"]
        assert r["forward"]["ops"] == {"broadcast": 4}
        want_bwd = {"broadcast": 4, "reduce": 4, **({"all_reduce": 1} if bias else {})}
        assert r["backward"]["ops"] == want_bwd
