"""RSNA Pneumonia Detection Challenge reader: ``stage_2_train_labels.csv`` + ``stage_2_train_images/*.dcm``.

Layout, ``transfer_data.rsna_pneumonia.root``:
  ``stage_2_train_labels.csv``: ``patientId,x,y,width,height,Target`` (one row per box; Target 0/1; a negative
      patient has one row with empty box columns). Boxes are ignored: one binary label per patient.
  ``stage_2_train_images/<patientId>.dcm``: one frontal DICOM per patient (PA or AP in ``ViewPosition``).

Study = image = subject = ``patientId`` (the ids are UUIDs: study_id is a stable 48-bit integer derived
from the id, checked free of collisions). The challenge's test labels were never released, so the split is
a seeded one by patient (``split_fractions``, ``seed``), or the user's ``split_file`` (CSV ``patientId,split``
with train / validate / test). Label: ``Pneumonia`` = Target (the challenge's "Lung Opacity" class).
Rejects: a Target outside {0, 1}, rows of one patient that disagree, a patient missing from the split file,
a missing DICOM.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import logging
from pathlib import Path

from cxrpipe.data.images import dicom_view_position
from cxrpipe.data.manifest import SPLITS, StudyRecord
from cxrpipe.data.mimic import UNKNOWN_VIEW, iter_csv
from cxrpipe.data.records import DatasetFormatError, ImageCandidate, Reject, SourceRead
from cxrpipe.data.splits import check_fractions, seeded_split

log = logging.getLogger(__name__)

RSNA_LABELS = ("Pneumonia",)
LABELS_CSV = "stage_2_train_labels.csv"
IMAGES_DIR = "stage_2_train_images"
LAYOUT = (
    f"expected RSNA Pneumonia layout: <root>/{LABELS_CSV} (patientId,x,y,width,height,Target) and "
    f"<root>/{IMAGES_DIR}/<patientId>.dcm"
)


@dataclasses.dataclass(frozen=True)
class RSNAConfig:
    """params ``transfer_data.rsna_pneumonia``."""

    root: Path | None = None  # folder with stage_2_train_labels.csv and stage_2_train_images/
    split_file: Path | None = None  # CSV patientId,split (train/validate/test); null = seeded split by patient
    split_fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)  # train / validate / test, by patient
    seed: int = 0  # the seeded split


def study_id_of(patient_id: str) -> int:
    """A stable integer for a patientId (48 bits of its sha1)."""
    return int(hashlib.sha1(patient_id.encode()).hexdigest()[:12], 16)


def _targets(path: Path, rejects: list[Reject]) -> tuple[dict[str, float], int]:
    """{patientId: 0.0 | 1.0} over the rows; patients with a bad or conflicting Target go to ``rejects``."""
    seen: dict[str, set[str]] = collections.defaultdict(set)
    n_rows = 0
    for r in iter_csv(path, ("patientId", "Target")):
        n_rows += 1
        seen[r["patientId"].strip()].add(r["Target"].strip())
    out = {}
    for pid, values in sorted(seen.items()):
        if len(values) > 1:
            rejects.append(Reject("study", pid, LABELS_CSV, "conflicting_labels", f"Target values {sorted(values)} in rows of one patient"))
        elif values <= {"0", "1", "0.0", "1.0"}:
            out[pid] = float(next(iter(values)))
        else:
            rejects.append(Reject("study", pid, LABELS_CSV, "bad_label_value", f"Target {sorted(values)} is not 0 or 1"))
    return out, n_rows


def _split_table(cfg: RSNAConfig, patients: list[str]) -> tuple[dict[str, str], str]:
    if cfg.split_file is None:
        check_fractions(cfg.split_fractions, "transfer_data.rsna_pneumonia.split_fractions")
        rule = f"seeded split by patient: fractions {list(cfg.split_fractions)} (train, validate, test), seed {cfg.seed}"
        return seeded_split(patients, cfg.split_fractions, cfg.seed), rule
    path = Path(cfg.split_file)
    if not path.is_file():
        raise DatasetFormatError(f"transfer_data.rsna_pneumonia.split_file = {path}: no such file (CSV patientId,split)")
    table = {r["patientId"].strip(): r["split"].strip() for r in iter_csv(path, ("patientId", "split"))}
    return table, f"the split file {path.name} (patientId,split), as given"


def read_rsna(cfg: RSNAConfig) -> SourceRead:
    """Read an RSNA Pneumonia root (see the module doc)."""
    if cfg.root is None:
        raise DatasetFormatError(f"transfer_data.rsna_pneumonia.root is not set; {LAYOUT}")
    root = Path(cfg.root)
    if not (root / LABELS_CSV).is_file():
        raise DatasetFormatError(f"transfer_data.rsna_pneumonia.root = {root}: no {LABELS_CSV}; {LAYOUT}")
    rejects: list[Reject] = []
    targets, n_rows = _targets(root / LABELS_CSV, rejects)
    split_of, rule = _split_table(cfg, sorted(targets))
    images, studies, ids = [], {}, {}
    views: collections.Counter = collections.Counter()
    for pid, target in targets.items():
        split = split_of.get(pid)
        rel = f"{IMAGES_DIR}/{pid}.dcm"
        if split not in SPLITS:
            why = "not in the split file" if split is None else f"split {split!r} is not one of {list(SPLITS)}"
            rejects.append(Reject("study", pid, str(cfg.split_file), "no_split", why))
            continue
        if not (root / rel).is_file():
            rejects.append(Reject("image", pid, rel, "missing_image", f"no file {root / rel}"))
            continue
        sid = study_id_of(pid)
        if ids.setdefault(sid, pid) != pid:
            raise DatasetFormatError(f"patientIds {ids[sid]} and {pid} map to one study id; rename one")
        view = dicom_view_position(root / rel) or UNKNOWN_VIEW
        views[view] += 1
        images.append(ImageCandidate(pid, sid, sid, split, view, rel))
        studies[sid] = StudyRecord(sid, sid, split, "", {}, (target,), has_labels=True)
    images.sort(key=lambda c: c.study_id)
    n = len(targets) + sum(r.reason in ("conflicting_labels", "bad_label_value") for r in rejects)
    counts = {"csv_rows": n_rows, "patients": n, "views_seen": dict(sorted(views.items())),
              "selected_images": n, "studies_selected": n}
    log.info("RSNA Pneumonia: %d rows, %d patients, %d candidates, %d rejects", n_rows, n, len(images), len(rejects))
    return SourceRead(images, studies, rejects, counts, split_rule=rule,
                      details={"split_file": str(cfg.split_file) if cfg.split_file else None,
                               "split_fractions": list(cfg.split_fractions), "seed": cfg.seed})
