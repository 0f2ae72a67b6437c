"""Image-text alignment of an exported encoder and its text side (imports ``stats`` and ``probe.data``).

* :mod:`~cxrpipe.evaluate.alignment.scorer`    an exported encoder + its text side, scoring images against texts.
* :mod:`~cxrpipe.evaluate.alignment.zeroshot`  zero-shot classification through the frozen LLM (CheXzero's protocol).
* :mod:`~cxrpipe.evaluate.alignment.retrieval` image -> report and report -> image recall@k on test.
* :mod:`~cxrpipe.evaluate.alignment.attention_maps` the pooling's attention over patches, drawn on test images.
"""
