"""MIMIC-CXR-JPG / MIMIC-CXR (DICOM) reader: the tables, the reports and the image tree -> candidate rows.

What it reads (names as PhysioNet ships them; each CSV gzipped or plain):
  ``<tables>/mimic-cxr-2.0.0-metadata.csv(.gz)``  dicom_id, subject_id, study_id, ViewPosition, ...
  ``<tables>/mimic-cxr-2.0.0-split.csv(.gz)``     dicom_id, study_id, subject_id, split
  ``<tables>/mimic-cxr-2.0.0-chexpert.csv(.gz)``  or ``-negbio``: subject_id, study_id + the 14 labels
  ``<root>/files/p10/p10000032/s50414267/<dicom_id>.jpg``  (``.dcm`` for the DICOM source; the other
      extension is accepted when the expected file is absent: the demo keeps a few studies as DICOM)
  reports: ``mimic-cxr-reports.zip`` (members ``files/p10/p10000032/s50414267.txt``) or its extracted folder.

What it returns (:class:`MimicRead`): the image rows that passed the view filter and whose file exists,
the studies with a non-empty cleaned report, and a :class:`Reject` for everything dropped on the way.
Decoding the images is ``prepare``'s job; a study that loses all its images there is dropped there.

Policies (each listed in ``rejects.csv``):
  * metadata row without a split row, or whose image file is absent -> image dropped;
  * report file missing, or empty once cleaned -> study dropped (pretraining needs the text);
  * study without a label row -> kept, ``has_labels=False`` (it still serves pretraining);
  * a label value outside {1, 0, -1, blank} -> the row is not trusted: kept with ``has_labels=False``.
A blank ``ViewPosition`` is the view ``UNKNOWN``; ``views=()`` keeps every view.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
import re
import zipfile
from pathlib import Path
from typing import Iterator, Sequence

from cxrpipe.data.archives import SafeZip
from cxrpipe.data.manifest import SPLITS, StudyRecord
from cxrpipe.data import records
from cxrpipe.data.records import UNKNOWN_VIEW, DatasetFormatError, ImageCandidate, Reject, SourceRead
from cxrpipe.data.reports import clean_report
from cxrpipe.labels import CHEXPERT_LABELS, parse_label_row

log = logging.getLogger(__name__)

TABLE_PREFIX = "mimic-cxr-2.0.0-"
# ViewPosition values of MIMIC-CXR(-JPG)'s metadata table (blank = UNKNOWN); data.views must name some of them
VIEWS = ("AP", "PA", "LATERAL", "LL", "AP AXIAL", "AP LLD", "AP RLD", "PA LLD", "PA RLD", "LAO", "RAO", "LPO",
         "XTABLE LATERAL", "SWIMMERS", UNKNOWN_VIEW)
IMAGE_EXT = {"mimic-cxr-jpg": "jpg", "mimic-cxr": "dcm"}
_REPORT_MEMBER = re.compile(r"(?:^|/)s(\d+)\.txt$")


class MimicFormatError(DatasetFormatError):
    """A MIMIC table or the reports source is absent or not shaped as MIMIC ships it."""


MimicRead = SourceRead  # the MIMIC reader's result (kept name)


# ----------------------------------------------------------------------------------------------- tables
def find_table(folder: str | Path, name: str) -> Path:
    """``<folder>/mimic-cxr-2.0.0-<name>.csv.gz``, else the plain ``.csv``."""
    folder = Path(folder)
    for suffix in (".csv.gz", ".csv"):
        p = folder / f"{TABLE_PREFIX}{name}{suffix}"
        if p.is_file():
            return p
    raise MimicFormatError(f"{folder}: neither {TABLE_PREFIX}{name}.csv.gz nor {TABLE_PREFIX}{name}.csv found")


EXPECTED_LAYOUT = (
    "expected layout (MIMIC-CXR-JPG as PhysioNet ships it): <data.root>/mimic-cxr-2.0.0-metadata.csv.gz, "
    "-split.csv.gz, -chexpert.csv.gz (or -negbio) and <data.root>/files/p10/p10000032/s50414267/<dicom_id>.jpg; "
    "data.tables names another folder for the tables (the DICOM release has none)"
)


def _tables_nearby(folder: Path) -> list[Path]:
    """Folders one or two levels below, or up to three above, ``folder`` that hold MIMIC's split table."""
    def has(d: Path) -> bool:
        return any((d / f"{TABLE_PREFIX}split{sfx}").is_file() for sfx in (".csv.gz", ".csv"))

    found = [d for d in list(folder.parents)[:3] if has(d)]  # one level too low (e.g. <root>/files)
    if found or not folder.is_dir() or folder.name == "files":
        return found
    for pattern in ("*", "*/*"):  # too high (e.g. the folder above 2.1.0/)
        found += sorted(d for d in folder.glob(pattern) if d.is_dir() and d.name != "files" and has(d))
        if found:
            break
    return found


def check_layout(root: Path, tables: Path, tables_param: str) -> None:
    """Fail up front, naming the param to fix, when the tables or the ``files/`` tree are not where MIMIC
    keeps them (a folder one level too high or too low is detected and the right one suggested)."""
    for folder, param in ((root, "data.root"), (tables, tables_param)):
        if not folder.is_dir():
            raise MimicFormatError(f"{param} = {folder}: no such folder; {EXPECTED_LAYOUT}")
    missing = [n for n in ("metadata", "split") if not any(
        (tables / f"{TABLE_PREFIX}{n}{sfx}").is_file() for sfx in (".csv.gz", ".csv"))]
    if missing:
        near = _tables_nearby(tables)
        hint = f" They are in {near[0]}: set {tables_param}: {near[0]}." if near else ""
        raise MimicFormatError(
            f"{tables_param} = {tables}: no {', '.join(f'{TABLE_PREFIX}{n}.csv(.gz)' for n in missing)} there."
            f"{hint} {EXPECTED_LAYOUT}"
        )
    if not (root / "files").is_dir():
        if root.name == "files" or root.name.startswith("p1"):
            hint = f" {root} looks like the image tree itself: set data.root to the folder that holds files/."
        else:
            near = sorted(d for d in root.glob("*/files") if d.is_dir())[:1]
            hint = f" Found {near[0]}: set data.root: {near[0].parent}." if near else ""
        raise MimicFormatError(f"data.root = {root}: no files/ folder (the images).{hint} {EXPECTED_LAYOUT}")


def iter_csv(path: str | Path, required: Sequence[str]) -> Iterator[dict[str, str]]:
    """Rows of a MIMIC table (:func:`cxrpipe.data.records.iter_csv`; a wrong header is a MimicFormatError)."""
    return records.iter_csv(path, required, error=MimicFormatError)


def read_labels(path: str | Path, wanted: set[int] | None = None) -> tuple[dict[int, tuple[float, ...]], dict[int, str]]:
    """A chexpert/negbio table -> ({study_id: 14 raw labels}, {study_id: why its row is not trusted}).

    Labels are read by column name, never by position. A value outside {1, 0, -1, blank} puts the study in
    the second dict (with the column and value) instead of the first.
    """
    labels: dict[int, tuple[float, ...]] = {}
    bad: dict[int, str] = {}
    for r in iter_csv(path, ("study_id", *CHEXPERT_LABELS)):
        study = int(r["study_id"])
        if (wanted is not None and study not in wanted) or study in labels or study in bad:
            continue  # only the first row of a study counts
        values, problems = parse_label_row(r, CHEXPERT_LABELS)
        if problems:
            bad[study] = "label value(s) outside {1, 0, -1, blank}: " + ", ".join(problems)
        else:
            labels[study] = values
    return labels, bad


# ---------------------------------------------------------------------------------------------- reports
REPORTS_LAYOUT = (
    "expected mimic-cxr-reports.zip (members files/p10/p10000032/s50414267.txt) or the folder it extracts to "
    "(<folder>/files/p10/p10000032/s50414267.txt)"
)


class ReportSource:
    """MIMIC-CXR reports from ``mimic-cxr-reports.zip`` or its extracted folder (detected from the path)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._zip: SafeZip | None = None
        self._members: dict[int, str] = {}
        if self.path.is_file():
            try:
                self._zip = SafeZip(self.path, param="data.reports")  # names checked, links skipped, sizes bounded
            except zipfile.BadZipFile as e:
                raise MimicFormatError(f"data.reports = {self.path}: not a zip file ({e}); {REPORTS_LAYOUT}") from None
            for name in self._zip.names():  # index by study id: tolerant of a leading folder in members
                m = _REPORT_MEMBER.search(name)
                if m:
                    self._members.setdefault(int(m.group(1)), name)
            if not self._members:
                raise MimicFormatError(
                    f"data.reports = {self.path}: the zip holds no s<study_id>.txt member; {REPORTS_LAYOUT}"
                )
        elif not self.path.is_dir():
            raise MimicFormatError(f"data.reports = {self.path}: no such zip file or folder; {REPORTS_LAYOUT}")
        elif next(self._folder_reports(), None) is None:  # checked now, not after every study is dropped
            raise MimicFormatError(f"data.reports = {self.path}: the folder holds no report; {REPORTS_LAYOUT}")

    def _folder_reports(self) -> Iterator[Path]:
        """Report files of an extracted folder, at MIMIC's depth (the folder itself may be files/)."""
        for pattern in ("files/p1*/p*/s*.txt", "p1*/p*/s*.txt"):
            yield from self.path.glob(pattern)

    def locate(self, subject_id: int, study_id: int) -> str:
        """Where the report of a study is (or would be), for messages."""
        if self._zip is not None:
            return f"{self.path}:{self._members.get(study_id, _report_relpath(subject_id, study_id))}"
        for cand in self._folder_candidates(subject_id, study_id):
            if cand.is_file():
                return str(cand)
        return str(self.path / _report_relpath(subject_id, study_id))

    def _folder_candidates(self, subject_id: int, study_id: int) -> tuple[Path, Path]:
        rel = _report_relpath(subject_id, study_id)
        return self.path / rel, self.path / rel.removeprefix("files/")  # the folder itself may be files/

    def get(self, subject_id: int, study_id: int) -> str | None:
        """The raw report text, or None when the study has no report file."""
        if self._zip is not None:
            name = self._members.get(study_id)
            return None if name is None else self._zip.read(name).decode("utf-8", errors="replace")
        for cand in self._folder_candidates(subject_id, study_id):
            if cand.is_file():
                return cand.read_bytes().decode("utf-8", errors="replace")
        return None

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()

    def __enter__(self) -> "ReportSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _report_relpath(subject_id: int, study_id: int) -> str:
    return f"files/p{str(subject_id)[:2]}/p{subject_id}/s{study_id}.txt"


def image_relpath(subject_id: int, study_id: int, dicom_id: str, ext: str) -> str:
    """``files/p10/p10000032/s50414267/<dicom_id>.<ext>`` (MIMIC's folder scheme)."""
    return f"files/p{str(subject_id)[:2]}/p{subject_id}/s{study_id}/{dicom_id}.{ext}"


# ----------------------------------------------------------------------------------------------- reader
STUDY_SPLIT_RULE = (
    "a study whose images sit in different splits gets the split most of its images have; on a tie the more "
    "held-out one (test, then validate, then train), so no image of a held-out study is trained on"
)
_HELD_OUT_RANK = {"test": 0, "validate": 1, "train": 2}


def study_split(image_splits: Sequence[str]) -> str:
    """The one split of a study from its images' splits (see :data:`STUDY_SPLIT_RULE`)."""
    n = collections.Counter(image_splits)
    return min(n, key=lambda s: (-n[s], _HELD_OUT_RANK.get(s, 3), s))


def subjects_in_several_splits(studies: Sequence[StudyRecord]) -> dict[int, list[str]]:
    """``{subject_id: [splits]}`` of every subject whose studies sit in more than one split (MIMIC-CXR's
    official split is by subject: a patient in two splits leaks between training and testing)."""
    splits: dict[int, set[str]] = collections.defaultdict(set)
    for s in studies:
        splits[s.subject_id].add(s.split)
    return {subj: sorted(v) for subj, v in sorted(splits.items()) if len(v) > 1}


def _select_images(root: Path, tables: Path, ext: str, wanted_views: set[str], rejects: list[Reject],
                   counts: dict) -> dict[int, list[ImageCandidate]]:
    """The metadata pass: every image of a wanted view with a split and a file -> candidates per study;
    each drop a Reject, each count into ``counts``."""
    other_ext = "dcm" if ext == "jpg" else "jpg"

    split_of: dict[str, str] = {}
    for r in iter_csv(find_table(tables, "split"), ("dicom_id", "split")):
        split_of.setdefault(r["dicom_id"], r["split"].strip())

    views_seen: collections.Counter = collections.Counter()
    seen_ids: set[str] = set()
    by_study: dict[int, list[ImageCandidate]] = collections.defaultdict(list)
    studies_in_metadata: set[int] = set()
    selected_study_paths: dict[int, str] = {}  # study -> its folder, for studies with >= 1 selected view
    n_selected = 0
    for r in iter_csv(find_table(tables, "metadata"), ("dicom_id", "subject_id", "study_id", "ViewPosition")):
        counts["metadata_rows"] += 1
        dicom_id = r["dicom_id"].strip()
        if dicom_id in seen_ids:
            counts["duplicate_metadata_rows"] += 1
            continue
        seen_ids.add(dicom_id)
        view = (r["ViewPosition"] or "").strip().upper() or UNKNOWN_VIEW
        views_seen[view] += 1
        try:
            subject_id, study_id = int(r["subject_id"]), int(r["study_id"])
        except ValueError:
            rejects.append(Reject("image", dicom_id, "", "bad_metadata", f"subject/study id not integers: {r['subject_id']!r}, {r['study_id']!r}"))
            continue
        studies_in_metadata.add(study_id)
        if wanted_views and view not in wanted_views:
            continue  # a selection, not a loss: counted in views_seen
        n_selected += 1
        rel = image_relpath(subject_id, study_id, dicom_id, ext)
        selected_study_paths.setdefault(study_id, rel.rsplit("/", 1)[0])
        split = split_of.get(dicom_id)
        if split is None:
            rejects.append(Reject("image", dicom_id, rel, "no_split", "no row in the split table"))
            continue
        if split not in SPLITS:
            rejects.append(Reject("image", dicom_id, rel, "bad_split", f"split {split!r} is not one of {list(SPLITS)}"))
            continue
        if not (root / rel).is_file():
            alt = image_relpath(subject_id, study_id, dicom_id, other_ext)
            if not (root / alt).is_file():
                rejects.append(Reject("image", dicom_id, rel, "missing_image", f"no {rel} (nor .{other_ext}) under {root}"))
                continue
            rel = alt
        by_study[study_id].append(ImageCandidate(dicom_id, study_id, subject_id, split, view, rel))

    for study_id in sorted(set(selected_study_paths) - set(by_study)):
        rejects.append(Reject("study", str(study_id), selected_study_paths[study_id], "no_images", "every selected image of the study was dropped"))
    counts["views_seen"] = dict(sorted(views_seen.items()))
    counts["selected_images"] = n_selected
    counts["studies_in_metadata"] = len(studies_in_metadata)
    counts["studies_selected"] = len(selected_study_paths)  # with >= 1 image of a wanted view
    return by_study


def _join_reports(by_study: dict[int, list[ImageCandidate]], reports: str | Path, sections: Sequence[str],
                  labels: dict, bad_labels: dict, label_path: Path, rejects: list[Reject], counts: dict,
                  ) -> tuple[dict[int, StudyRecord], list[ImageCandidate], collections.Counter]:
    """The reports pass: each study with candidates gets its cleaned report and labels (or a Reject); the
    study split rule applied. Returns (studies, their images, which sections the texts used)."""
    sections_used: collections.Counter = collections.Counter()
    studies: dict[int, StudyRecord] = {}
    images: list[ImageCandidate] = []
    with ReportSource(reports) as src:
        for study_id in sorted(by_study, key=lambda s: (by_study[s][0].subject_id, s)):
            cands = sorted(by_study[study_id], key=lambda c: c.dicom_id)
            subject_id = cands[0].subject_id
            raw = src.get(subject_id, study_id)
            if raw is None:
                rejects.append(Reject("study", str(study_id), src.locate(subject_id, study_id), "missing_report", "no report file for this study"))
                continue
            cleaned = clean_report(raw, keep=tuple(sections), study=str(study_id))  # + MIT-LCP per-study fixes
            if cleaned.empty:
                rejects.append(Reject("study", str(study_id), src.locate(subject_id, study_id), "empty_report", f"no text left after cleaning (sections found: {sorted(cleaned.sections) or 'none'})"))
                continue
            sections_used["+".join(cleaned.used)] += 1
            has_labels = study_id in labels
            if not has_labels:
                reason, detail = ("bad_label_value", bad_labels[study_id]) if study_id in bad_labels else ("no_label_row", f"no row in {label_path.name}")
                rejects.append(Reject("labels", str(study_id), label_path.name, reason, detail, action="unlabelled"))
            split = study_split([c.split for c in cands])
            if any(c.split != split for c in cands):
                counts["studies_split_resolved"] = counts.get("studies_split_resolved", 0) + 1
                log.warning("study %d has images in splits %s; all get %r (%s)", study_id,
                            sorted({c.split for c in cands}), split, STUDY_SPLIT_RULE)
                cands = [dataclasses.replace(c, split=split) for c in cands]
            studies[study_id] = StudyRecord(
                study_id=study_id,
                subject_id=subject_id,
                split=split,
                text=cleaned.text,
                sections=dict(cleaned.sections),
                labels=labels.get(study_id, tuple([math.nan] * len(CHEXPERT_LABELS))),
                has_labels=has_labels,
            )
            images.extend(cands)
    return studies, images, sections_used


def read_mimic(
    root: str | Path,
    reports: str | Path,
    *,
    source: str = "mimic-cxr-jpg",
    tables: str | Path | None = None,
    labeler: str = "chexpert",
    views: Sequence[str] = ("AP", "PA"),
    sections: Sequence[str] = ("findings", "impression"),
) -> MimicRead:
    """Read a MIMIC-CXR(-JPG) tree (see the module doc for what is read and what is dropped)."""
    root = Path(root)
    if source not in IMAGE_EXT:
        raise MimicFormatError(f"read_mimic: source {source!r} is not one of {sorted(IMAGE_EXT)}")
    if labeler not in ("chexpert", "negbio"):
        raise MimicFormatError(f"read_mimic: labeler {labeler!r} is not chexpert or negbio")
    tables_param = "data.tables" if tables is not None else "data.root"
    tables = Path(tables) if tables is not None else root
    check_layout(root, tables, tables_param)
    wanted_views = {v.upper() for v in views}
    rejects: list[Reject] = []
    counts: dict = {"metadata_rows": 0, "duplicate_metadata_rows": 0}
    by_study = _select_images(root, tables, IMAGE_EXT[source], wanted_views, rejects, counts)
    label_path = find_table(tables, labeler)
    labels, bad_labels = read_labels(label_path, wanted=set(by_study))
    studies, images, sections_used = _join_reports(by_study, reports, sections, labels, bad_labels, label_path,
                                                   rejects, counts)
    n_missing = sum(r.reason == "missing_report" for r in rejects)
    if by_study and n_missing == len(by_study):  # not a data loss: the wrong reports source
        raise MimicFormatError(
            f"data.reports = {reports}: none of the {len(by_study)} selected studies has a report there "
            f"(e.g. {rejects[-1].path}); is it the reports of this release? {REPORTS_LAYOUT}"
        )
    counts["sections_used"] = dict(sorted(sections_used.items()))
    log.info(
        "read %d metadata rows: %d images selected (views %s), %d candidates in %d studies, %d rejects",
        counts["metadata_rows"], counts["selected_images"], sorted(wanted_views) or "all", len(images), len(studies), len(rejects),
    )
    return MimicRead(images=images, studies=studies, rejects=rejects, counts=counts)


def check_source(cfg) -> None:
    """The layout ``prepare`` needs, checked without reading the tables (``cxrpipe check``): the folders, the
    metadata / split / label tables and the reports source. ``cfg`` is prepare's ``DataConfig``."""
    tables_param = "data.tables" if cfg.tables is not None else "data.root"
    tables = Path(cfg.tables) if cfg.tables is not None else Path(cfg.root)
    check_layout(Path(cfg.root), tables, tables_param)
    find_table(tables, cfg.labeler)
    if not Path(cfg.reports).exists():
        raise MimicFormatError(f"data.reports = {cfg.reports}: no such zip file or folder; {REPORTS_LAYOUT}")


def read_mimic_source(cfg) -> SourceRead:
    """The registry's reader for ``mimic-cxr-jpg`` / ``mimic-cxr``: ``cfg`` is prepare's ``DataConfig``."""
    return read_mimic(
        cfg.root, cfg.reports, source=cfg.source, tables=cfg.tables, labeler=cfg.labeler, views=cfg.views,
        sections=cfg.sections,
    )
