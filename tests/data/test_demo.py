"""The demo generator: MIMIC-CXR-JPG layout, determinism, labels vs report text, the drawn signs, DICOMs,
the deliberate corruptions and the stage CLI. Tiny trees (12 studies at 64 px), seconds in all."""

import csv
import gzip
import json
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from cxrpipe.config import ConfigError, section
from cxrpipe.data.demo import CORRUPTION_KINDS, DemoConfig, write_demo_tree
from cxrpipe.data.demo import dicom as demo_dicom
from cxrpipe.data.demo import radiograph as R
from cxrpipe.data.demo.findings import Finding, StudyFindings, sample_findings
from cxrpipe.data.demo.report import Layout, render_report
from cxrpipe.labels import CHEXPERT_LABELS, parse_raw_label

SMALL = DemoConfig(seed=7, n_studies=12, image_size=64)
METADATA_COLUMNS = [
    "dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition", "Rows", "Columns",
    "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning", "ViewCodeSequence_CodeMeaning",
    "PatientOrientationCodeSequence_CodeMeaning",
]
DICOM_ID = re.compile(r"^[0-9a-f]{8}(-[0-9a-f]{8}){4}$")


def read_csv(path: Path) -> list[dict]:
    with gzip.open(path, "rt", newline="") as f:
        return list(csv.DictReader(f))


def header(path: Path) -> list[str]:
    with gzip.open(path, "rt", newline="") as f:
        return next(csv.reader(f))


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "demo"
    write_demo_tree(SMALL, out)
    return out


def image_path(root: Path, row: dict) -> Path:
    sid = row["subject_id"]
    return root / f"files/p{sid[:2]}/p{sid}/s{row['study_id']}" / row["dicom_id"]


def corruptions(root: Path) -> list[dict]:
    return json.loads((root / "DEMO_CORRUPTIONS.json").read_text())


# ---------------------------------------------------------------- layout


def test_csv_names_and_columns_are_mimics(tree):
    assert header(tree / "mimic-cxr-2.0.0-metadata.csv.gz") == METADATA_COLUMNS
    assert header(tree / "mimic-cxr-2.0.0-split.csv.gz") == ["dicom_id", "study_id", "subject_id", "split"]
    for name in ("chexpert", "negbio"):
        assert header(tree / f"mimic-cxr-2.0.0-{name}.csv.gz") == ["subject_id", "study_id", *CHEXPERT_LABELS]
        for row in read_csv(tree / f"mimic-cxr-2.0.0-{name}.csv.gz"):
            assert {row[n] for n in CHEXPERT_LABELS} <= {"1.0", "0.0", "-1.0", ""}
            for n in CHEXPERT_LABELS:
                parse_raw_label(row[n])


def test_path_scheme_ids_and_split_by_subject(tree):
    meta = read_csv(tree / "mimic-cxr-2.0.0-metadata.csv.gz")
    split = read_csv(tree / "mimic-cxr-2.0.0-split.csv.gz")
    assert [r["dicom_id"] for r in split] == [r["dicom_id"] for r in meta]
    missing = {c["dicom_id"] for c in corruptions(tree) if c["kind"] == "missing_image"}
    for r in meta:
        assert DICOM_ID.match(r["dicom_id"]), r["dicom_id"]
        assert 10_000_000 <= int(r["subject_id"]) <= 19_999_999 and 50_000_000 <= int(r["study_id"]) <= 59_999_999
        files = [p for p in (image_path(tree, r).with_suffix(e) for e in (".jpg", ".dcm")) if p.exists()]
        assert len(files) == (0 if r["dicom_id"] in missing else 1), r
    subject_split: dict[str, set] = {}
    for r in split:
        assert r["split"] in ("train", "validate", "test")
        subject_split.setdefault(r["subject_id"], set()).add(r["split"])
    assert all(len(s) == 1 for s in subject_split.values())  # no subject in two splits
    names = zipfile.ZipFile(tree / "mimic-cxr-reports.zip").namelist()
    assert all(re.match(r"^files/p1\d/p1\d{7}/s5\d{7}\.txt$", n) for n in names)
    assert len(names) == SMALL.n_studies - sum(c["kind"] == "missing_report" for c in corruptions(tree))


def test_views_labels_rows_and_report_layouts(tree):
    meta = read_csv(tree / "mimic-cxr-2.0.0-metadata.csv.gz")
    views = {r["ViewPosition"] for r in meta}
    assert {"PA", "AP"} & views and {"LATERAL", "LL"} <= views
    chexpert = {r["study_id"] for r in read_csv(tree / "mimic-cxr-2.0.0-chexpert.csv.gz")}
    studies = {r["study_id"] for r in meta}
    assert chexpert < studies  # some studies have no labels row
    gen = json.loads((tree / "generation.json").read_text())
    assert len(studies - chexpert) == gen["counts"]["unlabeled_studies"] >= 1
    texts = [t.decode() for t in map(zipfile.ZipFile(tree / "mimic-cxr-reports.zip").read,
                                     zipfile.ZipFile(tree / "mimic-cxr-reports.zip").namelist())]
    assert all(t.startswith(" " * 33 + "FINAL REPORT\n") for t in texts)
    assert any("\n IMPRESSION:" in t and "FINDINGS" not in t for t in texts)  # impression only
    assert any("\n FINDINGS: \n" in t and "\n IMPRESSION: \n" in t for t in texts)
    assert any("FINDINGS AND IMPRESSION:" in t or "CONCLUSION:" in t for t in texts)
    assert any("___" in t for t in texts)


# ---------------------------------------------------------------- determinism


def test_same_seed_same_bytes_and_arrays(tree, tmp_path):
    again = tmp_path / "again"
    write_demo_tree(SMALL, again)
    tables = [f"mimic-cxr-2.0.0-{t}.csv.gz" for t in ("metadata", "split", "chexpert", "negbio")]
    for name in (*tables, "mimic-cxr-reports.zip", "DEMO_CORRUPTIONS.json", "generation.json"):
        assert (tree / name).read_bytes() == (again / name).read_bytes(), name
    jpgs = sorted(p.relative_to(tree) for p in tree.rglob("*.jpg") if p.stat().st_size > 0)
    assert jpgs == sorted(p.relative_to(again) for p in again.rglob("*.jpg") if p.stat().st_size > 0)
    for rel in jpgs:
        if not any(c["path"] == str(rel) for c in corruptions(tree)):
            assert np.array_equal(np.asarray(Image.open(tree / rel)), np.asarray(Image.open(again / rel)))
    other = tmp_path / "other"
    write_demo_tree(DemoConfig(seed=8, n_studies=12, image_size=64), other)
    assert (tree / tables[2]).read_bytes() != (other / tables[2]).read_bytes()



def test_same_seed_same_bytes_across_processes(tmp_path):
    """Another process (another PYTHONHASHSEED, as each `dvc repro` is) writes the very same tree: no
    iteration over a set or dict of strings may steer a random draw."""
    import os
    import subprocess
    import sys

    code = (
        "import sys; from cxrpipe.data.demo import DemoConfig, write_demo_tree; "
        "write_demo_tree(DemoConfig(seed=3, n_studies=40, image_size=32, n_dicom=0), sys.argv[1])"
    )
    outs = []
    for hash_seed in ("1", "2"):
        out = tmp_path / f"tree{hash_seed}"
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        subprocess.run([sys.executable, "-c", code, str(out)], check=True, env=env)
        outs.append(out)
    for name in ("mimic-cxr-reports.zip", "mimic-cxr-2.0.0-chexpert.csv.gz", "generation.json"):
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes(), name


# ---------------------------------------------------------------- DICOM and corruptions


def test_dicom_files_read_back_with_their_photometric_and_bits(tree):
    pydicom = pytest.importorskip("pydicom")
    files = sorted(tree.rglob("*.dcm"))
    assert files
    seen = set()
    meta = {r["dicom_id"]: r for r in read_csv(tree / "mimic-cxr-2.0.0-metadata.csv.gz")}
    for p in files:
        ds = pydicom.dcmread(p)
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert 12 <= ds.BitsStored <= 16 and ds.HighBit == ds.BitsStored - 1
        px = ds.pixel_array
        assert px.shape == (int(meta[p.stem]["Rows"]), int(meta[p.stem]["Columns"])) and px.max() < 2**ds.BitsStored
        assert ds.PatientID == meta[p.stem]["subject_id"] and ds.ViewPosition == meta[p.stem]["ViewPosition"]
        seen.add((ds.PhotometricInterpretation, int(ds.BitsStored)))
    assert {p for p, _ in seen} == {"MONOCHROME1", "MONOCHROME2"}


@pytest.mark.parametrize("variant", demo_dicom.VARIANTS, ids=lambda v: f"{v.photometric}-{v.bits_stored}")
def test_dicom_variants_display_as_the_drawn_image(tmp_path, variant):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    img = np.linspace(0, 1, 40 * 30, dtype=np.float32).reshape(40, 30)
    path = tmp_path / "x.dcm"
    demo_dicom.write_dicom(path, img, variant, seed=0, dicom_id="a", subject_id=10000001, study_id=50000001,
                           view="PA", study_date="21500101", study_time="120000.000", description="CHEST (PA)")
    ds = pydicom.dcmread(path)
    shown = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds).astype(np.float64)
    shown = (shown - shown.min()) / (shown.max() - shown.min())
    if ds.PhotometricInterpretation == "MONOCHROME1":
        shown = 1 - shown
    assert ds.PhotometricInterpretation == variant.photometric and ds.BitsStored == variant.bits_stored
    assert np.abs(shown - img).max() < 0.01


def test_corruptions_are_recorded_and_real(tree):
    cs = corruptions(tree)
    assert sorted(c["kind"] for c in cs) == sorted(CORRUPTION_KINDS[: SMALL.n_corrupt])
    names = set(zipfile.ZipFile(tree / "mimic-cxr-reports.zip").namelist())
    meta_ids = {r["dicom_id"] for r in read_csv(tree / "mimic-cxr-2.0.0-metadata.csv.gz")}
    for c in cs:
        p = tree / c["path"]
        if c["kind"] == "zero_byte_image":
            assert p.stat().st_size == 0
        elif c["kind"] == "truncated_image":
            with pytest.raises(OSError):
                Image.open(p).load()
        elif c["kind"] == "missing_image":
            assert not p.exists() and c["dicom_id"] in meta_ids
        elif c["kind"] == "missing_report":
            assert c["path"] not in names
        elif c["kind"] == "empty_report":
            text = zipfile.ZipFile(tree / "mimic-cxr-reports.zip").read(c["path"]).decode()
            assert text.strip() == "FINAL REPORT"


# ---------------------------------------------------------------- labels and text


def test_prevalence_and_co_occurrence_are_plausible():
    rng = np.random.default_rng(0)
    studies = [sample_findings(rng) for _ in range(4000)]
    labels = np.array([s.labels() for s in studies])
    pos = labels == 1
    rate = dict(zip(CHEXPERT_LABELS, pos.mean(0)))
    assert all(0.025 < r < 0.4 for r in rate.values()), rate
    assert 0.08 < pos.mean() < 0.2  # MIMIC-CXR: 12.8% of label cells positive
    assert (labels == -1).any(0).all() or (labels[:, CHEXPERT_LABELS.index("Support Devices")] != -1).all()
    cm, ed = pos[:, CHEXPERT_LABELS.index("Cardiomegaly")], pos[:, CHEXPERT_LABELS.index("Edema")]
    assert ed[cm].mean() > 2 * ed[~cm].mean()
    nf = labels[:, CHEXPERT_LABELS.index("No Finding")]
    assert set(np.unique(nf[~np.isnan(nf)])) == {1.0}


KEYWORDS = {
    "Atelectasis": ("atelectasis",), "Cardiomegaly": ("cardiomegaly", "heart", "cardiac"),
    "Consolidation": ("consolidation",), "Edema": ("edema",), "Enlarged Cardiomediastinum": ("mediastin",),
    "Fracture": ("fracture",), "Lung Lesion": ("nodul", "mass"), "Lung Opacity": ("opacity",),
    "Pleural Effusion": ("effusion",), "Pleural Other": ("pleural thickening", "pleural cap"),
    "Pneumonia": ("pneumonia",), "Pneumothorax": ("pneumothorax",),
    "Support Devices": ("tube", "line", "catheter", "pacemaker", "picc"),
}
HEDGES = ("possible", "possibly", "cannot be excluded", "may ", "borderline", "questioned", "concerning")


def test_report_states_labels_with_laterality_hedges_and_negations():
    rng = np.random.default_rng(1)
    for i in range(300):
        study = sample_findings(rng)
        layout = (Layout.STANDARD, Layout.IMPRESSION_ONLY)[i % 2]
        text = " ".join(render_report(study, ["PA", "LATERAL"], layout, rng).lower().split())  # unwrap lines
        for f in study.findings:
            assert any(k in text for k in KEYWORDS[f.label]), (f, text)
            if f.side in ("left", "right") and f.label not in ("Support Devices", "Atelectasis"):
                assert f.side in text or (f.side == "left" and "lingula" in text), (f, text)
            if not f.certain:
                assert any(h in text for h in HEDGES), (f, text)
        for label in study.negated:
            assert any(k in text for k in KEYWORDS[label]), (label, text)
            assert re.search(r"\bno\b|\bnot\b|\bnormal\b", text), (label, text)
        if study.normal and not study.findings:
            assert "no acute" in text or "normal chest" in text or "no evidence of acute" in text


# ---------------------------------------------------------------- the drawn signs


def _pair(seed: int, *findings: Finding):
    """The same anatomy, pose and noise drawn without and with ``findings`` (no pixel noise)."""
    rng = np.random.default_rng(seed)
    anatomy = R.sample_anatomy(rng)
    pose = R.Pose(**{**R.sample_pose(rng, False).__dict__, "noise": 0.0, "angle": 0.0})
    def draw(fs):
        return R.draw_frontal(anatomy, pose, StudyFindings(tuple(fs), (), ()), 128, np.random.default_rng(0))

    frame = R.make_frame(128, pose, np.random.default_rng(0))
    return draw(()), draw(findings), R.Thorax(anatomy, frame, anatomy.heart_ratio, 0.0), anatomy, pose, frame


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_effusion_whitens_its_costophrenic_angle_only(seed):
    base, eff, th, *_ = _pair(seed, Finding("Pleural Effusion", True, side="left", severity="moderate"))
    faint = _pair(seed, Finding("Pleural Effusion", False, side="left", severity="moderate"))[1]
    corner = {s: (th.side == s) & (th.lung > 0.5) & (th.f.y > th.cp_y[s] - 0.08) for s in (-1, 1)}
    gain = eff[corner[1]].mean() - base[corner[1]].mean()  # the patient's left = image right
    assert gain > 0.08
    assert abs(eff[corner[-1]].mean() - base[corner[-1]].mean()) < 0.01
    assert 0.01 < faint[corner[1]].mean() - base[corner[1]].mean() < gain  # uncertain: fainter


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cardiomegaly_widens_the_heart(seed):
    finding = Finding("Cardiomegaly", True, severity="moderate")
    base, big, th, anatomy, pose, frame = _pair(seed, finding)
    wide = R.Thorax(anatomy, frame, R.apparent_heart_ratio(anatomy, pose, StudyFindings((finding,), (), ())), 0.0)
    normal = R.Thorax(anatomy, frame, R.apparent_heart_ratio(anatomy, pose, StudyFindings((), (), ())), 0.0)
    assert wide.heart_half > 1.1 * normal.heart_half
    ring = (wide.heart > 0.5) & (normal.heart < 0.5) & (normal.lung > 0.5)  # lung the bigger heart covers
    assert ring.sum() > 20
    assert big[ring].mean() - base[ring].mean() > 0.05


@pytest.mark.parametrize("seed", [0, 1])
def test_pneumothorax_is_dark_and_without_markings_at_the_apex(seed):
    base, ptx, th, *_ = _pair(seed, Finding("Pneumothorax", True, side="right", severity="large"))
    c = (th.M + th.T) / 2
    rim = (th.side == -1) & (th.d_wall > -0.03) & (th.d_wall < -0.005) & (th.u > c) & (th.f.y < th.a.apex_y + 0.3)
    assert rim.sum() > 10
    assert ptx[rim].mean() < base[rim].mean() - 0.03  # darker: no lung tissue
    assert ptx[rim].std() < base[rim].std()  # and no vessel markings


def test_endotracheal_tube_is_a_bright_line_on_the_midline():
    base, ett, th, *_ = _pair(0, Finding("Support Devices", True, devices=("ett",), size_cm=4.0))
    column = (np.abs(th.f.x) < 0.006) & (th.f.y > 0.02) & (th.f.y < th.a.apex_y + 0.1)
    assert ett[column].mean() > base[column].mean() + 0.1


# ---------------------------------------------------------------- config and CLI


def test_config_is_strict():
    with pytest.raises(ConfigError):
        section({"demo": {"seed": 0, "n_studys": 5}}, "demo", DemoConfig)
    with pytest.raises(ConfigError):
        DemoConfig(split=(0.5, 0.5, 0.5))
    with pytest.raises(ConfigError):
        DemoConfig(n_studies=3, n_dicom=2, n_corrupt=2)
    assert section({"demo": {"split": [0.6, 0.2, 0.2]}}, "demo", DemoConfig).split == (0.6, 0.2, 0.2)


def test_stage_cli_runs_in_process_and_only_replaces_demo_trees(tmp_path):
    from stages.demo_data import main

    app = typer.Typer()
    app.command()(main)
    params = tmp_path / "params.yaml"
    params.write_text("demo:\n  seed: 3\n  n_studies: 8\n  image_size: 48\n  n_dicom: 1\n  n_corrupt: 2\n")
    out = tmp_path / "demo"
    for _ in range(2):  # a second run replaces the first tree
        result = CliRunner().invoke(app, ["--params", str(params), "--out", str(out)])
        assert result.exit_code == 0, result.output
    gen = json.loads((out / "generation.json").read_text())
    assert gen["config"]["n_studies"] == 8 and gen["counts"]["studies"] == 8
    assert not (tmp_path / ".demo.partial").exists()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("not a demo tree")
    result = CliRunner().invoke(app, ["--params", str(params), "--out", str(foreign)])
    assert result.exit_code != 0 and (foreign / "keep.txt").exists()
