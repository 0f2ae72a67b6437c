"""The transfer evaluation on external labelled datasets (imports ``probe`` and ``stats``).

* :mod:`~cxrpipe.evaluate.transfer.run`      an encoder on an external dataset's prepared folder (its own
  labels) at each label fraction.
* :mod:`~cxrpipe.evaluate.transfer.report`   the paired comparison (transfer.json).
* :mod:`~cxrpipe.evaluate.transfer.markdown` its Markdown table (transfer.md).
"""
