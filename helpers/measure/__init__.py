"""Rank-side instruments (torch): what a rank sends (:mod:`.comm`), how long its step takes
(:mod:`.timer`), what it holds (:mod:`.memory`). The formulas they are checked against live in
:mod:`helpers.costmodel`.
"""
