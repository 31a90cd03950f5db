"""Helpers for the hands-on tensor-parallelism course.

The notebook kernel imports :func:`connect` from here; the engines import
:mod:`helpers.tp`, which needs nothing but torch (so it runs under torchrun too).
"""

__all__ = ["connect"]


def __getattr__(name):
    # Lazy: importing helpers.tp on an engine must not pull in ipyparallel.
    if name == "connect":
        from .cluster import connect

        return connect
    raise AttributeError(f"module 'helpers' has no attribute {name!r}")
