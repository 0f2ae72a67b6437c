"""The demo data generator: a miniature MIMIC-CXR-JPG tree with label-conditioned synthetic radiographs
and MIMIC-format reports that state what each image shows (``demo_data`` stage, ``cxrpipe demo-data``).

Modules: :mod:`.findings` (labels with prevalence, co-occurrence, laterality, severity),
:mod:`.radiograph` + :mod:`.signs` (numpy drawing), :mod:`.report` (MIMIC-format text), :mod:`.dicom`
(a few images as DICOM), :mod:`.tree` (CSVs, folders, reports zip, corruptions; :class:`DemoConfig`).
The MIMIC reader reads the result; nothing downstream has a demo-only path.
"""

from cxrpipe.data.demo.tree import CORRUPTION_KINDS, GENERATION_JSON, DemoConfig, plan_studies, write_demo_tree

__all__ = ["CORRUPTION_KINDS", "GENERATION_JSON", "DemoConfig", "plan_studies", "write_demo_tree"]
