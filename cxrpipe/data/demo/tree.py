"""Write the miniature MIMIC-CXR-JPG tree: CSVs, image folders, the reports zip, DICOMs, corruptions.

Output (``out_dir``), laid out and named exactly as MIMIC-CXR-JPG 2.0.0 + MIMIC-CXR reports:

* ``mimic-cxr-2.0.0-metadata.csv.gz``, ``-split.csv.gz``, ``-chexpert.csv.gz``, ``-negbio.csv.gz``;
* ``files/p1X/p1XXXXXXX/sXXXXXXXX/<dicom_id>.jpg`` (a few studies ``.dcm`` instead, see :mod:`.dicom`);
* ``mimic-cxr-reports.zip`` with members ``files/p1X/p1XXXXXXX/sXXXXXXXX.txt``;
* ``DEMO_CORRUPTIONS.json``: the deliberately broken inputs (kind, ids, path), for the rejects path;
* ``generation.json``: the resolved config and the counts (``prepare`` reads its presence as "demo data").

The split is by subject, ~70/10/20 train/validate/test (MIMIC's official test split is ~1.4% of images;
the demo needs a test split big enough for per-label AUCs). Everything is a function of ``seed``: each
study draws from its own random stream, and gzip/zip headers carry fixed times, so two runs give the same
bytes. The tree is written to a sibling ``.partial`` folder and renamed into place when complete.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import io
import json
import logging
import os
import shutil
import time
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from cxrpipe import __version__
from cxrpipe.config import ConfigError, to_dict
from cxrpipe.data.demo import dicom, radiograph, report, signs
from cxrpipe.data.demo.findings import StudyFindings, negbio_variant, sample_findings
from cxrpipe.labels import CHEXPERT_LABELS
from cxrpipe.progress import progress

log = logging.getLogger(__name__)

METADATA_CSV = "mimic-cxr-2.0.0-metadata.csv.gz"
SPLIT_CSV = "mimic-cxr-2.0.0-split.csv.gz"
CHEXPERT_CSV = "mimic-cxr-2.0.0-chexpert.csv.gz"
NEGBIO_CSV = "mimic-cxr-2.0.0-negbio.csv.gz"
REPORTS_ZIP = "mimic-cxr-reports.zip"
CORRUPTIONS_JSON = "DEMO_CORRUPTIONS.json"
GENERATION_JSON = "generation.json"
METADATA_COLUMNS = (
    "dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition", "Rows",
    "Columns", "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning", "ViewCodeSequence_CodeMeaning",
    "PatientOrientationCodeSequence_CodeMeaning",
)
SPLIT_COLUMNS = ("dicom_id", "study_id", "subject_id", "split")
LABEL_COLUMNS = ("subject_id", "study_id", *CHEXPERT_LABELS)
CORRUPTION_KINDS = ("zero_byte_image", "truncated_image", "missing_image", "missing_report", "empty_report")
ZIP_TIME = (2019, 9, 1, 0, 0, 0)  # fixed member times: identical zip bytes run to run


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    """params.yaml section ``demo``."""

    seed: int = 0  # every random draw derives from this
    n_studies: int = 1000  # studies (~1.5 images each)
    studies_per_subject: float = 1.5  # mean studies per subject (geometric), so some subjects have several
    image_size: int = 256  # written image height in px (width 0.82-1.0 of it; laterals ~square)
    lateral_fraction: float = 0.45  # studies that also have a lateral view (non-portable studies first)
    ll_fraction: float = 0.15  # laterals recorded as ViewPosition LL instead of LATERAL
    extra_frontal_fraction: float = 0.05  # studies with a second frontal image (a repeat film)
    impression_only_fraction: float = 0.2  # reports with an IMPRESSION and no FINDINGS
    odd_header_fraction: float = 0.05  # reports headed "FINDINGS AND IMPRESSION:" or "CONCLUSION:"
    unlabeled_fraction: float = 0.02  # studies with no chexpert/negbio row (MIMIC: ~1%)
    negbio_disagree_fraction: float = 0.03  # labeled studies whose negbio row differs by one value
    split: tuple[float, float, float] = (0.7, 0.1, 0.2)  # train / validate / test fractions, by subject
    n_dicom: int = 4  # studies stored as .dcm (MONOCHROME1/2, 12-16 bits) instead of .jpg
    n_corrupt: int = 5  # deliberately broken inputs, cycling through CORRUPTION_KINDS
    jpeg_quality: int = 90  # Pillow JPEG quality

    def __post_init__(self) -> None:
        fractions = ("lateral_fraction", "ll_fraction", "extra_frontal_fraction", "impression_only_fraction",
                     "odd_header_fraction", "unlabeled_fraction", "negbio_disagree_fraction")
        for name in fractions:
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"params 'demo.{name}' must be in [0, 1], got {getattr(self, name)}")
        if self.n_studies < 1 or self.image_size < 32 or self.studies_per_subject < 1:
            raise ConfigError("params 'demo': need n_studies >= 1, image_size >= 32, studies_per_subject >= 1")
        if len(self.split) != 3 or min(self.split) < 0 or abs(sum(self.split) - 1) > 1e-6:
            raise ConfigError(f"params 'demo.split' must be 3 non-negative fractions summing to 1, got {self.split}")
        if self.n_dicom < 0 or self.n_corrupt < 0 or self.n_dicom + self.n_corrupt > self.n_studies:
            raise ConfigError("params 'demo': n_dicom + n_corrupt must be between 0 and n_studies")
        if self.impression_only_fraction + self.odd_header_fraction > 1:
            raise ConfigError("params 'demo': impression_only_fraction + odd_header_fraction must be <= 1")


@dataclasses.dataclass
class Study:
    """One planned study: ids, timing, split, views and report layout (findings are drawn later)."""

    index: int
    subject_index: int
    subject_id: int
    study_id: int
    split: str
    date: str  # YYYYMMDD
    time: str  # HHMMSS.fff
    has_prior: bool
    findings: StudyFindings
    views: list[str] = dataclasses.field(default_factory=list)
    dicom_ids: list[str] = dataclasses.field(default_factory=list)
    layout: report.Layout = report.Layout.STANDARD
    labeled: bool = True
    dicom_variant: dicom.DicomVariant | None = None
    corruption: str = ""

    @property
    def folder(self) -> str:
        """``files/p1X/p1XXXXXXX/sXXXXXXXX`` (MIMIC's scheme)."""
        sid = str(self.subject_id)
        return f"files/p{sid[:2]}/p{sid}/s{self.study_id}"


def _unique_ints(rng: np.random.Generator, lo: int, hi: int, n: int) -> list[int]:
    out: dict[int, None] = {}
    while len(out) < n:
        for v in rng.integers(lo, hi, size=2 * (n - len(out)) + 4):
            out.setdefault(int(v), None)
    return list(out)[:n]


def _dicom_ids(rng: np.random.Generator, n: int) -> list[str]:
    """MIMIC-style ids: five dash-separated groups of 8 hex digits."""
    ids: dict[str, None] = {}
    while len(ids) < n:
        ids.setdefault("-".join(f"{int(v):08x}" for v in rng.integers(0, 2**32, size=5)), None)
    return list(ids)


def _count(fraction: float, n: int) -> int:
    """Exact count for a fraction: at least one whenever the fraction is positive (small demos too)."""
    return 0 if fraction <= 0 or n == 0 else min(n, max(1, int(round(fraction * n))))


def plan_studies(cfg: DemoConfig) -> list[Study]:
    """Subjects, ids, splits, dates, findings, views and the studies singled out for each role."""
    rng = np.random.default_rng([cfg.seed, 0])
    per_subject: list[int] = []
    while sum(per_subject) < cfg.n_studies:
        per_subject.append(int(min(rng.geometric(1 / cfg.studies_per_subject), 8)))
    per_subject[-1] -= sum(per_subject) - cfg.n_studies
    n_sub = len(per_subject)
    subject_ids = _unique_ints(rng, 10_000_000, 20_000_000, n_sub)
    study_ids = _unique_ints(rng, 50_000_000, 60_000_000, cfg.n_studies)
    order = rng.permutation(n_sub)  # split by subject
    n_train, n_val = int(round(cfg.split[0] * n_sub)), int(round(cfg.split[1] * n_sub))
    split_of = {int(s): ("train" if r < n_train else "validate" if r < n_train + n_val else "test")
                for r, s in enumerate(order)}
    studies: list[Study] = []
    for si, k in enumerate(per_subject):
        day = int(rng.integers(0, 365 * 80))
        for j in range(k):
            day += int(rng.integers(1, 400)) if j else 0
            date = np.datetime64("2110-01-01") + np.timedelta64(day, "D")
            i = len(studies)
            secs = rng.uniform(0, 86400)
            clock = f"{int(secs // 3600):02d}{int(secs % 3600 // 60):02d}{secs % 60:06.3f}"
            studies.append(Study(
                index=i, subject_index=si, subject_id=subject_ids[si], study_id=study_ids[i],
                split=split_of[si], date=str(date).replace("-", ""), time=clock, has_prior=j > 0,
                findings=sample_findings(np.random.default_rng([cfg.seed, 1, i])),
            ))
    n = len(studies)
    # Views: one frontal (AP if portable, mostly PA otherwise); laterals go to non-portable studies first.
    for s in studies:
        s.views = ["AP" if s.findings.portable or rng.random() < 0.1 else "PA"]
    by_lateral_priority = sorted(rng.permutation(n), key=lambda i: studies[i].findings.portable)
    lateral = by_lateral_priority[: _count(cfg.lateral_fraction, n)]
    for r, i in enumerate(lateral):
        studies[i].views.append("LL" if r < _count(cfg.ll_fraction, len(lateral)) else "LATERAL")
    for i in rng.permutation(n)[: _count(cfg.extra_frontal_fraction, n)]:
        studies[i].views.insert(1, studies[i].views[0])
    # Report layouts and unlabeled studies: exact counts, random studies.
    perm = rng.permutation(n)
    n_imp, n_odd = _count(cfg.impression_only_fraction, n), _count(cfg.odd_header_fraction, n)
    for r, i in enumerate(perm[: n_imp + n_odd]):
        studies[i].layout = (report.Layout.IMPRESSION_ONLY if r < n_imp else
                             (report.Layout.FINDINGS_AND_IMPRESSION, report.Layout.CONCLUSION)[r % 2])
    for i in rng.permutation(n)[: _count(cfg.unlabeled_fraction, n)]:
        studies[i].labeled = False
    # DICOM and corrupted studies: disjoint sets.
    special = rng.permutation(n)
    for r, i in enumerate(special[: cfg.n_dicom]):
        studies[i].dicom_variant = dicom.VARIANTS[r % len(dicom.VARIANTS)]
    for r, i in enumerate(special[cfg.n_dicom: cfg.n_dicom + cfg.n_corrupt]):
        studies[i].corruption = CORRUPTION_KINDS[r % len(CORRUPTION_KINDS)]
    all_ids = _dicom_ids(rng, sum(len(s.views) for s in studies))
    for s in studies:
        s.dicom_ids, all_ids = all_ids[: len(s.views)], all_ids[len(s.views):]
    return studies


def _gz_csv(path: Path, columns, rows) -> None:
    """A gzipped CSV with a fixed gzip header (no name, mtime 0): same rows, same bytes."""
    with path.open("wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
        text = io.TextIOWrapper(gz, encoding="utf-8", newline="")
        w = csv.writer(text, lineterminator="\n")
        w.writerow(columns)
        w.writerows(rows)
        text.flush()
        text.detach()


def _fmt(v: float) -> str:
    return "" if np.isnan(v) else f"{v:.1f}"


def _write_images(s: Study, cfg: DemoConfig, root: Path, anatomy: radiograph.Anatomy) -> list[dict]:
    """Draw and write the study's images; return their metadata rows."""
    rng = np.random.default_rng([cfg.seed, 2, s.index])
    rows = []
    description = report.exam_name(s.views, s.findings.portable)
    folder = root / s.folder
    folder.mkdir(parents=True, exist_ok=True)
    for k, (view, dicom_id) in enumerate(zip(s.views, s.dicom_ids)):
        lateral = view in ("LATERAL", "LL")
        pose = radiograph.sample_pose(rng, s.findings.portable, lateral=lateral)
        draw = radiograph.draw_lateral if lateral else radiograph.draw_frontal
        img = draw(anatomy, pose, s.findings, cfg.image_size, rng)  # [H, W] in [0, 1]
        broken = s.corruption if k == 0 and s.corruption.endswith("_image") else ""
        if s.dicom_variant is not None:
            dicom.write_dicom(folder / f"{dicom_id}.dcm", img, s.dicom_variant, seed=cfg.seed, dicom_id=dicom_id,
                              subject_id=s.subject_id, study_id=s.study_id, view=view, study_date=s.date,
                              study_time=s.time, description=description)
        elif broken == "zero_byte_image":
            (folder / f"{dicom_id}.jpg").write_bytes(b"")
        elif broken != "missing_image":
            buf = io.BytesIO()
            Image.fromarray(radiograph.to_uint8(img), mode="L").save(buf, format="JPEG", quality=cfg.jpeg_quality)
            data = buf.getvalue()
            if broken == "truncated_image":
                data = data[: len(data) * 2 // 5]
            (folder / f"{dicom_id}.jpg").write_bytes(data)
        rows.append({
            "dicom_id": dicom_id, "subject_id": s.subject_id, "study_id": s.study_id,
            "PerformedProcedureStepDescription": description, "ViewPosition": view,
            "Rows": img.shape[0], "Columns": img.shape[1], "StudyDate": s.date, "StudyTime": s.time,
            "ProcedureCodeSequence_CodeMeaning": description,
            "ViewCodeSequence_CodeMeaning": dicom.VIEW_MEANING[view],
            "PatientOrientationCodeSequence_CodeMeaning": "Recumbent" if s.findings.portable else "Erect",
        })
    return rows


def _report_text(s: Study, cfg: DemoConfig) -> str:
    if s.corruption == "empty_report":
        return report.HEADER + "\n \n"
    rng = np.random.default_rng([cfg.seed, 3, s.index])
    tube_side = "left" if signs.device_side(s.findings) > 0 else "right"
    return report.render_report(s.findings, s.views, s.layout, rng, has_prior=s.has_prior, tube_side=tube_side)


def _prepare_out(out_dir: Path) -> Path:
    """The ``.partial`` sibling to write into; refuses to replace a folder that is not a demo tree."""
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / GENERATION_JSON).exists():
        raise FileExistsError(f"{out_dir} exists and is not a demo tree (no {GENERATION_JSON}); not replacing it")
    tmp = out_dir.parent / f".{out_dir.name}.partial"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def write_demo_tree(cfg: DemoConfig, out_dir: str | Path) -> dict:
    """Generate the demo tree into ``out_dir`` (replacing an earlier demo tree); return the counts."""
    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    studies = plan_studies(cfg)
    tmp = _prepare_out(out_dir)
    anatomy, anatomy_of = None, -1  # studies come grouped by subject: one anatomy at a time
    meta_rows, corruptions = [], []
    with zipfile.ZipFile(tmp / REPORTS_ZIP, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for s in progress(studies, desc="demo studies", unit="study"):
            if s.subject_index != anatomy_of:
                anatomy_of = s.subject_index
                anatomy = radiograph.sample_anatomy(np.random.default_rng([cfg.seed, 4, s.subject_index]))
            rows = _write_images(s, cfg, tmp, anatomy)
            meta_rows += rows
            if s.corruption != "missing_report":
                info = zipfile.ZipInfo(f"{s.folder}.txt", date_time=ZIP_TIME)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                zf.writestr(info, _report_text(s, cfg))
            if s.corruption:
                image = s.corruption.endswith("_image")  # corrupted studies are never DICOM ones
                corruptions.append({
                    "kind": s.corruption, "subject_id": s.subject_id, "study_id": s.study_id,
                    "dicom_id": s.dicom_ids[0] if image else None,
                    "path": f"{s.folder}/{s.dicom_ids[0]}.jpg" if image else f"{s.folder}.txt",
                })
    meta_rows.sort(key=lambda r: (r["subject_id"], r["study_id"], r["dicom_id"]))  # MIMIC's row order
    _gz_csv(tmp / METADATA_CSV, METADATA_COLUMNS, ([r[c] for c in METADATA_COLUMNS] for r in meta_rows))
    split_of = {s.study_id: s.split for s in studies}
    _gz_csv(tmp / SPLIT_CSV, SPLIT_COLUMNS,
            ([r["dicom_id"], r["study_id"], r["subject_id"], split_of[r["study_id"]]] for r in meta_rows))
    labeled = sorted((s for s in studies if s.labeled), key=lambda s: (s.subject_id, s.study_id))
    chexpert = {s.study_id: s.findings.labels() for s in labeled}
    rng = np.random.default_rng([cfg.seed, 5])
    n_disagree = _count(cfg.negbio_disagree_fraction, len(labeled))
    disagree = set(rng.permutation([s.study_id for s in labeled])[:n_disagree].tolist())
    negbio = {sid: (negbio_variant(v, np.random.default_rng([cfg.seed, 6, sid])) if sid in disagree else v)
              for sid, v in chexpert.items()}
    for name, table in ((CHEXPERT_CSV, chexpert), (NEGBIO_CSV, negbio)):
        _gz_csv(tmp / name, LABEL_COLUMNS,
                ([s.subject_id, s.study_id, *map(_fmt, table[s.study_id])] for s in labeled))
    (tmp / CORRUPTIONS_JSON).write_text(json.dumps(corruptions, indent=2) + "\n")
    counts = _counts(studies, meta_rows, chexpert, len(corruptions))
    generation = {"generator": "cxrpipe.data.demo", "version": __version__, "config": to_dict(cfg), "counts": counts,
                  "note": "synthetic MIMIC-CXR-JPG-shaped demo data; split by subject ~70/10/20, not MIMIC's"}
    (tmp / GENERATION_JSON).write_text(json.dumps(generation, indent=2, sort_keys=True) + "\n")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    seconds = time.perf_counter() - t0
    log.info("demo tree: %d studies, %d images, %d subjects in %.1f s -> %s", counts["studies"], counts["images"],
             counts["subjects"], seconds, out_dir)
    return counts


def _counts(studies: list[Study], meta_rows: list[dict], chexpert: dict, n_corrupt: int) -> dict:
    labels = np.array(list(chexpert.values()), dtype=float).reshape(-1, len(CHEXPERT_LABELS))
    per_label = {name: {"1": int((col == 1).sum()), "0": int((col == 0).sum()), "-1": int((col == -1).sum()),
                        "blank": int(np.isnan(col).sum())} for name, col in zip(CHEXPERT_LABELS, labels.T)}
    views: dict[str, int] = {}
    for r in meta_rows:
        views[r["ViewPosition"]] = views.get(r["ViewPosition"], 0) + 1
    return {
        "subjects": len({s.subject_id for s in studies}),
        "studies": len(studies),
        "images": len(meta_rows),
        "studies_per_split": {sp: sum(s.split == sp for s in studies) for sp in ("train", "validate", "test")},
        "images_per_view": dict(sorted(views.items())),
        "layouts": {lay.value: sum(s.layout is lay for s in studies) for lay in report.Layout},
        "unlabeled_studies": sum(not s.labeled for s in studies),
        "dicom_studies": sum(s.dicom_variant is not None for s in studies),
        "corruptions": n_corrupt,
        "labels": per_label,
    }
