"""Write a miniature CheXpert(-v1.0-small) layout for the reader and zero-shot tests.

Layout as Stanford ships it: ``<base>/<name>/train.csv`` and ``valid.csv`` (``Path`` =
``<name>/<train|valid>/patientNNNNN/studyM/viewK_<frontal|lateral>.jpg``, ``Sex``, ``Age``,
``Frontal/Lateral``, ``AP/PA``, then the 14 labels in CheXpert's CSV order, which is NOT
:data:`cxrpipe.labels.CHEXPERT_LABELS`' order) and the JPGs at ``<base>/<Path>``.
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import numpy as np
from PIL import Image

CHEX_HEADER = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", "No Finding", "Enlarged Cardiomediastinum",
               "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema", "Consolidation", "Pneumonia", "Atelectasis",
               "Pneumothorax", "Pleural Effusion", "Pleural Other", "Fracture", "Support Devices"]  # CheXpert's order
LABEL_COLUMNS = CHEX_HEADER[5:]


def write_png(path: Path, value: int = 100, size: tuple[int, int] = (20, 24)) -> None:
    """A flat grey image (the format follows the suffix: ``.jpg`` is a JPEG)."""
    write_image(path, np.full(size, value, dtype=np.uint8))


def write_image(path: Path, pixels: np.ndarray) -> None:
    """uint8 ``[H, W]`` -> ``path`` (format from the suffix; JPEG at quality 95)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, **({"quality": 95} if path.suffix.lower() in (".jpg", ".jpeg") else {}))


def write_csv(path: Path, header, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


@dataclasses.dataclass(frozen=True)
class CheXpertImage:
    """One CSV row and its image."""

    csv_name: str  # train.csv | valid.csv (= the test set)
    patient: int
    study: int
    pixels: np.ndarray  # uint8 [H, W]
    labels: dict[str, str]  # label name -> CSV value ("1.0", "0.0", "-1.0"); a label not named is blank
    frontal: bool = True
    ap_pa: str = "PA"  # blank for laterals, as in the CSVs
    view: int = 1  # viewK in the file name

    def path(self, name: str) -> str:
        folder = "valid" if self.csv_name == "valid.csv" else "train"
        kind = "frontal" if self.frontal else "lateral"
        return f"{name}/{folder}/patient{self.patient:05d}/study{self.study}/view{self.view}_{kind}.jpg"


def write_chexpert(base: Path, images: list[CheXpertImage], name: str = "CheXpert-v1.0-small") -> Path:
    """The CSVs and JPGs of ``images`` under ``base``; -> the root (``base / name``, the folder with the CSVs)."""
    root = base / name
    for csv_name in ("train.csv", "valid.csv"):
        rows = []
        for im in (i for i in images if i.csv_name == csv_name):
            write_image(base / im.path(name), im.pixels)
            rows.append([im.path(name), "Male", 60, "Frontal" if im.frontal else "Lateral", im.ap_pa,
                         *(im.labels.get(n, "") for n in LABEL_COLUMNS)])
        write_csv(root / csv_name, CHEX_HEADER, rows)
    return root


def chexpert_tree(base: Path, name: str = "CheXpert-v1.0-small", n_train: int = 20) -> Path:
    """train.csv patients 1..n_train, valid.csv patients 64541..64544; every third patient has two studies;
    each study a frontal (AP for odd patients, PA for even) and a lateral; labels cycle 1 / 0 / -1 / blank;
    flat images whose grey level follows the patient."""
    vals = ["1.0", "0.0", "-1.0", ""]
    images = []
    for csv_name, patients in (("train.csv", range(1, n_train + 1)), ("valid.csv", range(64541, 64545))):
        for p in patients:
            for study in (1, 2) if p % 3 == 0 else (1,):
                labels = {n: vals[(p + study + i) % 4] for i, n in enumerate(LABEL_COLUMNS)}
                pixels = np.full((20, 24), 5 * (p % 40), dtype=np.uint8)
                images += [CheXpertImage(csv_name, p, study, pixels, labels, True, "AP" if p % 2 else "PA", 1),
                           CheXpertImage(csv_name, p, study, pixels, labels, False, "", 2)]
    return write_chexpert(base, images, name)
