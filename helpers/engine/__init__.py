"""Everything that runs *on* an engine; imports only torch and IPython (never ipyparallel's client).

The notebook side ships these functions by reference (``cluster.apply(pg.probe)``), never
as code in strings; a torchrun script can import them too.

* :mod:`.pg` -- probe, the process group, torchrun's names, environment and ``sys.argv``;
* :mod:`.watchdog` -- aborting a collective that SIGINT cannot stop;
* :mod:`.namespace` -- the ``%%px`` namespace: the learner's names, fetching values;
* :mod:`.main` -- the engine process's entry point.
"""
