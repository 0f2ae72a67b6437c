"""The ``prepare`` stage: a data source -> ``data/prepared/`` (manifest, image cache, report, rejects).

Two halves: the source's reader (from :mod:`cxrpipe.data.registry`: MIMIC-CXR(-JPG), IU X-ray) turns its files
into candidates (:class:`~cxrpipe.data.records.SourceRead`); :func:`write_prepared` decodes and writes them.
``transfer_prepare`` (:mod:`cxrpipe.data.transfer_prepare`) runs the same second half on NIH ChestX-ray14,
CheXpert and RSNA Pneumonia, with each dataset's own label columns.

Outputs in ``out_dir``:
  ``images.csv``, ``studies.csv``  the manifest (:mod:`cxrpipe.data.manifest`); only rows that made it
  ``images.h5``                    uint8 ``[N, S, S]`` letterboxed images, row i = images.csv row i
  ``prepare_report.json``          counts per split, view and label value; rejects per reason; losses; timing;
                                   ``split``: how splits are assigned (by subject; the study rule);
                                   ``source``, ``root`` and ``demo`` (true when root holds the demo's
                                   ``generation.json``) so later stages can say whose numbers they are
  ``rejects.csv``                  kind, id, path, reason, detail, action: every file or study dropped
                                   (``action=dropped``) or kept without labels (``action=unlabelled``)
  ``config.json``                  the resolved ``data`` and ``prepare`` sections

Decoding runs in worker processes (``prepare.workers``; 0 = in this process) that only decode + resize and
send arrays back. This process collects them and every ``prepare.flush_every`` rows writes one chunk file
into ``images.partial/`` atomically (temp file, fsync, ``os.replace``): a chunk is there whole or not at
all, so a run killed at ANY moment (SIGKILL included) loses at most the rows not yet in a chunk, and a
rerun decodes exactly those. Chunk names carry a key of everything the pixels depend on (root, size,
window, the list of images) and of the code that made them (package version + hash of the stage's source,
:mod:`cxrpipe.provenance`); chunks of another key are deleted, never reused. At the end the rows that
decoded are written, in manifest order, into ``images.h5`` (temp name + rename; the same bytes whether
or not the run was interrupted), the manifest with those rows only, and the chunks removed.

The run goes on past every bad file or study and fails (:class:`PrepareError`, after writing the report
and the rejects list) only when the share of selected images or studies lost exceeds
``prepare.max_reject_fraction``.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import csv
import dataclasses
import functools
import itertools
import json
import logging
import math
import multiprocessing
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Iterable, Literal

import numpy as np

from cxrpipe import __version__, provenance
from cxrpipe.io import UserError, write_json_atomic
from cxrpipe.config import save_config
from cxrpipe.data.archives import extract_tar_members, safe_target
from cxrpipe.data.image_cache import ImageCacheWriter
from cxrpipe.data.images import decode_chunk, decode_task
from cxrpipe.data.manifest import IMAGES_CSV, SPLITS, STUDIES_CSV, ImageRecord, StudyRecord, write_manifest
from cxrpipe.data.mimic import STUDY_SPLIT_RULE, subjects_in_several_splits
from cxrpipe.data.records import DatasetFormatError, ImageCandidate, Reject, SourceRead

log = logging.getLogger(__name__)

IMAGES_H5 = "images.h5"
EXTRACTED_DIR = "images.extracted"  # images extracted from a tarball source (IU X-ray's NLMCXR_png.tgz)
PARTIAL_DIR = "images.partial"  # atomically written chunk files of decoded rows (the resume state)
REPORT_JSON = "prepare_report.json"
REJECTS_CSV = "rejects.csv"
CONFIG_JSON = "config.json"
# Test hook: seconds to sleep after each chunk file (lets a test SIGKILL a run part-way at a known pace).
DELAY_ENV = "CXRPIPE_PREPARE_CHUNK_DELAY_S"
DEMO_MARKER = "generation.json"  # written by the demo generator at the root of its tree
REJECT_FIELDS = [f.name for f in dataclasses.fields(Reject)]


SPLIT_RULE = (
    "split by subject: the source's split table is used as given, and prepare fails if any subject has "
    "studies in two splits; " + STUDY_SPLIT_RULE
)


class PrepareError(UserError, RuntimeError):
    """prepare cannot produce a usable prepared set (too much lost, unsupported source, nothing selected)."""


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """params section ``data``: where the data is and what of it to use (read by prepare; sections by embed)."""

    source: Literal["mimic-cxr-jpg", "mimic-cxr", "iu-xray"] = "mimic-cxr-jpg"  # reader; mimic-cxr = DICOM tree
    root: Path = Path("data/demo")  # the image tree (files/p1X/...) and, unless `tables` is set, the CSVs
    reports: Path = Path("data/demo/mimic-cxr-reports.zip")  # mimic-cxr-reports.zip or its extracted folder
    tables: Path | None = None  # folder of the mimic-cxr-2.0.0-*.csv(.gz) tables; null = root (the DICOM
    # release lacks them: point this at MIMIC-CXR-JPG's)
    labeler: Literal["chexpert", "negbio"] = "chexpert"  # which label table: -chexpert or -negbio
    views: tuple[str, ...] = ("AP", "PA")  # ViewPosition values kept (frontal); [] keeps all; blank = UNKNOWN
    sections: tuple[str, ...] = ("findings", "impression")  # report sections kept in the cleaned text
    projections: Path | None = None  # iu-xray: indiana_projections.csv (uid, filename, projection); null = the
    # rule in iuxray.VIEW_RULE_NONE (views UNKNOWN)
    split_fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)  # sources without a split (iu-xray): train /
    # validate / test, seeded by report uid
    split_seed: int = 0  # that split's seed

    def __post_init__(self) -> None:
        """Names that would silently select nothing are errors listing the allowed values: a misspelt section
        (``finding``) used to drop that section's text from every report, a view the source never records
        to keep no image."""
        from cxrpipe.config import ConfigError
        from cxrpipe.data import registry
        from cxrpipe.data.reports import CANONICAL_SECTIONS

        unknown = [s for s in self.sections if s not in CANONICAL_SECTIONS]
        if unknown:
            raise ConfigError(f"params 'data.sections': unknown section name(s) {unknown}; allowed: "
                              f"{list(CANONICAL_SECTIONS)}")
        allowed = registry.get(self.source).views
        unknown = [v for v in self.views if v.upper() not in allowed]
        if unknown:
            raise ConfigError(f"params 'data.views': {unknown} is not a view of {self.source}; allowed: "
                              f"{list(allowed)} ([] keeps every view)")


@dataclasses.dataclass(frozen=True)
class PrepareConfig:
    """params section ``prepare``: the image cache and the loss tolerance."""

    image_size: int = 96  # S: images stored uint8 [S, S], longer side -> S, aspect kept, padded with 0
    workers: int = 2  # decoding processes; 0 decodes in the main process
    chunksize: int = 8  # images handed to a worker at a time (fewer messages; small keeps the bar smooth)
    flush_every: int = 256  # rows per chunk file in images.partial/ (the most a SIGKILL can lose)
    max_reject_fraction: float = 0.05  # fail when more than this share of selected images or studies is lost
    dicom_percentile: float = 0.5  # window p..100-p percentiles for DICOMs that carry no window; 0 = min-max


@dataclasses.dataclass
class PrepareReport:
    """What ``prepare_report.json`` holds (see the module doc)."""

    source: str
    root: str
    reports: str
    demo: bool
    counts: dict
    labels: dict  # label name -> {"1.0": n, "0.0": n, "-1.0": n, "blank": n} over kept labelled studies
    rejects: dict  # {"total": n, "by_reason": {"<kind>/<reason>": n}}
    lost: dict  # images/studies lost, their fractions, the limit
    timing: dict
    split: str = ""  # how images are assigned to splits (by subject; see SPLIT_RULE)
    failed: str | None = None  # the error message when the run failed on max_reject_fraction
    dataset: str = ""  # the registry name (cxrpipe.data.registry)
    label_names: list = dataclasses.field(default_factory=list)  # the label columns of studies.csv
    details: dict = dataclasses.field(default_factory=dict)  # the reader's own facts (views rule, seeds, coverage)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Target:
    """What the decode-and-write half needs besides the reader's result."""

    dataset: str  # registry name (also the report's ``source``)
    root: Path  # the dataset root as the user gave it (reported; the demo marker is looked for here)
    reports: str  # the reports source ("" for transfer sets)
    label_names: tuple[str, ...]  # studies.csv label columns
    config: dict  # what config.json records (the resolved params sections)


def run_prepare(data_cfg: DataConfig, prep_cfg: PrepareConfig, out_dir: str | Path) -> PrepareReport:
    """Read ``data_cfg``'s source (through :mod:`cxrpipe.data.registry`), decode its images into ``out_dir``
    and write the prepared set."""
    from cxrpipe.data import registry

    t0 = time.perf_counter()
    _check(prep_cfg)
    spec = registry.get(data_cfg.source)
    if spec.role != registry.Role.PRETRAIN:
        raise PrepareError(f"data.source {data_cfg.source!r} is a transfer set: use `cxrpipe transfer-prepare`")
    try:
        read = spec.read(data_cfg)
    except DatasetFormatError as e:  # a reader's layout error: one line, not a traceback
        raise PrepareError(str(e)) from None
    target = Target(data_cfg.source, Path(data_cfg.root), str(data_cfg.reports), spec.labels,
                    {"data": data_cfg, "prepare": prep_cfg})
    return write_prepared(read, target, prep_cfg, out_dir, t0=t0)


def write_prepared(read: SourceRead, target: Target, prep_cfg: PrepareConfig, out_dir: str | Path,
                   t0: float | None = None) -> PrepareReport:
    """A reader's candidates -> ``out_dir`` (decode with resume, image cache, manifest, report, rejects)."""
    t0 = time.perf_counter() if t0 is None else t0
    t_read = time.perf_counter()
    out_dir = Path(out_dir)
    _check(prep_cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    rejects = list(read.rejects)
    n_sel_images, n_sel_studies = read.counts["selected_images"], read.counts["studies_selected"]
    if n_sel_images == 0:
        raise PrepareError(f"no images selected from {target.root} (seen {read.counts.get('views_seen')}; rejects "
                           f"{dict(collections.Counter(r.reason for r in rejects))})")

    # fail before hours of decoding when the tables/reports already lose too much
    early = _lost(n_sel_images, len(read.images), n_sel_studies, len(read.studies), prep_cfg.max_reject_fraction)
    if early["fraction"] > prep_cfg.max_reject_fraction:
        report = _report(target, read, [], {}, rejects, early, {"read_s": round(t_read - t0, 3)})
        _fail(out_dir, report, rejects, target)

    mixed = subjects_in_several_splits(list(read.studies.values()))
    if mixed:
        ex = "; ".join(f"subject {s}: {v}" for s, v in list(mixed.items())[:5])
        raise PrepareError(
            f"{len(mixed)} subjects have studies in more than one split (e.g. {ex}): the split must be by subject, "
            "or a patient's images leak between training and testing. Fix the split table."
        )
    decode_root = _image_root(read, target, out_dir)
    ok, failures, stats = _decode_all(read.images, decode_root, prep_cfg, out_dir / PARTIAL_DIR)
    t_decode = time.perf_counter()
    for i, why in sorted(failures.items()):
        c = read.images[i]
        rejects.append(Reject("image", c.dicom_id, c.path, "decode_failed", why))

    kept_idx = [i for i in range(len(read.images)) if ok[i]]
    kept_studies_ids = {read.images[i].study_id for i in kept_idx}
    dropped = sorted(set(read.studies) - kept_studies_ids)
    folder_of = {c.study_id: c.path.rsplit("/", 1)[0] for c in read.images}
    for sid in dropped:
        folder = folder_of[sid]
        rejects.append(Reject("study", str(sid), folder, "no_images", "every selected image of the study failed to decode"))
    dropped_set = set(dropped)
    rejects = [r for r in rejects if not (r.kind == "labels" and r.id.isdigit() and int(r.id) in dropped_set)]
    studies = [s for sid, s in read.studies.items() if sid in kept_studies_ids]
    images = [ImageRecord(row=row, **dataclasses.asdict(read.images[i])) for row, i in enumerate(kept_idx)]

    lost = _lost(n_sel_images, len(images), n_sel_studies, len(studies), prep_cfg.max_reject_fraction)
    timing = {
        "read_s": round(t_read - t0, 3),
        "decode_s": round(t_decode - t_read, 3),
        **stats,
        "images_per_s": round(stats["decoded"] / max(t_decode - t_read, 1e-9), 2),
        "workers": prep_cfg.workers,
    }
    report = _report(target, read, images, {s.study_id: s for s in studies}, rejects, lost, timing)
    if lost["fraction"] > prep_cfg.max_reject_fraction:
        _fail(out_dir, report, rejects, target)

    _remove_previous(out_dir)  # a crash below must not leave a new images.h5 beside an old manifest
    _write_image_cache(out_dir, kept_idx, [r.dicom_id for r in images], prep_cfg, decode_root, target.dataset)
    write_manifest(out_dir, images, studies, label_names=target.label_names)
    report.timing["total_s"] = round(time.perf_counter() - t0, 3)
    _write_outputs(out_dir, report, rejects, target)
    ChunkStore(out_dir / PARTIAL_DIR, "").remove()
    if read.image_tar is not None:
        shutil.rmtree(out_dir / EXTRACTED_DIR, ignore_errors=True)
    _log_rejects(rejects, out_dir, target.root)
    log.info(
        "prepared %d images of %d studies (%s) into %s in %.1fs; lost %.2f%% of selected images",
        len(images), len(studies), report.counts["by_split"], out_dir, report.timing["total_s"], 100 * lost["images_fraction"],
    )
    return report


def _image_root(read: SourceRead, target: Target, out_dir: Path) -> Path:
    """Where the candidates' paths resolve: the reader's image root, or (a tarball of images) the members
    extracted once into ``out_dir/images.extracted`` (kept until the run succeeds, so a rerun reuses them)."""
    if read.image_tar is None:
        return Path(read.image_root or target.root)
    dest = out_dir / EXTRACTED_DIR
    need = {c.path for c in read.images if not safe_target(dest, c.path).is_file()}
    if need:
        log.info("extracting %d images from %s into %s", len(need), read.image_tar, dest)
        extract_tar_members(read.image_tar, need, dest, param="data.root")
    return dest


def _check(cfg: PrepareConfig) -> None:
    if cfg.image_size < 8:
        raise PrepareError(f"prepare.image_size {cfg.image_size} is too small (>= 8)")
    if cfg.workers < 0 or cfg.chunksize < 1 or cfg.flush_every < 1:
        raise PrepareError("prepare.workers must be >= 0, chunksize and flush_every >= 1")
    if not 0.0 <= cfg.max_reject_fraction <= 1.0:
        raise PrepareError(f"prepare.max_reject_fraction {cfg.max_reject_fraction} is not in [0, 1]")
    if not 0.0 <= cfg.dicom_percentile < 50.0:
        raise PrepareError(f"prepare.dicom_percentile {cfg.dicom_percentile} is not in [0, 50)")


# --------------------------------------------------------------------------------------------- decoding
def _decode_key(root: Path, prep_cfg: PrepareConfig) -> str:
    """What the decoded pixels depend on beyond the dicom_ids: a partial cache is resumed only if equal."""
    return json.dumps(
        {"root": str(Path(root).resolve()), "size": prep_cfg.image_size, "percentile": prep_cfg.dicom_percentile}
    )


def _chunk_key(root: Path, prep_cfg: PrepareConfig, cands: list[ImageCandidate]) -> str:
    """16 hex of: decode settings, the candidate list (index -> file), the code (version + source hash)."""
    import hashlib

    h = hashlib.sha256(_decode_key(root, prep_cfg).encode())
    h.update(provenance.code_key("prepare").encode())
    for c in cands:
        h.update(f"{c.dicom_id}|{c.path}\n".encode())
    return h.hexdigest()[:16]


class ChunkStore:
    """``images.partial/``: decoded rows as atomically written ``.npz`` chunks named ``chunk-<key>-<n>.npz``.

    A chunk holds ``rows`` int64 ``[n]`` (candidate indices) and ``images`` uint8 ``[n, S, S]``. Chunks of
    another key are deleted on open; an unreadable one (a damaged disk) is deleted and its rows redone.
    """

    def __init__(self, folder: Path, key: str):
        self.folder, self.key = Path(folder), key
        self.files: list[Path] = []

    def open(self, n_rows: int) -> np.ndarray:
        """Load the index of the chunks there; -> done [n_rows] bool."""
        self.folder.mkdir(parents=True, exist_ok=True)
        done = np.zeros(n_rows, dtype=bool)
        for f in sorted(self.folder.glob("chunk-*")):  # only ever touch our own files
            if not f.name.startswith(f"chunk-{self.key}-") or not f.name.endswith(".npz"):
                f.unlink()  # other settings or code, or a temp file of a killed write
                continue
            try:
                with np.load(f) as z:
                    rows = z["rows"]
                    if z["images"].shape[0] != len(rows) or rows.max(initial=-1) >= n_rows:
                        raise ValueError("rows and images disagree")
            except Exception as e:  # noqa: BLE001 - any damage: redo these rows
                log.warning("dropping unreadable chunk %s (%s); its rows are decoded again", f, e)
                f.unlink()
                continue
            done[rows] = True
            self.files.append(f)
        return done

    def write(self, rows: list[int], images: list[np.ndarray]) -> None:
        # numbered past every chunk there (never the number of a dropped one: that could overwrite a live one)
        n = 1 + max([int(f.stem.rsplit("-", 1)[1]) for f in self.files] + [-1])
        path = self.folder / f"chunk-{self.key}-{n:06d}.npz"
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as fh:
            np.savez(fh, rows=np.asarray(rows, dtype=np.int64), images=np.stack(images))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        self.files.append(path)

    def where(self) -> dict[int, tuple[int, int]]:
        """``{row: (chunk number, position in it)}`` over every chunk."""
        out = {}
        for k, f in enumerate(self.files):
            with np.load(f) as z:
                for j, r in enumerate(z["rows"].tolist()):
                    out[r] = (k, j)
        return out

    def load(self, k: int) -> np.ndarray:
        with np.load(self.files[k]) as z:
            return z["images"]

    def remove(self) -> None:
        if self.folder.is_dir():
            for f in self.folder.glob("chunk-*"):
                f.unlink()
            if not any(self.folder.iterdir()):  # never remove what we did not write
                self.folder.rmdir()


# in-process decoding goes through this name (tests interrupt a run by replacing it); workers run
# images.decode_chunk, which is the same work over a chunk
_decode_task = decode_task
# worker initializer: Ctrl-C is the main process's to handle (a partial, so workers need not import this module)
_IGNORE_SIGINT = functools.partial(signal.signal, signal.SIGINT, signal.SIG_IGN)


def _decode_all(
    cands: list[ImageCandidate], root: Path, prep_cfg: PrepareConfig, partial: Path
) -> tuple[np.ndarray, dict[int, str], dict]:
    """Decode every candidate (paths under ``root``) into chunks under ``partial`` (resuming).
    -> (ok [N] bool, {index: reason}, stats)."""
    store = ChunkStore(partial, _chunk_key(root, prep_cfg, cands))
    done = store.open(len(cands))
    ok = done.copy()
    todo = [(i, str(Path(root) / c.path), prep_cfg.image_size, prep_cfg.dicom_percentile) for i, c in enumerate(cands) if not done[i]]
    if done.any():
        log.info("resuming: %d of %d images already decoded in %s", int(done.sum()), len(cands), partial)
    failures: dict[int, str] = {}
    delay = float(os.environ.get(DELAY_ENV, "0") or 0)
    rows: list[int] = []
    images: list[np.ndarray] = []
    try:
        for i, image, why in _iter_decoded(todo, prep_cfg):
            if image is None:
                failures[i] = why
                continue
            rows.append(i)
            images.append(image)
            if len(rows) == prep_cfg.flush_every:
                store.write(rows, images)
                ok[rows] = True
                rows, images = [], []
                if delay:
                    time.sleep(delay)
    finally:  # Ctrl-C or an error: keep what was decoded (a SIGKILL loses at most flush_every rows)
        if rows:
            store.write(rows, images)
            ok[rows] = True
    stats = {"decoded": len(todo), "resumed": int(done.sum()), "failed": len(failures)}
    return ok, failures, stats


def _iter_decoded(todo: list[tuple], cfg: PrepareConfig) -> Iterable[tuple[int, np.ndarray | None, str | None]]:
    """Decoded results in completion order; at most ``4 * workers`` chunks in flight (bounded memory)."""
    from cxrpipe.progress import progress

    bar = progress(total=len(todo), desc="decode", unit="img", mininterval=2.0)
    try:
        if cfg.workers == 0 or len(todo) <= 1:
            for task in todo:
                yield _decode_task(task)
                bar.update()
            return
        chunks = iter([todo[i : i + cfg.chunksize] for i in range(0, len(todo), cfg.chunksize)])
        # spawn: no h5py handle or other state crosses into the workers. A worker that dies (a decoder
        # crash, the OOM killer) breaks the pool with an error instead of hanging the run.
        ctx = multiprocessing.get_context("spawn")
        with cf.ProcessPoolExecutor(cfg.workers, mp_context=ctx, initializer=_IGNORE_SIGINT) as pool:
            pending: dict[cf.Future, list[tuple]] = {}
            for chunk in itertools.islice(chunks, 4 * cfg.workers):
                pending[pool.submit(decode_chunk, chunk)] = chunk
            while pending:
                finished, _ = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
                for fut in finished:
                    chunk = pending.pop(fut)
                    try:
                        results = fut.result()
                    except cf.process.BrokenProcessPool:
                        paths = ", ".join(t[1] for t in chunk)
                        raise PrepareError(
                            "a decoding worker died (out of memory, or a decoder crashed); images in flight "
                            f"included: {paths}. Rows decoded so far are kept: run prepare again to resume."
                        ) from None
                    for res in results:
                        yield res
                    bar.update(len(results))
                    nxt = next(chunks, None)
                    if nxt is not None:
                        pending[pool.submit(decode_chunk, nxt)] = nxt
    finally:
        bar.close()


def _write_image_cache(out_dir: Path, kept_idx: list[int], kept_ids: list[str], prep_cfg: PrepareConfig, root: Path,
                       source: str) -> None:
    """Chunks -> ``images.h5`` holding only the rows that decoded, in manifest order (so the bytes do not
    depend on the order the rows were decoded in, nor on interruptions). Reads the output in blocks of
    ~64 MB, loading each chunk a block needs once."""
    store = ChunkStore(out_dir / PARTIAL_DIR, _chunk_key(root, prep_cfg, []))
    store.files = sorted((out_dir / PARTIAL_DIR).glob("chunk-*.npz"))
    where = store.where()
    attrs = {"decode_key": _decode_key(root, prep_cfg), "source": source, "package_version": __version__}
    block = max(1, (64 << 20) // (prep_cfg.image_size**2))
    with ImageCacheWriter(out_dir / IMAGES_H5, kept_ids, prep_cfg.image_size, attrs=attrs) as dst:
        for start in range(0, len(kept_idx), block):
            idx = kept_idx[start : start + block]
            need: dict[int, list[tuple[int, int]]] = collections.defaultdict(list)  # chunk -> (out j, pos)
            for j, i in enumerate(idx):
                k, pos = where[i]
                need[k].append((j, pos))
            out = np.empty((len(idx), prep_cfg.image_size, prep_cfg.image_size), dtype=np.uint8)
            for k, pairs in need.items():
                arr = store.load(k)
                for j, pos in pairs:
                    out[j] = arr[pos]
            for j in range(len(idx)):
                dst.write(start + j, out[j])


# ------------------------------------------------------------------------------------------ report, io
def _lost(sel_images: int, kept_images: int, sel_studies: int, kept_studies: int, limit: float) -> dict:
    fi = 1.0 - kept_images / sel_images if sel_images else 0.0
    fs = 1.0 - kept_studies / sel_studies if sel_studies else 0.0
    return {
        "selected_images": sel_images, "selected_studies": sel_studies,
        "images": sel_images - kept_images, "images_fraction": round(fi, 6),
        "studies": sel_studies - kept_studies, "studies_fraction": round(fs, 6),
        "fraction": round(max(fi, fs), 6), "max_reject_fraction": limit,
    }


def _report(target: Target, read: SourceRead, images, studies: dict[int, StudyRecord], rejects, lost, timing) -> PrepareReport:
    by_split = {s: {"images": 0, "studies": 0} for s in SPLITS}
    for r in images:
        by_split[r.split]["images"] += 1
    for s in studies.values():
        by_split[s.split]["studies"] += 1
    labels = {name: {"1.0": 0, "0.0": 0, "-1.0": 0, "blank": 0} for name in target.label_names}
    for s in studies.values():
        if s.has_labels:
            for name, v in zip(target.label_names, s.labels):
                labels[name]["blank" if math.isnan(v) else f"{v:.1f}"] += 1
    n_labelled = sum(s.has_labels for s in studies.values())
    counts = {
        **read.counts,
        "images": len(images),
        "studies": len(studies),
        "studies_with_labels": n_labelled,
        "studies_without_labels": len(studies) - n_labelled,
        "by_split": by_split,
        "by_view": dict(sorted(collections.Counter(r.view for r in images).items())),
    }
    by_reason = collections.Counter(f"{r.kind}/{r.reason}" for r in rejects)
    return PrepareReport(
        source=target.dataset, root=str(target.root), reports=target.reports,
        demo=(Path(target.root) / DEMO_MARKER).is_file(), counts=counts, labels=labels,
        rejects={"total": len(rejects), "by_reason": dict(sorted(by_reason.items()))}, lost=lost, timing=timing,
        split=read.split_rule or SPLIT_RULE, dataset=target.dataset, label_names=list(target.label_names),
        details=read.details,
    )


def _write_outputs(out_dir: Path, report: PrepareReport, rejects: list[Reject], target: Target) -> None:
    tmp = out_dir / (REJECTS_CSV + ".tmp")
    with tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=REJECT_FIELDS)
        w.writeheader()
        for r in rejects:
            w.writerow(dataclasses.asdict(r))
    os.replace(tmp, out_dir / REJECTS_CSV)
    write_json_atomic(out_dir / REPORT_JSON, report.to_dict())
    save_config({**target.config, "package_version": __version__}, out_dir / CONFIG_JSON)


def _remove_previous(out_dir: Path) -> None:
    for name in (IMAGES_CSV, STUDIES_CSV, IMAGES_H5, REPORT_JSON):
        (out_dir / name).unlink(missing_ok=True)


def _fail(out_dir: Path, report: PrepareReport, rejects: list[Reject], target: Target) -> None:
    """Write the report and the rejects (not the manifest), then raise with the biggest reasons named."""
    lost = report.lost
    top = ", ".join(f"{k}: {n}" for k, n in collections.Counter(report.rejects["by_reason"]).most_common(4))
    msg = (
        f"prepare lost {lost['images']} of {lost['selected_images']} selected images "
        f"({100 * lost['images_fraction']:.1f}%) and {lost['studies']} of {lost['selected_studies']} studies "
        f"({100 * lost['studies_fraction']:.1f}%), more than prepare.max_reject_fraction = {lost['max_reject_fraction']}; "
        f"biggest reasons: {top or 'none'}. See {out_dir / REJECTS_CSV}; fix the data or raise the limit."
    )
    report.failed = msg
    _remove_previous(out_dir)  # an earlier run's manifest must not pass for this run's
    _write_outputs(out_dir, report, rejects, target)
    _log_rejects(rejects, out_dir, target.root)
    raise PrepareError(msg)


def _log_rejects(rejects: list[Reject], out_dir: Path, root: Path | None = None) -> None:
    """One line per reason: how many, and one example (what, which file); on the demo tree, the lines
    that are its planted faults say so (:mod:`cxrpipe.data.demo_faults`)."""
    from cxrpipe.data.demo_faults import PlantedFaults

    planted = PlantedFaults(root) if root is not None else None
    groups: dict[str, list[Reject]] = collections.defaultdict(list)
    for r in rejects:
        groups[f"{r.kind}/{r.reason}"].append(r)
    for key, group in sorted(groups.items()):
        r, count = group[0], len(group)
        what = "image" if r.kind == "image" else "study"
        what = what if count == 1 else ("images" if what == "image" else "studies")
        verb = "kept without labels" if r.action == "unlabelled" else "dropped"
        note = planted.note(group) if planted is not None else ""
        log.warning("%d %s %s (%s), e.g. %s %s: %s%s", count, what, verb, r.reason, r.id, r.path, r.detail, note)
    if rejects:
        log.warning("all %d listed in %s", len(rejects), out_dir / REJECTS_CSV)
