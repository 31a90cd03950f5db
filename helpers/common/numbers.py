"""Small number helpers: the one divisor list and the one byte label. Standard library only."""

from __future__ import annotations

__all__ = ["divisors", "fmt_bytes"]


def divisors(n: int, upto: int | None = None) -> list[int]:
    """The divisors of ``n`` in increasing order (those ``<= upto`` when given).

    >>> divisors(12), divisors(12, upto=4)
    ([1, 2, 3, 4, 6, 12], [1, 2, 3, 4])
    """
    top = n if upto is None else min(n, upto)
    return [d for d in range(1, top + 1) if n % d == 0]


def fmt_bytes(n: float) -> str:
    """``1536 -> '1.5 KiB'``: a byte count for a label."""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" or n == int(n) else f"{n:.1f} {unit}"
        n /= 1024.0
