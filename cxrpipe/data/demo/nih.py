"""A miniature NIH ChestX-ray14 tree for the demo's transfer path (``demo_nih`` stage, ``cxrpipe demo-nih``).

Written exactly as NIH ships it (Kaggle's folder scheme), into ``data/demo-nih``:
  ``Data_Entry_2017_v2020.csv``  Image Index, Finding Labels (``|``-joined, or ``No Finding``), Follow-up #,
      Patient ID, Patient Age, Patient Gender, View Position, OriginalImage[Width,Height],
      OriginalImagePixelSpacing[x,y] (the last two split into four columns by their commas, as in the real file)
  ``train_val_list.txt`` / ``test_list.txt``  the split by patient (``test_fraction`` of the patients)
  ``images_001/images/<patient>_<follow-up>.png``, ``images_002/images/...``  8-bit grey PNGs
  ``generation.json``  the config and counts (prepare reads its presence as "demo data")
  ``DEMO_CORRUPTIONS.json``  the planted faults: one truncated PNG, one list entry with no CSV row

Images are drawn by the MIMIC demo's radiograph code from the same finding sampler, so a label has the same
sign in both demos where they overlap. CheXpert finding -> NIH label: Atelectasis, Cardiomegaly,
Consolidation, Edema, Pneumonia, Pneumothorax as named; Pleural Effusion -> Effusion; Lung Opacity ->
Infiltration; Lung Lesion -> Nodule (< 3 cm) or Mass; Pleural Other -> Pleural_Thickening. A present finding,
certain or hedged, is a positive (NIH's NLP labels count hedged mentions). Emphysema, Fibrosis and Hernia
have no drawn sign: they never occur in the demo. Support devices, fractures and a wide mediastinum are drawn
but have no NIH label, as in the real set.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np
from PIL import Image

from cxrpipe import __version__
from cxrpipe.config import ConfigError, to_dict
from cxrpipe.data.demo import radiograph
from cxrpipe.data.demo.findings import StudyFindings, sample_findings

log = logging.getLogger(__name__)

ENTRY_CSV = "Data_Entry_2017_v2020.csv"
ENTRY_HEADER = (
    "Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age", "Patient Gender", "View Position",
    "OriginalImage[Width", "Height]", "OriginalImagePixelSpacing[x", "y]",
)
CHEXPERT_TO_NIH = {
    "Atelectasis": "Atelectasis", "Cardiomegaly": "Cardiomegaly", "Consolidation": "Consolidation", "Edema": "Edema",
    "Pleural Effusion": "Effusion", "Lung Opacity": "Infiltration", "Pleural Other": "Pleural_Thickening",
    "Pneumonia": "Pneumonia", "Pneumothorax": "Pneumothorax",
}
IMAGES_PER_FOLDER = 200  # images_001/images holds the first 200, images_002/images the next (real: 10,000)


@dataclasses.dataclass(frozen=True)
class DemoNIHConfig:
    """params.yaml section ``demo_nih``."""

    seed: int = 0  # every draw derives from it
    n_images: int = 300  # images (= studies); ~1.5 per patient
    image_size: int = 256  # written PNG side in px (square, as NIH's 1024 px)
    test_fraction: float = 0.2  # patients in test_list.txt; the rest in train_val_list.txt
    n_corrupt: int = 2  # planted faults: a truncated PNG, then a list entry without a CSV row (0 = none)

    def __post_init__(self) -> None:
        if self.n_images < 10 or self.image_size < 32 or not 0.0 < self.test_fraction < 1.0 or self.n_corrupt < 0:
            raise ConfigError("params 'demo_nih': need n_images >= 10, image_size >= 32, 0 < test_fraction < 1, n_corrupt >= 0")


def nih_labels(study: StudyFindings) -> list[str]:
    """The NIH finding names a study shows, alphabetical (the ``Finding Labels`` order)."""
    out = set()
    for f in study.findings:
        if f.label == "Lung Lesion":
            out.add("Mass" if f.size_cm >= 3.0 else "Nodule")
        elif f.label in CHEXPERT_TO_NIH:
            out.add(CHEXPERT_TO_NIH[f.label])
    return sorted(out)


def _plan(cfg: DemoNIHConfig) -> list[tuple[int, int]]:
    """(patient id, follow-up #) per image, patients numbered from 1 with ~1.5 images each."""
    rng = np.random.default_rng([cfg.seed, 10])
    out: list[tuple[int, int]] = []
    patient = 0
    while len(out) < cfg.n_images:
        patient += 1
        out += [(patient, k) for k in range(int(min(rng.geometric(1 / 1.5), 6)))]
    return out[: cfg.n_images]


def _png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(radiograph.to_uint8(img), mode="L").save(buf, format="PNG")
    return buf.getvalue()


def write_demo_nih(cfg: DemoNIHConfig, out_dir: str | Path) -> dict:
    """Write the miniature NIH tree into ``out_dir`` (replacing an earlier one); return the counts."""
    out_dir, t0 = Path(out_dir), time.perf_counter()
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / "generation.json").exists():
        raise FileExistsError(f"{out_dir} exists and is not a demo tree (no generation.json); not replacing it")
    tmp = out_dir.parent / f".{out_dir.name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    plan = _plan(cfg)
    patients = sorted({p for p, _ in plan})
    order = np.random.default_rng([cfg.seed, 11]).permutation(len(patients))
    test = {patients[i] for i in order[: max(1, int(round(cfg.test_fraction * len(patients))))]}
    rows, lists, anatomy = [], {"train_val_list.txt": [], "test_list.txt": []}, {}
    positives: dict[str, int] = {}
    for k, (patient, follow) in enumerate(plan):
        rng = np.random.default_rng([cfg.seed, 12, k])
        study = sample_findings(rng)
        if patient not in anatomy:
            anatomy = {patient: radiograph.sample_anatomy(np.random.default_rng([cfg.seed, 13, patient]))}
        pose = radiograph.sample_pose(rng, study.portable)
        img = radiograph.draw_frontal(anatomy[patient], pose, study, cfg.image_size, rng)  # [H, W] in [0, 1]
        canvas = np.full((cfg.image_size, cfg.image_size), float(radiograph.BACKGROUND), dtype=np.float32)
        w = img.shape[1]
        canvas[:, (cfg.image_size - w) // 2:(cfg.image_size - w) // 2 + w] = img  # NIH's images are square
        name = f"{patient:08d}_{follow:03d}.png"
        folder = tmp / f"images_{1 + k // IMAGES_PER_FOLDER:03d}" / "images"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(_png(canvas))
        labels = nih_labels(study)
        for lab in labels:
            positives[lab] = positives.get(lab, 0) + 1
        view = "AP" if study.portable else "PA"
        rows.append([name, "|".join(labels) or "No Finding", follow, patient, int(rng.integers(20, 90)),
                     "MF"[int(rng.integers(0, 2))], view, 2500, 2048, 0.143, 0.143])
        lists["test_list.txt" if patient in test else "train_val_list.txt"].append(name)
    faults = _plant_faults(cfg, tmp, rows, lists)
    with (tmp / ENTRY_CSV).open("w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(ENTRY_HEADER)
        w.writerows(rows)
    for name, names in lists.items():
        (tmp / name).write_text("".join(f"{n}\n" for n in names))
    counts = {"images": len(plan), "patients": len(patients), "test_patients": len(test),
              "test_images": len(lists["test_list.txt"]), "positives": dict(sorted(positives.items())),
              "no_finding": sum(r[1] == "No Finding" for r in rows), "corruptions": len(faults)}
    (tmp / "DEMO_CORRUPTIONS.json").write_text(json.dumps(faults, indent=2) + "\n")
    (tmp / "generation.json").write_text(json.dumps(
        {"generator": "cxrpipe.data.demo.nih", "version": __version__, "config": to_dict(cfg), "counts": counts,
         "note": "synthetic NIH ChestX-ray14-shaped demo data"}, indent=2, sort_keys=True) + "\n")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    log.info("demo NIH tree: %d images of %d patients in %.1f s -> %s", len(plan), len(patients),
             time.perf_counter() - t0, out_dir)
    return counts


def _plant_faults(cfg: DemoNIHConfig, tmp: Path, rows: list[list], lists: dict[str, list[str]]) -> list[dict]:
    """Fault 1: the last image's PNG truncated; fault 2: a name in train_val_list.txt with no CSV row."""
    faults = []
    if cfg.n_corrupt >= 1:
        name = rows[-1][0]
        path = next(tmp.glob(f"images_*/images/{name}"))
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
        patient, follow = (int(x) for x in name[:-4].split("_"))
        faults.append({"kind": "truncated_image", "dicom_id": name[:-4], "study_id": patient * 1000 + follow,
                       "path": str(path.relative_to(tmp))})  # ids as transfer_prepare's rejects name them
    if cfg.n_corrupt >= 2:
        ghost = f"{int(rows[-1][3]) + 1:08d}_000.png"
        lists["train_val_list.txt"].append(ghost)
        faults.append({"kind": "not_in_csv", "dicom_id": ghost, "study_id": None, "path": "train_val_list.txt"})
    return faults
