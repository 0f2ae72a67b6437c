"""What every dataset reader returns: image candidates, studies, rejects and counts (before decoding).

A reader (:mod:`cxrpipe.data.mimic`, :mod:`cxrpipe.data.iuxray`, :mod:`cxrpipe.data.nih`,
:mod:`cxrpipe.data.chexpert`, :mod:`cxrpipe.data.rsna`) turns a dataset's files into a :class:`SourceRead`;
:func:`cxrpipe.data.prepare.write_prepared` decodes the candidates and writes the prepared folder. Nothing a
reader drops is silent: each drop is a :class:`Reject` (a row of ``rejects.csv``).
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
from pathlib import Path
from typing import Iterator, Sequence

from cxrpipe.data.manifest import StudyRecord
from cxrpipe.io import UserError


UNKNOWN_VIEW = "UNKNOWN"  # a view the source does not record


class DatasetFormatError(UserError, RuntimeError):
    """A dataset's files are absent or not shaped as the dataset ships them (one line: what, where, expected)."""


def iter_csv(path: str | Path, required: Sequence[str], error: type[DatasetFormatError] = DatasetFormatError,
             param: str = "") -> Iterator[dict[str, str]]:
    """Rows of a gzipped or plain CSV as dicts; the header must hold ``required`` (else ``error``, naming
    ``param``, the params key the path came from, when given)."""
    path = Path(path)
    where = f"{param} = {path}" if param else str(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [c for c in required if c not in (reader.fieldnames or [])]
            if missing:
                raise error(f"{where}: missing column(s) {missing}; header is {reader.fieldnames}")
            yield from reader
    except (UnicodeDecodeError, csv.Error, EOFError, gzip.BadGzipFile) as e:  # a damaged or foreign file
        raise error(f"{where}: not a readable CSV table ({type(e).__name__}: {e})") from None


@dataclasses.dataclass(frozen=True)
class Reject:
    """One dropped (or downgraded) file or study; a row of ``rejects.csv``."""

    kind: str  # "image" | "study" | "labels"
    id: str  # dicom_id (image id) for images, study_id otherwise
    path: str  # the file concerned, relative to the root (or the reports / CSV source)
    reason: str  # stable code: missing_image, decode_failed, missing_report, no_label_row, ...
    detail: str  # what exactly, for a human
    action: str = "dropped"  # "dropped" | "unlabelled" (study kept with has_labels=False)


@dataclasses.dataclass(frozen=True)
class ImageCandidate:
    """An image row before decoding (``ImageRecord`` without its row in images.h5)."""

    dicom_id: str
    study_id: int
    subject_id: int
    split: str
    view: str
    path: str  # relative to the image root


@dataclasses.dataclass
class SourceRead:
    """A reader's result. ``counts`` must hold ``selected_images`` and ``studies_selected`` (what the lost
    fractions are measured against: every row the reader tried to use)."""

    images: list[ImageCandidate]  # sorted by (subject, study, dicom_id)
    studies: dict[int, StudyRecord]  # study_id -> study, for studies that still have candidate images
    rejects: list[Reject]
    counts: dict  # what was seen on the way
    image_root: Path | None = None  # where candidate paths point; None = the dataset root
    image_tar: Path | None = None  # a tarball holding the images (paths = member names): extracted first
    details: dict = dataclasses.field(default_factory=dict)  # reader-specific facts for prepare_report.json
    split_rule: str = ""  # how splits were assigned ("" = the source's own table, prepare's SPLIT_RULE)
