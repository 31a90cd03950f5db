"""Helpers for the hands-on tensor-parallelism course.

The notebook kernel imports :func:`connect` from here; the engines import
:mod:`helpers.tp` and :mod:`helpers.engine`, which need nothing but torch (and IPython),
so they run under torchrun too.  Map of the package: helpers/README.md.
"""

__all__ = ["connect"]


def __getattr__(name):
    # Lazy: importing helpers.tp on an engine must not pull in ipyparallel.
    if name == "connect":
        from .cluster.session import connect

        return connect
    raise AttributeError(f"module 'helpers' has no attribute {name!r}")
