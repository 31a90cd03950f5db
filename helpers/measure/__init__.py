"""Rank-side instruments (torch): what a rank sends, how long its step takes, what it holds.
The formulas they are checked against live in :mod:`helpers.costmodel`."""
