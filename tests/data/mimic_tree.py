"""Write a tiny MIMIC-CXR-JPG-shaped tree for the reader / prepare tests, with a switch per kind of bad input.

Layout as PhysioNet ships it: ``mimic-cxr-2.0.0-{metadata,split,chexpert,negbio}.csv(.gz)``,
``files/p1X/p1XXXXXXX/sXXXXXXXX/<dicom_id>.jpg`` and ``mimic-cxr-reports.zip`` (or a ``reports/`` folder).
Study ``k`` (0-based) is subject ``10000000 + 7k`` (so folders p10 and p11 both occur), study ``50000000 + k``.
Every good study has one frontal image (PA or AP), every other one a LATERAL too; ``n_dicom`` studies keep
their frontal as ``.dcm`` in the JPG tree (MONOCHROME1 12-bit with a window, MONOCHROME2 16-bit with a
rescale). Each bad-input switch adds one extra study carrying that defect; :class:`Tree` says which.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import io
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from cxrpipe.labels import CHEXPERT_LABELS

METADATA_COLUMNS = [
    "dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition", "Rows", "Columns",
    "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning", "ViewCodeSequence_CodeMeaning",
    "PatientOrientationCodeSequence_CodeMeaning",
]
BAD_KINDS = (
    "zero_byte", "truncated", "bad_dicom", "missing_image", "missing_report", "empty_report", "no_label_row",
    "bad_label", "lateral_only",
)

REPORT = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___ year old with cough, study {k}

 COMPARISON:  ___

 FINDINGS:

 Study {k} findings.  The lungs are clear.  No pleural effusion.
 Heart size is normal.

 IMPRESSION:

 No acute cardiopulmonary process in study {k}.
"""


@dataclasses.dataclass
class Tree:
    root: Path
    reports: Path
    studies: list[int]  # every study id written (good and bad)
    frontal: dict[int, list[str]]  # study -> frontal dicom_ids
    bad: dict[str, str]  # kind -> the dicom_id (image defects) or study id (study defects) carrying it
    dicom_ids: list[str]  # frontal images stored as .dcm


def dicom_id(k: int, j: int) -> str:
    """MIMIC-like id: 5 dash-separated hex groups."""
    h = f"{k:08x}{j:08x}{(k * 7919 + j) % 2**32:08x}{k ^ 0xABCDEF:08x}{j + 0x1000:08x}"
    return "-".join(h[i : i + 8] for i in range(0, 40, 8))


def radiograph(k: int, h: int, w: int) -> np.ndarray:
    """uint8 [h, w]: a bright disc (heart) on a vertical gradient; varies with k."""
    yy, xx = np.mgrid[0:h, 0:w]
    img = 40 + 120 * yy / max(h - 1, 1)
    cy, cx, r = h * 0.55, w * (0.4 + 0.02 * (k % 5)), min(h, w) * 0.25
    img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = 230
    return img.astype(np.uint8)


def write_dicom(path: Path, pixels: np.ndarray, photometric: str, bits: int, window=None, rescale=None, view="PA") -> None:
    """An uncompressed single-frame grey DICOM (file meta, explicit VR little endian) written with pydicom."""
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # digital X-ray for presentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.ViewPosition, ds.PatientID = "DX", view, "10000000"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits, bits - 1, 0
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    pydicom.dcmwrite(path, ds, enforce_file_format=True)


def _jpeg_bytes(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img, mode="L").save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def _write_csv(path: Path, fields: list[str], rows: list[dict], gz: bool) -> None:
    text = io.StringIO()
    w = csv.DictWriter(text, fieldnames=fields)
    w.writeheader()
    w.writerows(rows)
    if gz:
        with gzip.open(path.with_name(path.name + ".gz"), "wt", newline="") as f:
            f.write(text.getvalue())
    else:
        path.write_text(text.getvalue())


def label_values(k: int) -> list[str]:
    """Study k's raw chexpert cells: a fixed pattern over 1.0 / 0.0 / -1.0 / blank."""
    return [("1.0", "0.0", "-1.0", "")[(k + j) % 4] for j in range(len(CHEXPERT_LABELS))]


def write_tree(
    root: str | Path,
    n_good: int = 6,
    bad: tuple[str, ...] = (),
    *,
    size: tuple[int, int] = (48, 40),
    gz: bool = True,
    reports_as: str = "zip",
    n_dicom: int = 2,
    splits: tuple[str, ...] = ("train", "train", "train", "validate", "test"),
) -> Tree:
    """Write the tree under ``root``; ``bad`` names kinds from :data:`BAD_KINDS` (one extra study each)."""
    root = Path(root)
    unknown = set(bad) - set(BAD_KINDS)
    assert not unknown, f"unknown bad kinds {unknown}"
    meta, split_rows, chex, negbio, reports = [], [], [], [], {}
    tree = Tree(root, root, [], {}, {}, [])
    kinds = [None] * n_good + list(bad)
    h, w = size
    for k, kind in enumerate(kinds):
        subject, study = 10000000 + 7 * k, 50000000 + k
        folder = root / f"files/p{str(subject)[:2]}/p{subject}/s{study}"
        folder.mkdir(parents=True, exist_ok=True)
        split = splits[k % len(splits)]
        views = ["PA" if k % 2 == 0 else "AP"]
        if kind == "truncated":
            views = ["PA", "PA"]  # the study keeps its other frontal image
        if kind == "lateral_only":
            views = []
        if k % 2 == 0 or kind == "lateral_only":
            views.append("LATERAL")
        tree.studies.append(study)
        tree.frontal[study] = []
        for j, view in enumerate(views):
            did = dicom_id(k, j)
            img = radiograph(k, h, w) if view != "LATERAL" else radiograph(k, h, h)
            path = folder / f"{did}.jpg"
            if view != "LATERAL":
                tree.frontal[study].append(did)
            if view != "LATERAL" and j == 0 and kind is None and len(tree.dicom_ids) < n_dicom:
                path = path.with_suffix(".dcm")
                tree.dicom_ids.append(did)
                if len(tree.dicom_ids) == 1:  # MONOCHROME1, 12-bit, window from the file
                    write_dicom(path, (255 - img.astype(np.uint16)) * 16, "MONOCHROME1", 12, window=(2048, 4096), view=view)
                else:  # MONOCHROME2, 16-bit, rescale and no window: percentile window
                    write_dicom(path, img.astype(np.uint16) * 256, "MONOCHROME2", 16, rescale=(2.0, -100.0), view=view)
            elif kind == "zero_byte" and j == 0:
                path.write_bytes(b"")
                tree.bad[kind] = did
            elif kind == "truncated" and j == 0:
                data = _jpeg_bytes(img)
                path.write_bytes(data[: len(data) // 2])
                tree.bad[kind] = did
            elif kind == "bad_dicom" and j == 0:
                path = path.with_suffix(".dcm")
                path.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00garbage" * 10)
                tree.bad[kind] = did
            elif kind == "missing_image" and j == 0:
                tree.bad[kind] = did  # metadata row only
            else:
                path.write_bytes(_jpeg_bytes(img))
            meta.append({
                "dicom_id": did, "subject_id": subject, "study_id": study, "PerformedProcedureStepDescription": "CHEST (PA AND LAT)",
                "ViewPosition": view, "Rows": h, "Columns": w, "StudyDate": 21800101 + k, "StudyTime": 120000.0,
                "ProcedureCodeSequence_CodeMeaning": "CHEST (PA AND LAT)", "ViewCodeSequence_CodeMeaning": "postero-anterior",
                "PatientOrientationCodeSequence_CodeMeaning": "Erect",
            })
            split_rows.append({"dicom_id": did, "study_id": study, "subject_id": subject, "split": split})
        if kind in ("missing_report", "empty_report", "no_label_row", "bad_label", "lateral_only"):
            tree.bad[kind] = str(study)
        if kind != "missing_report":
            text = "   \n \n" if kind == "empty_report" else REPORT.format(k=k)
            reports[f"files/p{str(subject)[:2]}/p{subject}/s{study}.txt"] = text
        if kind != "no_label_row":
            cells = label_values(k)
            if kind == "bad_label":
                cells[CHEXPERT_LABELS.index("Edema")] = "2.0"
            row = {"subject_id": subject, "study_id": study, **dict(zip(CHEXPERT_LABELS, cells))}
            chex.append(row)
            # negbio disagrees with chexpert on Edema for study 0 (as the real labelers differ)
            nrow = dict(row)
            if k == 0:
                nrow["Edema"] = "0.0" if row["Edema"] != "0.0" else "1.0"
            negbio.append(nrow)
    _write_csv(root / "mimic-cxr-2.0.0-metadata.csv", METADATA_COLUMNS, meta, gz)
    _write_csv(root / "mimic-cxr-2.0.0-split.csv", ["dicom_id", "study_id", "subject_id", "split"], split_rows, gz)
    label_fields = ["subject_id", "study_id", *CHEXPERT_LABELS]
    _write_csv(root / "mimic-cxr-2.0.0-chexpert.csv", label_fields, chex, gz)
    _write_csv(root / "mimic-cxr-2.0.0-negbio.csv", label_fields, negbio, gz)
    if reports_as == "zip":
        tree.reports = root / "mimic-cxr-reports.zip"
        with zipfile.ZipFile(tree.reports, "w") as z:
            for name, text in reports.items():
                z.writestr(name, text)
    else:
        tree.reports = root / "reports"
        for name, text in reports.items():
            p = tree.reports / name
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(text)
    return tree
