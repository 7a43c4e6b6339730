"""The measurement harness: benchmarks, ablations and side-by-side runs that write ``results/``.

Apart from the template (``segopt``): each is run from the repository root as
``python -m experiments.<name>`` and builds every model and data set through segopt's own
configs (``segopt.commands.from_config``). Shared helpers are in :mod:`experiments.common`.
"""
