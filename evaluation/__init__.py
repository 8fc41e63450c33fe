"""Evaluation helpers: synthetic data with known truth, imputation splits, integration scores.

Not part of the installed package (the product never needs them): the tests and benchmarks import
them from the repository root (pytest's ``pythonpath`` and ``benchmarks/bench_common.py`` put it on
``sys.path``).

* :mod:`.synthetic` — paired RNA + protein + ATAC cells with known types and batch effects, and
  the four presets built on them (:func:`~evaluation.synthetic.synthetic_task`).
* :mod:`.splits` — the pseudo-spatial imputation split and per-gene correlation.
* :mod:`.integration_metrics` — batch mixing and biology conservation scores of an embedding.
"""
