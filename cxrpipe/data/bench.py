"""The `bench` check profile's data: the real IU X-ray reports, each study's images drawn by the demo's
renderer from that report's labels (``bench_data`` stage, ``cxrpipe bench-data``; docs/bench.md).

The demo's reports are written from the very labels its images show, in a few templates. Here the text is
real (3,955 Open-i reports, radiologists' wording, ``XXXX`` de-identification) and only the images are drawn:
each study's 14 labels are the iu-xray reader's MeSH mapping (:func:`cxrpipe.data.iuxray.mesh_to_chexpert`),
and :func:`cxrpipe.data.demo.findings.findings_from_labels` turns them into signs (a positive drawn fully,
an uncertain one faintly, "No Finding" or an unindexed report without any sign). Side, lung zone and severity
come from the MeSH qualifiers where the report's coding gives them (``Opacity/lung/base/left``), else they
are drawn, seeded by the report's uid, as are the devices, the anatomy and each image's pose.

Output (``out_dir``), the layout the iu-xray reader reads unchanged (no bench-only path downstream):

* ``NLMCXR_reports.tgz``: the report collection, byte for byte (``data.reports``);
* ``images/<parentImage id>.png``: one 8-bit PNG per image a report names (``data.root`` = ``out_dir``);
* ``indiana_projections.csv``: uid, filename, projection = the image's DICOM View Position (PA, AP, LL,
  LATERAL, ...), so ``views: [PA, AP]`` keeps the frontal ones as for MIMIC-CXR (``data.projections``);
* ``generation.json``: config, sources with their sha256, counts (``prepare`` reads its presence as
  "synthetic images").

The reports and the DICOM metadata come from the torchxrayvision wheel on PyPI, which ships both (the
installed package when that exact version is installed, else ``pip download --no-deps`` once into
``download_dir``; sha256 pinned in :data:`cxrpipe.text.model.PINNED_SHA256`), or from local files. The
reports' licence is CC BY-NC-ND 4.0: the tree stays under the git-ignored ``data/``.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
from PIL import Image
from tqdm import tqdm

from cxrpipe import __version__
from cxrpipe.config import ConfigError, to_dict
from cxrpipe.data.demo import radiograph
from cxrpipe.data.demo.findings import StudyFindings, findings_from_labels
from cxrpipe.data.iuxray import MESH_EXTRA, MESH_TO_CHEXPERT, IUReport, iter_iu_reports
from cxrpipe.data.records import DatasetFormatError, iter_csv
from cxrpipe.io import UserError, check_replaceable, mark_created, remove_created_folder
from cxrpipe.labels import CHEXPERT_LABELS

log = logging.getLogger(__name__)
STAGE = "bench_data"  # the marker in the folders this stage may replace

REPORTS_TGZ = "NLMCXR_reports.tgz"
IMAGES_DIR = "images"
PROJECTIONS_CSV = "indiana_projections.csv"
GENERATION_JSON = "generation.json"  # as cxrpipe.data.prepare.DEMO_MARKER: "this tree's images are drawn"
METADATA_COLUMNS = ("imageid", "View Position")
FRONTAL_VIEWS = ("PA", "AP")
LATERAL_VIEWS = ("LL", "LATERAL", "RL", "LARGE LATERAL")  # every lateral View Position the metadata holds
LICENCE = "IU X-ray reports (Open-i, NLM): CC BY-NC-ND 4.0; never commit them or anything derived"
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")  # an image id that is safe as a file name

# MeSH qualifiers -> the renderer's detail (cxrpipe.data.demo.findings._detail's values), per field.
SIDE_WORDS = ("left", "right", "bilateral")
SIDED = frozenset({"Atelectasis", "Consolidation", "Fracture", "Lung Lesion", "Lung Opacity", "Pleural Effusion",
                   "Pleural Other", "Pneumonia", "Pneumothorax"})
LUNG_ZONE_WORDS = {"base": "lower", "lower lobe": "lower", "costophrenic angle": "lower", "middle lobe": "middle",
                   "lingula": "middle", "upper lobe": "upper", "apex": "upper"}
ZONE_WORDS: dict[str, dict[str, str]] = {
    **dict.fromkeys(("Consolidation", "Pneumonia", "Lung Opacity", "Lung Lesion"), LUNG_ZONE_WORDS),
    "Pleural Other": {"apex": "apical"},
}
SEVERITY_WORDS: dict[str, dict[str, str]] = {
    "Pleural Effusion": {"small": "small", "mild": "small", "moderate": "moderate", "large": "large",
                         "severe": "large"},
    "Pneumothorax": {"small": "small", "moderate": "moderate", "large": "large"},
    "Cardiomegaly": {"mild": "mild", "moderate": "moderate", "severe": "severe"},
    "Edema": {"mild": "mild", "moderate": "moderate", "severe": "severe"},
    "Atelectasis": {"mild": "mild", "moderate": "moderate", "severe": "moderate"},
    "Lung Opacity": {"patchy": "patchy", "streaky": "patchy", "interstitial": "hazy", "diffuse": "hazy"},
    "Fracture": {"healed": "nondisplaced"},
}


class BenchDataError(UserError, RuntimeError):
    """The bench tree cannot be written (a source file absent, a folder that is not ours): one line."""


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """params.yaml section ``bench``."""

    trees: tuple[str, ...] = ()  # DVC matrix only: folders under data/ that bench_data writes ([] = no stage)
    seed: int = 0  # every draw (detail not in the MeSH coding, devices, anatomy, pose, noise) derives from it
    image_size: int = 192  # drawn image height in px (frontal width 0.82-1.0 of it); prepare downsizes
    package: str = "torchxrayvision==1.5.7"  # exact pin of the wheel that ships the two files below
    reports_member: str = "data/NLMCXR_reports.tgz"  # the reports, inside the package's import folder
    metadata_member: str = "data/nlmcxr_dicom_metadata.csv.gz"  # per image: imageid, View Position, ...
    reports: Path | None = None  # a local NLMCXR_reports.tgz instead of the package's (null = the package's)
    metadata: Path | None = None  # a local nlmcxr_dicom_metadata.csv(.gz) instead (null = the package's)
    download_dir: Path = Path("data/downloads")  # where the wheel is pip-downloaded once when not installed
    mesh_details: bool = True  # side / zone / severity from the MeSH qualifiers where coded (false: all drawn)

    def __post_init__(self) -> None:
        name, sep, version = self.package.partition("==")
        if not (sep and name.strip() and version.strip()):
            raise ConfigError(f"params 'bench.package' must pin an exact version (name==version), got {self.package!r}")
        if self.image_size < 32:
            raise ConfigError(f"params 'bench.image_size' must be >= 32, got {self.image_size}")
        bad = [t for t in self.trees if not _PLAIN_NAME.match(t)]
        if bad:
            raise ConfigError(f"params 'bench.trees': folder names under data/ only (no '/'), got {bad}")


@dataclasses.dataclass(frozen=True)
class BenchImage:
    image_id: str  # parentImage id, e.g. "CXR1_1_IM-0001-3001" (the PNG's stem)
    view: str  # View Position as the projections table records it: PA, AP, LL, LATERAL, ...
    inferred: bool = False  # the metadata had no View Position: set from the study's other images


@dataclasses.dataclass(frozen=True)
class BenchStudy:
    uid: str  # "CXR1"
    number: int  # 1: the reader's study (and patient) id, and every seed's key
    labels: tuple[float, ...]  # the reader's 14 raw values, CHEXPERT_LABELS order
    findings: StudyFindings  # what its images show
    images: tuple[BenchImage, ...]


# ------------------------------------------------------------------------------------------------- sources
def package_folder(spec: str, download_dir: Path) -> Path:
    """The pinned package's import folder: the installed one (that exact version), else an earlier download
    in ``download_dir``, else ``pip download --no-deps`` into it (the wheel's sha256 checked first)."""
    from cxrpipe.text.model import download_package, find_installed_package

    folder = find_installed_package(spec)
    if folder is not None:
        log.info("using the installed %s at %s", spec, folder)
        return folder
    name, _, version = spec.partition("==")
    dest = Path(download_dir) / f"{name.strip()}-{version.strip()}"
    unpacked = dest / "unpacked" / name.strip().replace("-", "_")
    if unpacked.is_dir():
        log.info("using %s downloaded earlier to %s", spec, dest)
        return unpacked
    try:
        folder, _wheel = download_package(spec, dest)
    except subprocess.CalledProcessError:
        raise BenchDataError(
            f"pip download of {spec} failed (offline?): install it (pip install --no-deps {spec}), or set "
            "bench.reports and bench.metadata to local copies of its two files"
        ) from None
    return folder


def resolve_sources(cfg: BenchConfig) -> dict[str, dict]:
    """``{"reports": {...}, "metadata": {...}}``, each with its ``path``, where it came from and its sha256.
    A package member is checked against its pinned sha256; a local file is taken as it is."""
    from cxrpipe.text.model import check_sha256, pinned_sha256, sha256_file

    out: dict[str, dict] = {}
    need = [key for key in ("reports", "metadata") if getattr(cfg, key) is None]
    folder = package_folder(cfg.package, cfg.download_dir) if need else None
    for key in ("reports", "metadata"):
        local = getattr(cfg, key)
        if local is None:
            member = getattr(cfg, f"{key}_member")
            path = folder / member
            if not path.is_file():
                raise BenchDataError(f"params 'bench.{key}_member' = {member}: not in {cfg.package} at {folder}")
            check_sha256(path, pinned_sha256(cfg.package, member))
            origin = f"{cfg.package}:{member}"
        else:
            path = Path(local)
            if not path.is_file():
                raise BenchDataError(f"params 'bench.{key}' = {path}: no such file (null takes it from {cfg.package})")
            origin = "local file"
        out[key] = {"path": path, "origin": origin, "sha256": sha256_file(path)}
    return out


def read_view_positions(path: str | Path) -> dict[str, str]:
    """nlmcxr_dicom_metadata.csv(.gz) -> ``{imageid: View Position}`` (upper case; "" where the header had none)."""
    rows = iter_csv(path, METADATA_COLUMNS, error=DatasetFormatError, param="bench.metadata")
    return {r["imageid"].strip(): r["View Position"].strip().upper() for r in rows}


# ----------------------------------------------------------------------------------------------- the plan
def assign_views(image_ids: Iterable[str], view_positions: Mapping[str, str]) -> tuple[BenchImage, ...]:
    """Each image's view: its metadata View Position when that is a frontal or lateral one. An image without
    one (about a third of the headers are blank) becomes PA when no image of the study is frontal yet, else
    LATERAL (a study is one frontal and one lateral film, mostly)."""
    known = FRONTAL_VIEWS + LATERAL_VIEWS
    ids = list(image_ids)
    views = {i: view_positions.get(i, "") for i in ids}
    has_frontal = any(v in FRONTAL_VIEWS for v in views.values())
    out = []
    for i in ids:
        if views[i] in known:
            out.append(BenchImage(i, views[i]))
            continue
        out.append(BenchImage(i, "LATERAL" if has_frontal else "PA", inferred=True))
        has_frontal = True
    return tuple(out)


def mesh_hints(mesh_major: Iterable[str]) -> dict[str, dict[str, str]]:
    """The detail a report's MeSH coding states, per label: ``{label: {"side" | "zone" | "severity": value}}``
    in the renderer's values. Sides of several tags of a label combine (left and right: bilateral); the
    first zone and severity win."""
    sides: dict[str, set[str]] = {}
    hints: dict[str, dict[str, str]] = {}
    for tag in mesh_major:
        term, *quals = [p.strip() for p in tag.split("/")]
        quals = [q.lower() for q in quals]
        labels = [MESH_TO_CHEXPERT.get(term), MESH_EXTRA.get(term)]  # as mesh_to_chexpert looks a tag up
        labels += [MESH_TO_CHEXPERT.get(f"{term}/{q}") for q in quals]
        for label in dict.fromkeys(filter(None, labels)):
            hint = hints.setdefault(label, {})
            if label in SIDED:
                sides.setdefault(label, set()).update(q for q in quals if q in SIDE_WORDS)
            for field, words in (("zone", ZONE_WORDS.get(label, {})), ("severity", SEVERITY_WORDS.get(label, {}))):
                found = [words[q] for q in quals if q in words]
                if found and field not in hint:
                    hint[field] = found[0]
    for label, s in sides.items():
        if s:
            hints[label]["side"] = "bilateral" if "bilateral" in s or {"left", "right"} <= s else s.pop()
    return {label: h for label, h in hints.items() if h}


def study_contexts(labels: Mapping[str, float], views: Iterable[str]) -> tuple[str, ...]:
    """The demo's latent contexts a study's labels imply (they steer the drawn detail): ``icu`` for devices on
    a portable AP film, ``chf`` for a big heart with edema or effusion, ``infection`` for pneumonia or
    consolidation (which then share one focus with any opacity)."""
    present = {k for k, v in labels.items() if v in (1.0, -1.0)}
    out = []
    if "Support Devices" in present and "AP" in set(views):
        out.append("icu")
    if "Cardiomegaly" in present and present & {"Edema", "Pleural Effusion"}:
        out.append("chf")
    if present & {"Pneumonia", "Consolidation"}:
        out.append("infection")
    return tuple(out)


def plan_study(rep: IUReport, number: int, view_positions: Mapping[str, str], seed: int,
               mesh_details: bool = True) -> BenchStudy:
    """What one report's images show and which views they are (deterministic in ``seed`` and ``number``)."""
    images = assign_views(rep.image_ids, view_positions)
    labels = dict(zip(CHEXPERT_LABELS, rep.labels))
    hints = mesh_hints(rep.mesh_major) if mesh_details else {}
    contexts = study_contexts(labels, (im.view for im in images))
    findings = findings_from_labels(labels, np.random.default_rng([seed, 1, number]), contexts, hints)
    return BenchStudy(rep.uid, number, tuple(labels.values()), findings, images)


def render_study(study: BenchStudy, seed: int, size: int, folder: Path) -> list[dict]:
    """Draw and write the study's PNGs into ``folder``; return its rows of the projections table."""
    anatomy = radiograph.sample_anatomy(np.random.default_rng([seed, 2, study.number]))
    rows = []
    for k, im in enumerate(study.images):
        rng = np.random.default_rng([seed, 3, study.number, k])
        lateral = im.view in LATERAL_VIEWS
        pose = radiograph.sample_pose(rng, portable=im.view == "AP", lateral=lateral)
        draw = radiograph.draw_lateral if lateral else radiograph.draw_frontal
        img = draw(anatomy, pose, study.findings, size, rng)  # [H, W] in [0, 1]
        name = f"{im.image_id}.png"
        Image.fromarray(radiograph.to_uint8(img), mode="L").save(folder / name)
        rows.append({"uid": study.number, "filename": name, "projection": im.view})
    return rows


# ----------------------------------------------------------------------------------------------- the tree
def plan_bench(reports: Path, view_positions: Mapping[str, str], cfg: BenchConfig) -> tuple[list[BenchStudy], dict]:
    """Every report that names an image, planned (natural file order); and the counts of the reports not drawn
    (malformed, no image, no number in the uid, an image id that is not a plain file name)."""
    bad: list[tuple[str, str]] = []
    studies, skipped = [], {"reports": 0, "no_images": 0, "bad_uid": 0, "unsafe_image_id": 0}
    for rep in iter_iu_reports(reports, rejects=bad):
        skipped["reports"] += 1
        num = re.search(r"\d+", rep.uid)
        if num is None:
            skipped["bad_uid"] += 1
        elif not rep.image_ids:
            skipped["no_images"] += 1
        elif not all(_PLAIN_NAME.match(i) for i in rep.image_ids):
            skipped["unsafe_image_id"] += 1
        else:
            studies.append(plan_study(rep, int(num.group()), view_positions, cfg.seed, cfg.mesh_details))
    skipped["malformed"] = len(bad)
    return studies, skipped


def _counts(studies: list[BenchStudy], skipped: dict) -> dict:
    images = [im for s in studies for im in s.images]
    labels = np.array([s.labels for s in studies], dtype=float).reshape(-1, len(CHEXPERT_LABELS))
    views: dict[str, int] = {}
    for im in images:
        views[im.view] = views.get(im.view, 0) + 1
    return {
        "reports_read": skipped["reports"], "malformed_reports": skipped["malformed"],
        "reports_without_images": skipped["no_images"], "reports_with_bad_uid": skipped["bad_uid"],
        "reports_with_unsafe_image_id": skipped["unsafe_image_id"],
        "studies": len(studies), "images": len(images), "images_per_view": dict(sorted(views.items())),
        "views_inferred": sum(im.inferred for im in images),
        "studies_with_frontal": sum(any(im.view in FRONTAL_VIEWS for im in s.images) for s in studies),
        "unlabelled_studies": int(np.isnan(labels).all(axis=1).sum()),
        "labels": {name: {"1": int((col == 1).sum()), "-1": int((col == -1).sum())}
                   for name, col in zip(CHEXPERT_LABELS, labels.T)},
    }


def _write_projections(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=("uid", "filename", "projection"), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)


def write_bench_tree(cfg: BenchConfig, out_dir: str | Path) -> dict:
    """Write the bench tree into ``out_dir`` (replacing an earlier one of this stage, never another folder);
    return the counts. Written into a ``.partial`` sibling and renamed into place when complete."""
    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    check_replaceable(out_dir, STAGE)
    sources = resolve_sources(cfg)
    view_positions = read_view_positions(sources["metadata"]["path"])
    studies, skipped = plan_bench(sources["reports"]["path"], view_positions, cfg)
    tmp = out_dir.parent / f".{out_dir.name}.partial"
    remove_created_folder(tmp, STAGE)
    (tmp / IMAGES_DIR).mkdir(parents=True)
    mark_created(tmp, STAGE)
    rows = []
    for study in tqdm(studies, desc="bench studies", unit="study", disable=None):
        rows += render_study(study, cfg.seed, cfg.image_size, tmp / IMAGES_DIR)
    _write_projections(tmp / PROJECTIONS_CSV, rows)
    shutil.copyfile(sources["reports"]["path"], tmp / REPORTS_TGZ)
    counts = _counts(studies, skipped)
    generation = {
        "generator": "cxrpipe.data.bench", "version": __version__, "config": to_dict(cfg), "counts": counts,
        "sources": {k: {**v, "path": str(v["path"])} for k, v in sources.items()}, "licence": LICENCE,
        "note": "real IU X-ray report text; images drawn by the demo's renderer from each report's MeSH labels",
    }
    (tmp / GENERATION_JSON).write_text(json.dumps(generation, indent=2, sort_keys=True) + "\n")
    remove_created_folder(out_dir, STAGE)
    os.replace(tmp, out_dir)
    log.info("bench tree: %d studies, %d images (%d views inferred) in %.1f s -> %s", counts["studies"],
             counts["images"], counts["views_inferred"], time.perf_counter() - t0, out_dir)
    return counts
