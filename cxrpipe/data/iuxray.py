"""IU X-ray (Open-i, Indiana University) reports: the XML collection -> :class:`IUReport`, and an
approximate MeSH -> CheXpert label table.

``NLMCXR_reports.tgz`` holds ``ecgen-radiology/<n>.xml``, one per study (3,955): ``<AbstractText
Label="COMPARISON|INDICATION|FINDINGS|IMPRESSION">`` (empty ones have no text), ``<MeSH>`` with
``<major>`` terms (manual coding, ``Term/qualifier/...``, e.g. ``Opacity/lung/base/left``) and
``<automatic>`` terms (machine indexing of the text), and ``<parentImage id="CXR1_1_IM-0001-3001">`` per
image (0 to 5). De-identified words read ``XXXX``. Licence CC BY-NC-ND 4.0: never copied into the repo.

One cleaning path for both datasets: :meth:`IUReport.as_mimic_text` renders the sections as a MIMIC-style
report (``FINDINGS: ...`` header lines), which :func:`cxrpipe.data.reports.clean_report` then parses.
"""

from __future__ import annotations

import dataclasses
import math
import re
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Iterator

from cxrpipe.labels import CHEXPERT_LABELS

IU_SECTIONS = ("comparison", "indication", "findings", "impression")  # AbstractText labels, XML order

# Approximate MeSH (major term) -> CheXpert label table. Key: the term (before the first "/"), or
# "Term/qualifier" where the tag must carry that qualifier (``Cardiac Shadow/enlarged`` yes,
# ``Cardiac Shadow/irregular`` no). APPROXIMATE: CheXpert's labeler reads text, these are index terms, and
# the correspondence is a judgement call. Left out on purpose: granulomas (benign, calcified), scarring,
# emphysema, hyperinflation, surgical clips/sutures ("Surgical Instruments"), bone and spine changes:
# none is one of the 14 labels. "No Finding" is not in the table: it is derived (see
# :func:`mesh_to_chexpert`).
MESH_TO_CHEXPERT: dict[str, str] = {
    "Atelectasis": "Atelectasis",
    "Pulmonary Atelectasis": "Atelectasis",
    "Cardiomegaly": "Cardiomegaly",
    "Cardiac Shadow/enlarged": "Cardiomegaly",
    "Consolidation": "Consolidation",
    "Pulmonary Edema": "Edema",
    "Edema": "Edema",
    "Pulmonary Congestion": "Edema",  # CheXpert's edema phrases include vascular/pulmonary congestion
    "Heart Failure": "Edema",
    "Mediastinum/enlarged": "Enlarged Cardiomediastinum",
    "Mediastinum/prominent": "Enlarged Cardiomediastinum",
    "Fractures, Bone": "Fracture",
    "Rib Fractures": "Fracture",
    "Nodule": "Lung Lesion",
    "Mass/lung": "Lung Lesion",
    "Cavitation": "Lung Lesion",
    "Opacity/lung": "Lung Opacity",
    "Density/lung": "Lung Opacity",
    "Airspace Disease": "Lung Opacity",
    "Infiltrate": "Lung Opacity",
    "Pleural Effusion": "Pleural Effusion",
    "Costophrenic Angle/blunted": "Pleural Effusion",
    "Sulcus/blunted": "Pleural Effusion",
    "Hydropneumothorax": "Pleural Effusion",
    "Hemopneumothorax": "Pleural Effusion",
    "Hemothorax": "Pleural Effusion",
    "Thickening/pleura": "Pleural Other",
    "Pneumonia": "Pneumonia",
    "Pneumothorax": "Pneumothorax",
    "Catheters, Indwelling": "Support Devices",
    "Catheterization, Central Venous": "Support Devices",
    "Implanted Medical Device": "Support Devices",
    "Medical Device": "Support Devices",
    "Tube, Inserted": "Support Devices",
    "Pacemaker, Artificial": "Support Devices",
    "Stents": "Support Devices",
}
# Two-label terms: the table above gives the effusion, this the air.
MESH_EXTRA: dict[str, str] = {"Hydropneumothorax": "Pneumothorax", "Hemopneumothorax": "Pneumothorax"}
UNCERTAIN_QUALIFIERS = frozenset({"borderline"})  # "Cardiomegaly/borderline" -> -1 (uncertain)
NOT_INDEXED = "No Indexing"  # the study was never coded: every label stays blank

_NUM = re.compile(r"(\d+)")


class IUReportError(ValueError):
    """An IU X-ray XML file that cannot be read (names the file)."""


@dataclasses.dataclass(frozen=True)
class IUReport:
    uid: str  # "CXR1" (the XML's <uId>; the file stem when absent)
    sections: dict[str, str]  # lower-case label -> text, only the sections with text, in XML order
    mesh_major: tuple[str, ...]  # manual MeSH coding, "Term/qualifier/..."
    mesh_automatic: tuple[str, ...]  # machine-indexed MeSH terms
    image_ids: tuple[str, ...]  # parentImage ids, e.g. "CXR1_1_IM-0001-3001" (the PNG stems)

    def as_mimic_text(self) -> str:
        """The report in MIMIC's text layout, so one parser handles both datasets."""
        lines = ["                                 FINAL REPORT"]
        for name, text in self.sections.items():
            lines += [f" {name.upper()}: {' '.join(text.split())}", " "]
        return "\n".join(lines) + "\n"

    @property
    def labels(self) -> tuple[float, ...]:
        """The 14 raw CheXpert values from :func:`mesh_to_chexpert` (approximate)."""
        return mesh_to_chexpert(self.mesh_major)


def mesh_to_chexpert(mesh: tuple[str, ...] | list[str]) -> tuple[float, ...]:
    """MeSH major terms -> 14 raw values in :data:`CHEXPERT_LABELS` order: 1.0 positive, -1.0 uncertain
    (a "borderline" qualifier), nan blank. MeSH codes findings, not their absence, so there are no 0.0s.

    "No Finding" is 1.0 when no pathology (any label but Support Devices) is positive or uncertain, as
    CheXpert defines it; blank otherwise. A study coded "No Indexing" gets all blanks.
    """
    values = dict.fromkeys(CHEXPERT_LABELS, math.nan)
    terms = [t.strip() for t in mesh if t and t.strip()]
    if not terms or any(t.split("/")[0].strip() == NOT_INDEXED for t in terms):
        return tuple(values.values())
    for tag in terms:
        term, *quals = [p.strip() for p in tag.split("/")]
        hits = [MESH_TO_CHEXPERT.get(term), MESH_EXTRA.get(term)]
        hits += [MESH_TO_CHEXPERT.get(f"{term}/{q}") for q in quals]
        value = -1.0 if UNCERTAIN_QUALIFIERS & {q.lower() for q in quals} else 1.0
        for label in filter(None, hits):
            if math.isnan(values[label]) or value > values[label]:  # positive wins over uncertain
                values[label] = value
    pathology = [v for k, v in values.items() if k not in ("No Finding", "Support Devices")]
    if all(math.isnan(v) for v in pathology):
        values["No Finding"] = 1.0
    return tuple(values.values())


def parse_iu_xml(data: bytes | str, name: str = "<xml>") -> IUReport:
    """One ``ecgen-radiology/<n>.xml`` -> :class:`IUReport`; :class:`IUReportError` when malformed."""
    try:
        root = ET.fromstring(data)
    except ET.ParseError as e:
        raise IUReportError(f"{name}: not well-formed XML ({e})") from None
    if root.tag != "eCitation":
        raise IUReportError(f"{name}: root element is <{root.tag}>, expected <eCitation>")
    uid_el = root.find("uId")
    uid = uid_el.get("id") if uid_el is not None and uid_el.get("id") else Path(name).stem
    sections: dict[str, str] = {}
    for el in root.iter("AbstractText"):
        label = (el.get("Label") or "").strip().lower()
        text = " ".join("".join(el.itertext()).split())
        if label and text:
            sections[label] = f"{sections[label]} {text}" if label in sections else text
    mesh = root.find("MeSH")
    major = tuple(e.text.strip() for e in (mesh if mesh is not None else []) if e.tag == "major" and e.text)
    auto = tuple(e.text.strip() for e in (mesh if mesh is not None else []) if e.tag == "automatic" and e.text)
    images = tuple(e.get("id") for e in root.findall("parentImage") if e.get("id"))
    return IUReport(uid, sections, major, auto, images)


def _natural_key(name: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in _NUM.split(name))


def _xml_members(path: Path) -> Iterator[tuple[str, bytes]]:
    """``(name, bytes)`` of every XML report under a .tgz/.tar or a folder, in natural name order."""
    if path.is_dir():
        for p in sorted(path.rglob("*.xml"), key=lambda p: _natural_key(str(p.relative_to(path)))):
            yield str(p.relative_to(path)), p.read_bytes()
        return
    if not path.exists():
        raise FileNotFoundError(f"IU X-ray reports not found: {path}")
    # One sequential pass (backward seeks in a gzip stream would re-decompress); ~20 MB in memory.
    members = []
    with tarfile.open(path, "r:*") as tar:
        for m in tar:
            if m.isfile() and m.name.endswith(".xml"):
                f = tar.extractfile(m)
                members.append((m.name, f.read() if f is not None else b""))
    yield from sorted(members, key=lambda nb: _natural_key(nb[0]))


def iter_iu_reports(path: str | Path, rejects: list[tuple[str, str]] | None = None) -> Iterator[IUReport]:
    """IU X-ray reports from ``NLMCXR_reports.tgz`` or its extracted folder, in natural file order.

    A malformed XML raises :class:`IUReportError`; with a ``rejects`` list it is appended there as
    ``(member name, reason)`` and skipped instead.
    """
    for name, data in _xml_members(Path(path)):
        try:
            yield parse_iu_xml(data, name)
        except IUReportError as e:
            if rejects is None:
                raise
            rejects.append((name, str(e)))
