"""Everything that runs *on* an engine or a torchrun rank; imports only torch and IPython (never
ipyparallel's client).

The notebook side ships these functions by reference (``cluster.apply(pg.probe)``), never
as code in strings; a torchrun script can import them too.  The modules: helpers/README.md.
"""
