"""Stage three: fine-tune on the 14 CheXpert labels (or a transfer dataset's own), evaluate with intervals,
compare multimodal vs mae.

* :mod:`cxrpipe.evaluate.metrics`   per-run metrics (scikit-learn) at image and study level, with
  bootstrap 95% intervals that resample test studies.
* :mod:`cxrpipe.evaluate.bootstrap` the resampling machinery (vectorised numpy) and the paired bootstrap of
  the delta mAUC between two models on the same test studies.
* :mod:`cxrpipe.evaluate.data`      labelled frontal images per split, label-fraction sampling by study.
* :mod:`cxrpipe.evaluate.finetune`  ``FinetuneConfig`` and ``run_finetune`` (protocols ``linear`` and
  ``finetune``).
* :mod:`cxrpipe.evaluate.compare`   ``CompareConfig`` and ``run_compare`` (comparison.json / .md, ROC PNGs).
* :mod:`cxrpipe.evaluate.references` the ``random`` reference: the pretraining encoder at its init, exported.
* :mod:`cxrpipe.evaluate.pixels`    the ``pixels`` reference: logistic regression on downsampled raw pixels.
* :mod:`cxrpipe.evaluate.summaries` compare's references and training-seed sections (paired deltas, spread).
* :mod:`cxrpipe.evaluate.plots`     ROC curves per label and fine-tuning curves (matplotlib, Agg).
* :mod:`cxrpipe.evaluate.label_efficiency`  stage three at several label fractions; plot + paired deltas.
* :mod:`cxrpipe.evaluate.transfer`  an encoder on an external dataset's prepared folder (its own labels) at
  each label fraction; :mod:`~cxrpipe.evaluate.transfer_report` / :mod:`~cxrpipe.evaluate.transfer_markdown`
  the paired comparison (transfer.json / transfer.md).
* :mod:`cxrpipe.evaluate.alignment` an exported encoder + its text side, scoring images against texts.
* :mod:`cxrpipe.evaluate.zeroshot`  zero-shot classification through the frozen LLM (CheXzero's protocol).
* :mod:`cxrpipe.evaluate.retrieval` image -> report and report -> image recall@k on test.
* :mod:`cxrpipe.evaluate.attention_maps` the pooling's attention over patches, drawn on test images.
"""
