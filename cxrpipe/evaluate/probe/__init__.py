"""Probes on an encoder's features (imports ``stats`` only).

* :mod:`~cxrpipe.evaluate.probe.data`      labelled frontal images per split, label-fraction sampling by study.
* :mod:`~cxrpipe.evaluate.probe.finetune`  ``FinetuneConfig`` and ``run_finetune`` (protocols ``linear`` and
  ``finetune``).
* :mod:`~cxrpipe.evaluate.probe.references` the ``random`` reference: the pretraining encoder at its init.
* :mod:`~cxrpipe.evaluate.probe.pixels`    the ``pixels`` reference: logistic regression on raw pixels.
* :mod:`~cxrpipe.evaluate.probe.label_efficiency`  stage three at several label fractions; plot + deltas.
"""
