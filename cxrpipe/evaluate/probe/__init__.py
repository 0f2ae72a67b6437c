"""Probes on an encoder's features (imports ``stats`` only).

* :mod:`~cxrpipe.evaluate.probe.data`      labelled frontal images per split, label-fraction sampling by study.
* :mod:`~cxrpipe.evaluate.probe.frozen`    the probes on frozen features (``fc``: FC head, ``linear``: BatchNorm +
  one linear layer), trained by steps with lr / weight decay / step chosen on validate.
* :mod:`~cxrpipe.evaluate.probe.finetune`  ``FinetuneConfig`` and ``run_finetune`` (protocols ``fc``, ``linear``
  and ``finetune``).
* :mod:`~cxrpipe.evaluate.probe.references` the ``random`` reference: the pretraining encoder at its init.
* :mod:`~cxrpipe.evaluate.probe.pixels`    the ``pixels`` reference: logistic regression on raw pixels.
* :mod:`~cxrpipe.evaluate.probe.label_efficiency`  stage three at several label fractions (the not-estimable
  rule, shared with transfer); plot + deltas.
"""
