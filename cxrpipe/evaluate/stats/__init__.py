"""Statistics shared by every evaluation (the bottom floor: imports nothing else from ``cxrpipe.evaluate``).

* :mod:`~cxrpipe.evaluate.stats.rules`     the rules every comparison follows (params ``stats``: the bootstrap
  unit, the label rule) and the sentences that state them in each report.
* :mod:`~cxrpipe.evaluate.stats.metrics`   per-run metrics (scikit-learn) at image and study level, with
  bootstrap 95% intervals.
* :mod:`~cxrpipe.evaluate.stats.bootstrap` the resampling machinery (vectorised numpy) and the paired
  bootstrap of the delta mAUC between two models on the same resampled test patients; the interval and the p
  from the same replicates.
* :mod:`~cxrpipe.evaluate.stats.summaries` compare's references and training-seed sections (paired deltas,
  spread) and the report formatters (intervals, p).
* :mod:`~cxrpipe.evaluate.stats.caveats`   what a comparison cannot say, written into each report.
* :mod:`~cxrpipe.evaluate.stats.plots`     ROC curves per label and fine-tuning curves (matplotlib, Agg).
"""
