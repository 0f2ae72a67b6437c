"""CheXpert reader (v1.0 and CheXpert-v1.0-small): ``train.csv`` / ``valid.csv`` + the image tree.

Layout, ``transfer_data.chexpert.root`` = the folder that holds the CSVs (e.g. ``.../CheXpert-v1.0-small``):
  ``train.csv``, ``valid.csv``: ``Path`` (``CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg``),
      ``Sex``, ``Age``, ``Frontal/Lateral``, ``AP/PA``, then the 14 labels (1.0 / 0.0 / -1.0 / blank)
  the JPGs at ``<root's parent>/<Path>`` (as extracted), or ``<root>/<Path without its first folder>``.

Study = ``patientNNNNN/studyM`` (study_id = patient * 1000 + M); subject = the patient. Frontal images only
(``Frontal/Lateral`` = Frontal; laterals are a selection, counted in ``views_seen``); the view is ``AP/PA``
(blank = UNKNOWN). Split, as the literature does: ``valid.csv`` (200 studies, 234 images, labelled by radiologists) is the
test set; validate = a seeded ``validate_fraction`` of train.csv's PATIENTS; the rest train. Labels raw, in
:data:`CHEXPERT_LABELS` order; the uncertainty policy is stage three's. Rejects: a label value outside
{1, 0, -1, blank}, a Path not of CheXpert's form, a missing image.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import re
from pathlib import Path

from cxrpipe.data.manifest import StudyRecord
from cxrpipe.data.records import UNKNOWN_VIEW, DatasetFormatError, ImageCandidate, Reject, SourceRead, iter_csv
from cxrpipe.data.splits import carve_validate
from cxrpipe.labels import CHEXPERT_LABELS, parse_label_row

log = logging.getLogger(__name__)

CSV_COLUMNS = ("Path", "Frontal/Lateral", "AP/PA", *CHEXPERT_LABELS)
LAYOUT = (
    "expected CheXpert layout: <root>/train.csv and <root>/valid.csv (columns Path, Frontal/Lateral, AP/PA and "
    "the 14 labels), images at <root's parent>/<Path> (e.g. CheXpert-v1.0-small/train/patient00001/study1/"
    "view1_frontal.jpg) or <root>/<Path without its first folder>"
)
SPLIT_RULE = (
    "CheXpert as the literature uses it: valid.csv = test; validate = a seeded validate_fraction of the train.csv "
    "patients, the rest train; frontal images only"
)
_PATH = re.compile(r"patient(\d+)/study(\d+)/([^/]+)\.(?:jpg|jpeg|png)$", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class CheXpertConfig:
    """params ``transfer_data.chexpert``."""

    root: Path | None = None  # folder with train.csv and valid.csv (CheXpert-v1.0 or CheXpert-v1.0-small)
    validate_fraction: float = 0.1  # share of train.csv PATIENTS carved out as validate (seeded)
    seed: int = 0  # the validate carve


def image_base(root: Path, paths: list[str]) -> tuple[Path, bool]:
    """(folder the CSV paths resolve against, whether their first folder is stripped), from the first path
    found on disk: the root's parent when ``<parent>/<Path>`` exists, else the root itself with the first
    folder of ``Path`` dropped. None found: the parent (every image is then reported missing, full path)."""
    for path in paths:
        if (root.parent / path).is_file():
            return root.parent, False
        if (root / path.split("/", 1)[-1]).is_file():
            return root, True
    return root.parent, False


def read_chexpert(cfg: CheXpertConfig) -> SourceRead:
    """Read a CheXpert root (see the module doc)."""
    if cfg.root is None:
        raise DatasetFormatError(f"transfer_data.chexpert.root is not set; {LAYOUT}")
    root = Path(cfg.root)
    for name in ("train.csv", "valid.csv"):
        if not (root / name).is_file():
            raise DatasetFormatError(f"transfer_data.chexpert.root = {root}: no {name}; {LAYOUT}")
    rejects: list[Reject] = []
    counts: dict = {"csv_rows": 0}
    views_seen: collections.Counter = collections.Counter()
    rows = []  # (dicom_id, study, subject, view, rel path, csv, labels)
    n_selected = 0
    selected_studies: set[int] = set()
    for csv_name in ("train.csv", "valid.csv"):
        for r in iter_csv(root / csv_name, CSV_COLUMNS):
            counts["csv_rows"] += 1
            path = r["Path"].strip()
            frontal = r["Frontal/Lateral"].strip().lower() == "frontal"
            views_seen["FRONTAL" if frontal else "LATERAL"] += 1
            if not frontal:
                continue
            n_selected += 1
            m = _PATH.search(path)
            if m is None:
                rejects.append(Reject("image", path, csv_name, "bad_row", f"Path {path!r} is not patientN/studyM/<view>.jpg"))
                continue
            study = int(m.group(1)) * 1000 + int(m.group(2))
            selected_studies.add(study)
            values, bad = parse_label_row(r, CHEXPERT_LABELS)
            if bad:
                rejects.append(Reject("study", str(study), csv_name, "bad_label_value", "label value(s) outside {1, 0, -1, blank}: " + ", ".join(bad)))
                continue
            dicom_id = f"patient{m.group(1)}_study{m.group(2)}_{m.group(3)}"
            view = r["AP/PA"].strip().upper() or UNKNOWN_VIEW
            rows.append((dicom_id, study, int(m.group(1)), view, path, csv_name, values))
    base, strip = image_base(root, [r[4] for r in rows])
    found = []
    for row in rows:
        rel = row[4].split("/", 1)[-1] if strip else row[4]
        if (base / rel).is_file():
            found.append((*row[:4], rel, *row[5:]))
        else:
            rejects.append(Reject("image", row[0], rel, "missing_image", f"no file {base / rel}"))
    rows = found
    validate = carve_validate({r[2] for r in rows if r[5] == "train.csv"}, cfg.validate_fraction, cfg.seed)
    images, studies = [], {}
    dropped = {int(r.id) for r in rejects if r.kind == "study"}
    for dicom_id, study, subject, view, rel, csv_name, labels in sorted(rows, key=lambda r: (r[2], r[1], r[0])):
        if study in dropped:  # a study with a bad label row loses all its images
            continue
        split = "test" if csv_name == "valid.csv" else "validate" if subject in validate else "train"
        images.append(ImageCandidate(dicom_id, study, subject, split, view, rel))
        studies.setdefault(study, StudyRecord(study, subject, split, "", {}, labels, has_labels=True))
    counts.update(views_seen=dict(sorted(views_seen.items())), selected_images=n_selected,
                  studies_selected=len(selected_studies))
    log.info("CheXpert: %d CSV rows, %d frontal, %d candidates in %d studies, %d rejects", counts["csv_rows"],
             n_selected, len(images), len(studies), len(rejects))
    return SourceRead(images, studies, rejects, counts, image_root=base, split_rule=SPLIT_RULE,
                      details={"validate_fraction": cfg.validate_fraction, "seed": cfg.seed, "image_root": str(base)})
