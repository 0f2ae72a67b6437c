"""NIH ChestX-ray14 reader: ``Data_Entry_2017(_v2020).csv`` + the official list files + the PNG folders.

Layout (as NIH's Box folder or Kaggle's ``data/`` ships it), under ``transfer_data.nih_cxr14.root``:
  ``Data_Entry_2017_v2020.csv`` (or ``Data_Entry_2017.csv``): ``Image Index``, ``Finding Labels`` (names
      joined by ``|``, or ``No Finding``), ``Follow-up #``, ``Patient ID``, ``View Position`` (PA / AP), ...
  ``train_val_list.txt``, ``test_list.txt``: one ``Image Index`` per line (the official split, by patient)
  the PNGs anywhere below the root, found by name: ``images/`` (the tarballs extracted) or
      ``images_001/images/`` ... ``images_012/images/`` (Kaggle).

One image = one study (the unit scored and bootstrapped); subject = ``Patient ID``. Split: ``test_list.txt``
is test; ``validate`` is a seeded ``validate_fraction`` of the train_val PATIENTS (:func:`carve_validate`),
the rest train. Labels: the 14 findings, 1.0 / 0.0 on every image (``No Finding`` = all 0.0; it is not a
15th label: the literature's NIH mAUC is over the 14). Rejects (each listed): an unknown label name,
``No Finding`` beside a finding, an image in neither list or in both, a list entry missing from the CSV,
a missing PNG, a malformed ``Image Index`` / ``Patient ID``.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import re
from pathlib import Path

from cxrpipe.data.manifest import StudyRecord
from cxrpipe.data.records import UNKNOWN_VIEW, DatasetFormatError, ImageCandidate, Reject, SourceRead, iter_csv
from cxrpipe.data.splits import carve_validate, seeded_split

log = logging.getLogger(__name__)

NIH_LABELS: tuple[str, ...] = (  # alphabetical, spelled as in Finding Labels
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion", "Emphysema", "Fibrosis", "Hernia",
    "Infiltration", "Mass", "Nodule", "Pleural_Thickening", "Pneumonia", "Pneumothorax",
)
NO_FINDING = "No Finding"
ENTRY_CSVS = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv")
ENTRY_COLUMNS = ("Image Index", "Finding Labels", "Follow-up #", "Patient ID", "View Position")
TRAIN_VAL_LIST, TEST_LIST = "train_val_list.txt", "test_list.txt"
LAYOUT = (
    "expected NIH ChestX-ray14 layout: <root>/Data_Entry_2017_v2020.csv (or Data_Entry_2017.csv), "
    "<root>/train_val_list.txt, <root>/test_list.txt and the PNGs below <root> (images/ or images_001/images/ ...)"
)
SPLIT_RULE = (
    "NIH's official split: test_list.txt = test; validate = a seeded validate_fraction of the train_val_list.txt "
    "patients (by Patient ID), the rest train"
)
RANDOM_SPLIT_RULE = (
    "random split by patient (REFERS / MRM / BenchX): a seeded split_fractions (train, validate, test) of the "
    "Patient IDs; the official lists are only checked, not used"
)
SPLIT_LABELS = {"official": "official lists", "random": "random 70/10/20 by patient"}  # shown in every table
_INDEX = re.compile(r"^(\d+)_(\d+)\.png$")


@dataclasses.dataclass(frozen=True)
class NIHConfig:
    """params ``transfer_data.nih_cxr14``."""

    root: Path | None = None  # folder with Data_Entry_2017*.csv, the two list files and the PNG folders
    validate_fraction: float = 0.1  # share of train_val PATIENTS carved out as validate (seeded)
    seed: int = 0  # the validate carve
    views: tuple[str, ...] = ("PA", "AP")  # View Position values kept; [] keeps all
    split: str = "official"  # official (test_list.txt; KAD, G2D, medical_mae) | random (by patient; REFERS, MRM, BenchX)
    split_fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)  # split random: train, validate, test patients

    def __post_init__(self) -> None:
        from cxrpipe.config import ConfigError
        from cxrpipe.data.splits import check_fractions

        if self.split not in SPLIT_LABELS:
            raise ConfigError(f"params 'transfer_data.nih_cxr14.split': {self.split!r}; use one of {list(SPLIT_LABELS)}")
        check_fractions(self.split_fractions, "params 'transfer_data.nih_cxr14.split_fractions'")


def find_images(root: Path, suffixes: tuple[str, ...]) -> dict[str, str]:
    """``{file name: path relative to root}`` of every file below ``root`` with one of ``suffixes``
    (the first found, in sorted order, when a name occurs twice)."""
    out: dict[str, str] = {}
    for p in sorted(root.rglob("*")):
        if p.suffix.lower() in suffixes and p.is_file():
            out.setdefault(p.name, str(p.relative_to(root)))
    return out


def _read_list(path: Path) -> list[str]:
    if not path.is_file():
        raise DatasetFormatError(f"{path}: no such file; {LAYOUT}")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def _entry_csv(root: Path) -> Path:
    if not root.is_dir():
        raise DatasetFormatError(f"transfer_data.nih_cxr14.root = {root}: no such folder; {LAYOUT}")
    for name in ENTRY_CSVS:
        if (root / name).is_file():
            return root / name
    raise DatasetFormatError(f"{root}: neither {' nor '.join(ENTRY_CSVS)} found; {LAYOUT}")


def parse_findings(text: str) -> tuple[tuple[float, ...] | None, str]:
    """``Finding Labels`` -> (14 values 1.0/0.0 in NIH_LABELS order, "") or (None, why it is rejected)."""
    names = [t.strip() for t in text.split("|") if t.strip()]
    unknown = [n for n in names if n not in NIH_LABELS and n != NO_FINDING]
    if unknown or not names:
        return None, f"unknown label name(s) {unknown} in {text!r}; known: {list(NIH_LABELS)} and {NO_FINDING!r}"
    if NO_FINDING in names and len(names) > 1:
        return None, f"{NO_FINDING!r} beside findings in {text!r}"
    return tuple(1.0 if n in names else 0.0 for n in NIH_LABELS), ""


def read_nih(cfg: NIHConfig) -> SourceRead:
    """Read an NIH ChestX-ray14 root (see the module doc)."""
    if cfg.root is None:
        raise DatasetFormatError(f"transfer_data.nih_cxr14.root is not set; {LAYOUT}")
    root = Path(cfg.root)
    entry = _entry_csv(root)
    test, train_val = set(_read_list(root / TEST_LIST)), set(_read_list(root / TRAIN_VAL_LIST))
    files = find_images(root, (".png",))
    wanted = {v.upper() for v in cfg.views}
    rejects: list[Reject] = []
    counts: dict = {"csv_rows": 0, "duplicate_rows": 0}
    views_seen: collections.Counter = collections.Counter()
    rows: list[tuple[str, int, int, str, str, tuple[float, ...]]] = []  # name, study, subject, view, list, labels
    seen: set[str] = set()
    n_selected = 0
    for r in iter_csv(entry, ENTRY_COLUMNS):
        counts["csv_rows"] += 1
        name = r["Image Index"].strip()
        if name in seen:
            counts["duplicate_rows"] += 1
            continue
        seen.add(name)
        view = (r["View Position"] or "").strip().upper() or UNKNOWN_VIEW
        views_seen[view] += 1
        if wanted and view not in wanted:
            continue  # a selection, not a loss
        n_selected += 1
        m = _INDEX.match(name)
        if m is None or not r["Patient ID"].strip().isdigit():
            rejects.append(Reject("image", name, entry.name, "bad_row", f"Image Index {name!r} / Patient ID {r['Patient ID']!r} not NIH's form (00000001_000.png, integer)"))
            continue
        in_test, in_tv = name in test, name in train_val
        if in_test == in_tv:
            why = "in both train_val_list.txt and test_list.txt" if in_test else "in neither train_val_list.txt nor test_list.txt"
            rejects.append(Reject("image", name, entry.name, "no_split", why))
            continue
        labels, why = parse_findings(r["Finding Labels"])
        if labels is None:
            rejects.append(Reject("study", name, entry.name, "unknown_label", why))
            continue
        if name not in files:
            rejects.append(Reject("image", name, name, "missing_image", f"no file {name} below {root}"))
            continue
        study = int(m.group(1)) * 1000 + int(m.group(2))
        rows.append((name, study, int(r["Patient ID"]), view, "test" if in_test else "train_val", labels))
    for lst, names in ((TEST_LIST, test), (TRAIN_VAL_LIST, train_val)):
        for name in sorted(names - seen):
            n_selected += 1
            rejects.append(Reject("image", name, lst, "not_in_csv", f"listed in {lst} but has no row in {entry.name}"))
    validate = carve_validate({r[2] for r in rows if r[4] == "train_val"}, cfg.validate_fraction, cfg.seed)
    by_patient = seeded_split({r[2] for r in rows}, cfg.split_fractions, cfg.seed) if cfg.split == "random" else {}
    images, studies = [], {}
    for name, study, subject, view, lst, labels in sorted(rows, key=lambda r: (r[2], r[1])):
        split = by_patient.get(subject) or ("test" if lst == "test" else "validate" if subject in validate else "train")
        images.append(ImageCandidate(Path(name).stem, study, subject, split, view, files[name]))
        studies[study] = StudyRecord(study, subject, split, "", {}, labels, has_labels=True)
    counts.update(views_seen=dict(sorted(views_seen.items())), selected_images=n_selected, studies_selected=n_selected,
                  list_entries={TRAIN_VAL_LIST: len(train_val), TEST_LIST: len(test)}, entry_csv=entry.name)
    log.info("NIH ChestX-ray14: %d CSV rows, %d selected, %d candidates, %d rejects", counts["csv_rows"], n_selected,
             len(images), len(rejects))
    return SourceRead(images, studies, rejects, counts, split_rule=SPLIT_RULE if cfg.split == "official" else RANDOM_SPLIT_RULE,
                      details={"validate_fraction": cfg.validate_fraction, "seed": cfg.seed, "views": list(cfg.views),
                               "split": cfg.split, "split_label": SPLIT_LABELS[cfg.split],
                               "split_fractions": list(cfg.split_fractions)})


