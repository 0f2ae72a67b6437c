"""Stage three: fine-tune on the 14 CheXpert labels (or a transfer dataset's own), evaluate with intervals,
compare multimodal vs mae.

Grouped by what each part measures, in three floors; imports only run downwards:

* :mod:`cxrpipe.evaluate.stats` (bottom): per-run metrics, the bootstrap, the paired summaries, caveats,
  plots.
* :mod:`cxrpipe.evaluate.probe` (on stats): probes on an encoder's features (fc / linear / LP-FT), the
  labelled data they read, the ``random`` and ``pixels`` references, label efficiency.
* :mod:`cxrpipe.evaluate.alignment` and :mod:`cxrpipe.evaluate.transfer` (top): image-text scoring
  (zero-shot, retrieval, attention maps) and the transfer evaluation on external datasets.
* :mod:`cxrpipe.evaluate.compare` (top): ``CompareConfig`` and ``run_compare`` (comparison.json / .md, ROC
  PNGs).
"""
