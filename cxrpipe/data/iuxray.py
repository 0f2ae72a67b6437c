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

import collections
import dataclasses
import math
import re
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Iterator

from cxrpipe.data.archives import iter_tar
from cxrpipe.data.records import UNKNOWN_VIEW, DatasetFormatError, iter_csv
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
    if not tarfile.is_tarfile(path):
        raise DatasetFormatError(f"data.reports = {path}: not a tar archive of XML reports; expected "
                                 "NLMCXR_reports.tgz (ecgen-radiology/<n>.xml) or its extracted folder")
    members = list(iter_tar(path, lambda name: name.endswith(".xml"), param="data.reports"))
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


# ------------------------------------------------------------------------------------- prepare's reader
PROJECTIONS_COLUMNS = ("uid", "filename", "projection")
VIEW_RULE_TABLE = "projections table {name}: Frontal -> FRONTAL, Lateral -> LATERAL; images not in it UNKNOWN"
VIEW_RULE_NONE = (
    "no projections table (data.projections: null): every image's view is UNKNOWN (the XML does not say which "
    "image is frontal; the image numbers do not either). Keep them with data.views: [] (or [UNKNOWN]), or give "
    "indiana_projections.csv"
)
IU_LAYOUT = (
    "expected IU X-ray layout: data.reports = NLMCXR_reports.tgz (or its folder of ecgen-radiology/<n>.xml), "
    "data.root = NLMCXR_png.tgz (or its folder of CXR<uid>_IM-....png; Kaggle's <uid>_IM-....dcm.png too)"
)


def image_key(name: str) -> str:
    """A PNG's file name (``CXR1_1_IM-0001-4001.png``, Kaggle's ``1_IM-0001-4001.dcm.png``) -> its parentImage
    id ``CXR1_1_IM-0001-4001``."""
    stem = Path(name).name
    for suffix in (".dcm.png", ".png"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    return stem if stem.startswith("CXR") else f"CXR{stem.split('_', 1)[0]}_{stem}"  # Kaggle drops "CXR<uid>_"


def index_png_source(root: Path) -> tuple[dict[str, str], Path | None]:
    """``({parentImage id: path relative to root, or member name}, the tarball or None)``."""
    if root.is_dir():
        return {image_key(p.name): str(p.relative_to(root)) for p in sorted(root.rglob("*.png"))}, None
    if not root.is_file():
        raise DatasetFormatError(f"data.root = {root}: no such folder or file; {IU_LAYOUT}")
    if not tarfile.is_tarfile(root):
        raise DatasetFormatError(f"data.root = {root}: not a tar archive; {IU_LAYOUT}")
    names = iter_tar(root, lambda name: name.lower().endswith(".png"), read=False, param="data.root")
    return {image_key(name): name for name, _ in names}, root


def read_projections(path: Path) -> dict[str, str]:
    """indiana_projections.csv -> ``{parentImage id: FRONTAL | LATERAL}``."""
    if not path.is_file():
        raise DatasetFormatError(f"data.projections = {path}: no such file (CSV uid, filename, projection)")
    rows = iter_csv(path, PROJECTIONS_COLUMNS, param="data.projections")
    return {image_key(r["filename"].strip()): r["projection"].strip().upper() for r in rows}


def label_coverage(label_rows: list[tuple[float, ...]]) -> dict:
    """Per CheXpert label over the given studies: positives, uncertain, and their share (MeSH coverage)."""
    n = max(len(label_rows), 1)
    out = {}
    for k, name in enumerate(CHEXPERT_LABELS):
        pos = sum(r[k] == 1.0 for r in label_rows)
        unc = sum(r[k] == -1.0 for r in label_rows)
        out[name] = {"positive": pos, "uncertain": unc, "fraction": round((pos + unc) / n, 4)}
    return out


def summarize_iu_reports(reports: str | Path, sections: tuple[str, ...] = ("findings", "impression")) -> dict:
    """The report side of IU X-ray prepare, without images: :func:`read_iu_xray`'s own pass as if every PNG
    were there (every view kept): reports read, malformed, without any image, empty after cleaning, the studies
    kept and the images they reference, those coded "No Indexing" (kept unlabelled), and the MeSH label
    coverage over the labelled kept studies."""
    read = _read_reports(Path(reports), tuple(sections), {}, set(), (0.7, 0.1, 0.2), 0, files=None)
    reasons = collections.Counter(r.reason for r in read.rejects)
    return {
        "malformed": reasons["malformed_report"], "reports": read.counts["reports"],
        "reports_with_images": read.counts["reports"] - reasons["no_images"] - reasons["bad_uid"],
        "dropped_no_images": reasons["no_images"], "dropped_empty_report": reasons["empty_report"],
        "studies_kept": len(read.studies), "images_referenced": len(read.images),
        "kept_unlabelled_not_indexed": reasons["not_indexed"],
        "labelled_studies": sum(s.has_labels for s in read.studies.values()),
        "label_coverage": read.details["label_coverage"],
    }


# The views an IU image can get: its projections table's value in upper case (Open-i's indiana_projections.csv:
# Frontal / Lateral; a table of DICOM View Positions, as the bench tree's: PA, AP, LL, LATERAL, ...), UNKNOWN
# for an image the table lacks or without one. check_source checks the kept views against the table itself.
VIEWS = ("FRONTAL", "LATERAL", "PA", "AP", "LL", "RL", "LARGE LATERAL", UNKNOWN_VIEW)


def check_source(cfg) -> None:
    """The files ``prepare`` needs for ``iu-xray`` (``cfg``: prepare's ``DataConfig``), without reading them
    (but the projections table: ``data.views`` must keep some image)."""
    reports, root = Path(cfg.reports), Path(cfg.root)
    if not reports.exists():
        raise DatasetFormatError(f"data.reports = {reports}: no such file or folder; {IU_LAYOUT}")
    if not root.exists():
        raise DatasetFormatError(f"data.root = {root}: no such folder or file; {IU_LAYOUT}")
    if cfg.projections and not Path(cfg.projections).is_file():
        raise DatasetFormatError(f"data.projections = {cfg.projections}: no such file (CSV uid, filename, projection)")
    _check_kept_views(cfg)


def _check_kept_views(cfg) -> None:
    """``data.views`` names a view the images have: without a projections table every image is UNKNOWN; with
    one, a kept view must occur in it (Open-i's says Frontal / Lateral, the bench tree's the View Position)."""
    from cxrpipe.config import ConfigError

    wanted = {v.upper() for v in cfg.views}
    if not wanted or UNKNOWN_VIEW in wanted:
        return
    present = set(read_projections(Path(cfg.projections)).values()) if cfg.projections else set()
    if not wanted & present:
        where = (f"the projections table {cfg.projections} holds {sorted(present)}" if cfg.projections else
                 "without a projections table (data.projections: null) every image is UNKNOWN")
        raise ConfigError(f"params 'data.views': {list(cfg.views)} keeps no image of iu-xray: {where}; "
                          "name views it holds ([] keeps every view)")


def read_iu_xray(cfg):
    """The registry's reader for ``iu-xray``: ``cfg`` is prepare's ``DataConfig`` (reports, root, projections,
    views, sections, split_fractions, split_seed). One report = one study = one subject (IU has no patient
    ids); study_id = the number of its uid. Rejects: a malformed XML, an empty report, a report that names no
    image, a referenced image absent from the PNGs; a report coded "No Indexing" stays, without labels."""
    from cxrpipe.data.splits import check_fractions

    fractions = check_fractions(cfg.split_fractions, "data.split_fractions")
    check_source(cfg)
    reports, root = Path(cfg.reports), Path(cfg.root)
    files, tar = index_png_source(root)
    views_of = read_projections(Path(cfg.projections)) if cfg.projections else {}
    read = _read_reports(reports, tuple(cfg.sections), views_of, {v.upper() for v in cfg.views}, fractions,
                         cfg.split_seed, files=files, root=root)
    view_rule = VIEW_RULE_TABLE.format(name=Path(cfg.projections).name) if cfg.projections else VIEW_RULE_NONE
    return dataclasses.replace(read, image_tar=tar, details={"views": view_rule, **read.details})


def _read_reports(reports: Path, sections: tuple[str, ...], views_of: dict[str, str], wanted: set[str],
                  fractions, split_seed: int, files: dict[str, str] | None, root: Path | None = None):
    """The reports pass of :func:`read_iu_xray` -> SourceRead. ``files``: parentImage id -> path of the PNGs
    found (None: every referenced image counts as present, at ``<id>.png``)."""
    from cxrpipe.data.manifest import StudyRecord
    from cxrpipe.data.records import ImageCandidate, Reject, SourceRead
    from cxrpipe.data.reports import clean_report
    from cxrpipe.data.splits import seeded_split

    bad: list[tuple[str, str]] = []
    rejects: list[Reject] = []
    kept = []  # (report, cleaned, [(image id, view)])
    counts = collections.Counter()
    views_seen: collections.Counter = collections.Counter()
    for rep in iter_iu_reports(reports, rejects=bad):
        counts["reports"] += 1
        num = _NUM.search(rep.uid)
        if num is None:
            counts["studies_selected"] += 1
            rejects.append(Reject("study", rep.uid, str(reports), "bad_uid", "uid without a number"))
            continue
        sid = int(num.group(1))
        chosen = [(i, views_of.get(i, "UNKNOWN")) for i in rep.image_ids]
        views_seen.update(v for _, v in chosen)
        chosen = [(i, v) for i, v in chosen if not wanted or v in wanted]
        counts["selected_images"] += len(chosen)
        counts["studies_selected"] += bool(chosen)
        if not rep.image_ids:
            rejects.append(Reject("study", str(sid), str(reports), "no_images", "the report names no image (no parentImage)"))
            counts["studies_selected"] += 1
            continue
        if not chosen:
            continue  # none of the wanted views: a selection
        cleaned = clean_report(rep.as_mimic_text(), keep=sections, study=rep.uid)
        if cleaned.empty:
            rejects.append(Reject("study", str(sid), str(reports), "empty_report", f"no text left after cleaning (sections: {sorted(rep.sections) or 'none'})"))
            continue
        found = []
        for image_id, view in chosen:
            if files is None or image_id in files:
                found.append((image_id, view))
            else:
                rejects.append(Reject("image", image_id, f"{image_id}.png", "missing_image", f"referenced by {rep.uid}, not in {root}"))
        if not found:
            rejects.append(Reject("study", str(sid), str(reports), "no_images", "every image of the report is missing"))
            continue
        kept.append((sid, rep, cleaned, found))
    for name, why in bad:
        rejects.append(Reject("study", name, str(reports), "malformed_report", why))
    counts["studies_selected"] += len(bad)
    split_of = seeded_split([k[0] for k in kept], fractions, split_seed)
    images, studies = [], {}
    for sid, rep, cleaned, found in sorted(kept, key=lambda k: k[0]):
        labels = rep.labels
        has = not all(math.isnan(v) for v in labels)
        if not has:
            rejects.append(Reject("labels", str(sid), str(reports), "not_indexed", "MeSH coded 'No Indexing' (or no MeSH)", action="unlabelled"))
        studies[sid] = StudyRecord(sid, sid, split_of[sid], cleaned.text, dict(cleaned.sections), labels, has_labels=has)
        images += [ImageCandidate(i, sid, sid, split_of[sid], v, files[i] if files is not None else f"{i}.png")
                   for i, v in sorted(found)]
    counts = {**counts, "malformed_reports": len(bad), "views_seen": dict(sorted(views_seen.items()))}
    coverage = label_coverage([s.labels for s in studies.values() if s.has_labels])
    rule = f"seeded split by report uid (one report = one patient): fractions {list(fractions)}, seed {split_seed}"
    return SourceRead(images, studies, rejects, dict(counts), split_rule=rule,
                      details={"split_fractions": list(fractions), "split_seed": split_seed,
                               "label_coverage": coverage, "labels": "approximate MeSH -> CheXpert table (iuxray.py)"})
