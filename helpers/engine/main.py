"""Entry point of an engine process: ``python -m helpers.engine.main [ipengine args]``.

Same as ``python -m ipyparallel.engine``, but torch is imported first, while the
controller is still starting, so ``connect()`` does not wait for N cold imports.
"""

if __name__ == "__main__":
    import torch  # noqa: F401  (warm import, the point of this module)
    import torch.distributed  # noqa: F401
    from ipyparallel.engine.app import main

    main()
