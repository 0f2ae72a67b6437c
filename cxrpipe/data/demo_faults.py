"""Which rejects of a demo tree are the faults the demo generator planted on purpose.

The demo tree (``generation.json`` at its root) carries ``DEMO_CORRUPTIONS.json``: the broken inputs it wrote
(zero-byte and truncated JPEGs, a metadata row without its image, a study without its report, an empty
report), so a demo run exercises the rejects path. Its studies without a label row are planted too
(``demo.unlabeled_fraction``). ``prepare`` marks such WARNING lines "expected: planted demo fault", so a
newcomer knows they are not a problem with their install; on real data nothing is marked.
Reads JSON only (no import of the generator).
"""

from __future__ import annotations

import json
from pathlib import Path

DEMO_MARKER = "generation.json"  # as cxrpipe.data.prepare.DEMO_MARKER and the generator write it
CORRUPTIONS_JSON = "DEMO_CORRUPTIONS.json"  # as cxrpipe.data.demo.tree.CORRUPTIONS_JSON
PLANTED_NOTE = "expected: planted demo fault"
# reasons a planted fault produces: its own, and the study it leaves without images
_PLANTED_LABEL_REASONS = {"no_label_row"}  # demo.unlabeled_fraction: deliberately unlabelled studies


class PlantedFaults:
    """The ids (dicom ids and study ids, as strings) of a demo tree's planted faults; empty off the demo."""

    def __init__(self, root: str | Path):
        root = Path(root)
        self.is_demo = (root / DEMO_MARKER).is_file()
        self.ids: set[str] = set()
        path = root / CORRUPTIONS_JSON
        if self.is_demo and path.is_file():
            for item in json.loads(path.read_text()):
                self.ids.update(str(item[k]) for k in ("dicom_id", "study_id") if item.get(k) is not None)

    def __contains__(self, reject) -> bool:
        """``reject`` (a :class:`cxrpipe.data.mimic.Reject`) comes from a planted fault."""
        if not self.is_demo:
            return False
        return reject.id in self.ids or reject.reason in _PLANTED_LABEL_REASONS

    def note(self, rejects) -> str:
        """Suffix for one WARNING line about ``rejects`` (one reason): all planted, some, or none."""
        n = sum(r in self for r in rejects)
        if n == 0:
            return ""
        return f" ({PLANTED_NOTE})" if n == len(rejects) else f" ({n} of {len(rejects)}: {PLANTED_NOTE}s)"
