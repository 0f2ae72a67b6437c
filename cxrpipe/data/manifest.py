"""The prepared manifest: one row per image and one row per study, as two CSV files.

``data/prepared/images.csv``   row, dicom_id, study_id, subject_id, split, view, path
``data/prepared/studies.csv``  study_id, subject_id, split, has_labels, text, sections, <labels>

* ``row`` is the image's index in ``images.h5`` (see :mod:`cxrpipe.data.image_cache`).
* ``path`` is relative to ``data.root``.
* ``split`` is ``train`` / ``validate`` / ``test`` (MIMIC-CXR's official split names).
* ``text`` is the cleaned report (kept sections joined, terminology standardised), *without* the prompt:
  the prompt belongs to stage one (``embed.prompt``), so changing it re-runs ``embed`` only.
* ``sections`` is a JSON object ``{section name: cleaned text}`` of every section found.
* labels are raw values ``1.0`` / ``0.0`` / ``-1.0`` / blank (missing); ``has_labels`` is 0 for a study
  that has no row in the label file (kept for pretraining, left out of fine-tuning).
* the label columns are the ones after ``sections``, in the file's order: the 14 CheXpert labels for a
  pretraining source, a transfer dataset's own set (NIH ChestX-ray14, RSNA ...) otherwise.
  :func:`read_label_names` gives them; every reader indexes labels by those names.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path
from typing import Iterable

import numpy as np

from cxrpipe.labels import CHEXPERT_LABELS, parse_raw_label

IMAGES_CSV = "images.csv"
STUDIES_CSV = "studies.csv"
SPLITS = ("train", "validate", "test")


@dataclasses.dataclass(frozen=True)
class ImageRecord:
    row: int
    dicom_id: str
    study_id: int
    subject_id: int
    split: str
    view: str
    path: str


@dataclasses.dataclass(frozen=True)
class StudyRecord:
    study_id: int
    subject_id: int
    split: str
    text: str
    sections: dict[str, str]
    labels: tuple[float, ...]  # raw values in the label set's order (default CHEXPERT_LABELS), nan = blank
    has_labels: bool = True

    def label(self, name: str, names: tuple[str, ...] = CHEXPERT_LABELS) -> float:
        return self.labels[names.index(name)]


def _fmt_label(v: float) -> str:
    return "" if math.isnan(v) else f"{v:.1f}"


STUDY_FIELDS = ("study_id", "subject_id", "split", "has_labels", "text", "sections")  # then the labels


def write_manifest(
    out_dir: str | Path,
    images: Iterable[ImageRecord],
    studies: Iterable[StudyRecord],
    label_names: tuple[str, ...] = CHEXPERT_LABELS,
) -> None:
    """Write ``images.csv`` and ``studies.csv`` atomically (temp file + rename); label columns ``label_names``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    img_fields = [f.name for f in dataclasses.fields(ImageRecord)]
    _write_csv(out_dir / IMAGES_CSV, img_fields, (dataclasses.asdict(r) for r in images))
    st_fields = [*STUDY_FIELDS, *label_names]

    def st_rows():
        for s in studies:
            row = {
                "study_id": s.study_id,
                "subject_id": s.subject_id,
                "split": s.split,
                "has_labels": int(s.has_labels),
                "text": s.text,
                "sections": json.dumps(s.sections, ensure_ascii=False),
            }
            if len(s.labels) != len(label_names):
                raise ValueError(f"study {s.study_id}: {len(s.labels)} labels for {len(label_names)} label names")
            row.update({name: _fmt_label(v) for name, v in zip(label_names, s.labels)})
            yield row

    _write_csv(out_dir / STUDIES_CSV, st_fields, st_rows())


def _write_csv(path: Path, fields: list[str], rows: Iterable[dict]) -> None:
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in rows:
            w.writerow(r)
    tmp.replace(path)


def read_images(prepared: str | Path) -> list[ImageRecord]:
    """Image rows of ``images.csv`` (in ``row`` order)."""
    with (Path(prepared) / IMAGES_CSV).open(newline="") as f:
        out = [
            ImageRecord(
                row=int(r["row"]),
                dicom_id=r["dicom_id"],
                study_id=int(r["study_id"]),
                subject_id=int(r["subject_id"]),
                split=r["split"],
                view=r["view"],
                path=r["path"],
            )
            for r in csv.DictReader(f)
        ]
    return sorted(out, key=lambda r: r.row)


def read_label_names(prepared: str | Path) -> tuple[str, ...]:
    """The label columns of ``studies.csv`` (those after the fixed fields), in the file's order."""
    with (Path(prepared) / STUDIES_CSV).open(newline="") as f:
        header = next(csv.reader(f))
    if tuple(header[: len(STUDY_FIELDS)]) != STUDY_FIELDS:
        raise ValueError(f"{Path(prepared) / STUDIES_CSV}: columns {header[:len(STUDY_FIELDS)]}, expected {list(STUDY_FIELDS)}")
    return tuple(header[len(STUDY_FIELDS):])


def read_studies(prepared: str | Path) -> list[StudyRecord]:
    """Study rows of ``studies.csv``; labels in :func:`read_label_names` order."""
    names = read_label_names(prepared)
    with (Path(prepared) / STUDIES_CSV).open(newline="") as f:
        return [
            StudyRecord(
                study_id=int(r["study_id"]),
                subject_id=int(r["subject_id"]),
                split=r["split"],
                text=r["text"],
                sections=json.loads(r["sections"]),
                labels=tuple(parse_raw_label(r[name]) for name in names),
                has_labels=bool(int(r["has_labels"])),
            )
            for r in csv.DictReader(f)
        ]


def label_matrix(studies: Iterable[StudyRecord], n_labels: int = len(CHEXPERT_LABELS)) -> np.ndarray:
    """Raw labels ``[n_studies, n_labels]`` float32 (nan = blank)."""
    return np.array([s.labels for s in studies], dtype=np.float32).reshape(-1, n_labels)
