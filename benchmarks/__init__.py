"""purer's timing benchmarks, run as one suite: ``python -m benchmarks NAME [options]``.

``python -m benchmarks`` lists them. Each benchmark is a module of this
package with a ``main(argv)`` function (its docstring's first line is what
the list shows) and a ``SMOKE`` list: the arguments of its smallest run,
which ``tests/core/test_benchmarks.py`` runs so that no benchmark rots.
They share one option parser (:mod:`benchmarks.options`: the run
configuration of ``purer run`` with ``--preset``/``--config``/``--set``,
timing and output options) and one timing module
(:mod:`benchmarks.timing`: medians of repeated runs; two variants
alternated side by side with the median of their per-pair ratios). Every
result is one JSON line on stdout, and appended to ``--json FILE`` when
given.

Measurements go to ``docs/``, never into code. Experiments that train and
score models (reproducing the paper's table, choosing ICFIL's knobs) live in
``experiments/``.
"""
