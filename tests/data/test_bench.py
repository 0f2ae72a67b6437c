"""The bench tree (cxrpipe.data.bench): real IU X-ray reports, images drawn from their labels. Tiny report
archives and metadata tables are written here (the real collection is CC BY-NC-ND: never in the repo); the real
3,955 reports are planned from ../shared/data where it exists."""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
import tarfile
from pathlib import Path

import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from cxrpipe.config import ConfigError, section
from cxrpipe.data import bench as B
from cxrpipe.data.demo import signs
from cxrpipe.data.demo.findings import findings_from_labels
from cxrpipe.data.iuxray import IUReport, iter_iu_reports
from cxrpipe.io import UnsafeRemoveError
from cxrpipe.labels import CHEXPERT_LABELS
from cxrpipe.text.model import TextModelError

from .test_iuxray import _xml

NAN = math.nan


def _labels(**values: float) -> dict[str, float]:
    out = dict.fromkeys(CHEXPERT_LABELS, NAN)
    out.update({k.replace("_", " "): v for k, v in values.items()})
    return out


# ------------------------------------------------------------------------------ labels -> findings


def test_findings_from_labels_draws_exactly_the_labelled_findings():
    labels = _labels(Pleural_Effusion=1.0, Cardiomegaly=-1.0, Edema=0.0, Support_Devices=1.0)
    study = findings_from_labels(labels, np.random.default_rng(0))
    assert [f.label for f in study.findings] == ["Support Devices", "Pleural Effusion", "Cardiomegaly"]
    assert study.get("Pleural Effusion").certain and not study.get("Cardiomegaly").certain
    assert study.get("Edema") is None and study.negated == ()  # 0.0 and blank: no sign, nothing negated
    assert study.get("Support Devices").devices  # devices drawn as the demo draws them
    assert findings_from_labels(_labels(No_Finding=1.0), np.random.default_rng(0)).findings == ()
    assert findings_from_labels(_labels(), np.random.default_rng(0)).findings == ()  # unindexed: no sign


def test_hints_replace_only_the_fields_a_label_has():
    labels = _labels(Pleural_Effusion=1.0, Cardiomegaly=1.0)
    hints = {"Pleural Effusion": {"side": "left", "severity": "large"},
             "Cardiomegaly": {"side": "left", "zone": "upper"}}
    for seed in range(10):
        study = findings_from_labels(labels, np.random.default_rng(seed), hints=hints)
        eff, heart = study.get("Pleural Effusion"), study.get("Cardiomegaly")
        assert (eff.side, eff.severity) == ("left", "large")
        assert heart.side == "" and heart.zone == ""  # Cardiomegaly has neither: the hints are dropped
    drawn = {findings_from_labels(labels, np.random.default_rng(s)).get("Pleural Effusion").side for s in range(30)}
    assert len(drawn) > 1  # without the hint the side is drawn


# ------------------------------------------------------------------------------ MeSH qualifiers, views


def test_mesh_hints_read_side_zone_and_severity():
    hints = B.mesh_hints([
        "Pleural Effusion/left/moderate", "Pleural Effusion/right/small",  # two sides: bilateral, first severity
        "Opacity/lung/base/left/interstitial", "Cardiomegaly/severe", "Pneumothorax/apex/right/moderate",
        "Nodule/lung/upper lobe/right", "Thickening/pleura/apex/left", "Fractures, Bone/ribs/left/healed",
    ])
    assert hints == {
        "Pleural Effusion": {"side": "bilateral", "severity": "moderate"},
        "Lung Opacity": {"side": "left", "zone": "lower", "severity": "hazy"},
        "Cardiomegaly": {"severity": "severe"},
        "Pneumothorax": {"side": "right", "severity": "moderate"},
        "Lung Lesion": {"side": "right", "zone": "upper"},
        "Pleural Other": {"side": "left", "zone": "apical"},
        "Fracture": {"side": "left", "severity": "nondisplaced"},
    }
    assert B.mesh_hints(["Cardiomegaly/borderline", "normal", "Granuloma/lung/left", "Edema/right"]) == {}


def test_assign_views_keeps_the_metadata_and_fills_the_blanks():
    meta = {"A1": "PA", "A2": "LL", "B1": "", "B2": "", "C1": "LATERAL", "C2": "", "D1": "AP", "D2": "XYZ"}
    assert B.assign_views(["A1", "A2"], meta) == (B.BenchImage("A1", "PA"), B.BenchImage("A2", "LL"))
    # no frontal yet: the first blank becomes PA, the next LATERAL
    assert [(i.view, i.inferred) for i in B.assign_views(["B1", "B2", "nometa"], meta)] == [
        ("PA", True), ("LATERAL", True), ("LATERAL", True)]
    assert [i.view for i in B.assign_views(["C1", "C2"], meta)] == ["LATERAL", "PA"]
    assert [i.view for i in B.assign_views(["D2", "D1"], meta)] == ["LATERAL", "AP"]  # a frontal exists: lateral


def test_contexts_follow_the_labels_and_the_view():
    assert B.study_contexts(_labels(Support_Devices=1.0), ["AP"]) == ("icu",)
    assert B.study_contexts(_labels(Support_Devices=1.0), ["PA", "LL"]) == ()
    assert B.study_contexts(_labels(Cardiomegaly=-1.0, Edema=1.0, Pneumonia=1.0), ["PA"]) == ("chf", "infection")


# ------------------------------------------------------------------------------ drawn signs


def _draw(tmp: Path, mesh: tuple[str, ...], name: str, mesh_details: bool = True) -> np.ndarray:
    rep = IUReport("CXR7", {"findings": "text"}, mesh, (), ("CXR7_IM-0001-1001",))
    study = B.plan_study(rep, 7, {"CXR7_IM-0001-1001": "PA"}, seed=0, mesh_details=mesh_details)
    folder = tmp / name
    folder.mkdir()
    rows = B.render_study(study, seed=0, size=96, folder=folder)
    assert rows == [{"uid": 7, "filename": "CXR7_IM-0001-1001.png", "projection": "PA"}]
    return np.asarray(Image.open(folder / "CXR7_IM-0001-1001.png"), dtype=float)


def test_the_sign_is_drawn_on_the_side_the_report_codes(tmp_path):
    """Same uid, same anatomy, pose and noise: the drawings differ by the coded effusion, on its side only."""
    normal = _draw(tmp_path, ("normal",), "normal")
    left = _draw(tmp_path, ("Pleural Effusion/left/large",), "left") - normal
    right = _draw(tmp_path, ("Pleural Effusion/right/large",), "right") - normal
    w = normal.shape[1] // 2  # the patient's left is the image's right
    assert left[:, w:].sum() > 200 and left[:, w:].sum() > 5 * np.abs(left[:, :w]).sum()
    assert right[:, :w].sum() > 200 and right[:, :w].sum() > 5 * np.abs(right[:, w:]).sum()


def test_without_mesh_details_the_side_is_drawn():
    def side(n: int, mesh_details: bool) -> str:
        rep = IUReport(f"CXR{n}", {"findings": "x"}, ("Pleural Effusion/left",), (), (f"CXR{n}_IM-1",))
        return B.plan_study(rep, n, {}, 0, mesh_details).findings.get("Pleural Effusion").side

    sides = {m: {side(n, m) for n in range(1, 40)} for m in (True, False)}
    assert sides[True] == {"left"} and len(sides[False]) > 1


# ------------------------------------------------------------------------------ the tree, end to end


def _tgz(path: Path, xmls: dict[str, str]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, text in xmls.items():
            data = text.encode()
            info = tarfile.TarInfo(f"ecgen-radiology/{name}.xml")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _metadata(path: Path, views: dict[str, str]) -> Path:
    with gzip.open(path, "wt", newline="") as f:
        w = csv.writer(f)
        w.writerow(["imageid", "Patient ID", "View Position"])
        w.writerows([i, i.split("_")[0][3:], v] for i, v in views.items())
    return path


def tiny_sources(tmp: Path) -> tuple[Path, Path]:
    """Six reports: normal, effusion, borderline heart, unindexed, one naming no image, one lateral-only."""
    text = {"FINDINGS": "The heart is normal in size.", "IMPRESSION": "No acute disease."}
    xmls = {
        "1": _xml("CXR1", text, major=("normal",), images=("CXR1_1_IM-0001-3001", "CXR1_1_IM-0001-4001")),
        "2": _xml("CXR2", text, major=("Pleural Effusion/left/small",),
                  images=("CXR2_IM-0002-1001", "CXR2_IM-0002-2001")),
        "3": _xml("CXR3", text, major=("Cardiomegaly/borderline",), images=("CXR3_IM-0003-1001",)),
        "4": _xml("CXR4", text, major=("No Indexing",), images=("CXR4_IM-0004-1001", "CXR4_IM-0004-2001")),
        "5": _xml("CXR5", text, major=("normal",), images=()),
        "6": _xml("CXR6", text, major=("normal",), images=("CXR6_IM-0006-1001",)),
    }
    views = {"CXR1_1_IM-0001-3001": "PA", "CXR1_1_IM-0001-4001": "LL", "CXR2_IM-0002-1001": "",
             "CXR2_IM-0002-2001": "", "CXR3_IM-0003-1001": "AP", "CXR4_IM-0004-1001": "PA",
             "CXR4_IM-0004-2001": "LATERAL", "CXR6_IM-0006-1001": "LL"}
    return _tgz(tmp / "reports.tgz", xmls), _metadata(tmp / "meta.csv.gz", views)


def test_tree_is_read_by_the_iu_xray_reader_unchanged(tmp_path):
    from cxrpipe.data.manifest import read_images, read_studies
    from cxrpipe.data.prepare import DataConfig, PrepareConfig, run_prepare

    reports, meta = tiny_sources(tmp_path)
    cfg = B.BenchConfig(image_size=48, reports=reports, metadata=meta, download_dir=tmp_path / "dl")
    out = tmp_path / "bench"
    counts = B.write_bench_tree(cfg, out)
    assert (counts["studies"], counts["images"], counts["reports_without_images"]) == (5, 8, 1)
    assert counts["images_per_view"] == {"AP": 1, "LATERAL": 2, "LL": 2, "PA": 3} and counts["views_inferred"] == 2
    assert (out / B.REPORTS_TGZ).read_bytes() == reports.read_bytes()  # the real collection, byte for byte
    assert len(list((out / B.IMAGES_DIR).glob("*.png"))) == 8
    gen = json.loads((out / B.GENERATION_JSON).read_text())
    assert gen["sources"]["reports"]["origin"] == "local file" and len(gen["sources"]["metadata"]["sha256"]) == 64

    data = DataConfig(source="iu-xray", root=out, reports=out / B.REPORTS_TGZ, projections=out / B.PROJECTIONS_CSV,
                      views=("AP", "PA"), split_fractions=(0.5, 0.25, 0.25))
    report = run_prepare(data, PrepareConfig(image_size=16, workers=0, max_reject_fraction=0.5), tmp_path / "prep")
    images = read_images(tmp_path / "prep")
    assert sorted((i.dicom_id, i.view) for i in images) == [
        ("CXR1_1_IM-0001-3001", "PA"), ("CXR2_IM-0002-1001", "PA"), ("CXR3_IM-0003-1001", "AP"),
        ("CXR4_IM-0004-1001", "PA")]  # study 6 is lateral only: not selected
    studies = {s.study_id: s for s in read_studies(tmp_path / "prep")}
    assert studies[2].labels[CHEXPERT_LABELS.index("Pleural Effusion")] == 1.0
    assert studies[3].labels[CHEXPERT_LABELS.index("Cardiomegaly")] == -1.0 and not studies[4].has_labels
    assert report.demo is True  # generation.json at data.root: the images are drawn, and the reports say so


def test_rerun_replaces_its_own_tree_and_nothing_else(tmp_path):
    reports, meta = tiny_sources(tmp_path)
    cfg = B.BenchConfig(image_size=32, reports=reports, metadata=meta)
    out = tmp_path / "bench"
    B.write_bench_tree(cfg, out)
    first = {p.name: p.read_bytes() for p in (out / B.IMAGES_DIR).iterdir()}
    B.write_bench_tree(cfg, out)
    assert {p.name: p.read_bytes() for p in (out / B.IMAGES_DIR).iterdir()} == first  # same seed, same bytes
    assert not (tmp_path / ".bench.partial").exists()
    other = B.write_bench_tree(B.BenchConfig(image_size=32, reports=reports, metadata=meta, seed=1), tmp_path / "s1")
    assert other["images"] == 8
    assert {p.name: p.read_bytes() for p in (tmp_path / "s1" / B.IMAGES_DIR).iterdir()} != first
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    with pytest.raises(UnsafeRemoveError):
        B.write_bench_tree(cfg, foreign)
    assert (foreign / "keep.txt").exists()


# ------------------------------------------------------------------------------ where the files come from


def _fake_package(tmp: Path, monkeypatch, reports: Path, meta: Path, pins: dict[str, str] | None = None) -> Path:
    folder = tmp / "pkg" / "fakexray"
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "r.tgz").write_bytes(reports.read_bytes())
    (folder / "data" / "m.csv.gz").write_bytes(meta.read_bytes())
    from cxrpipe.text import model as model_mod

    monkeypatch.setattr(model_mod, "find_installed_package", lambda spec: folder if spec == "fakexray==1.0" else None)
    if pins is None:
        pins = {m: model_mod.sha256_file(folder / m) for m in ("data/r.tgz", "data/m.csv.gz")}
    monkeypatch.setitem(model_mod.PINNED_SHA256, "fakexray==1.0", pins)
    return folder


def test_sources_from_the_installed_package_are_checked_against_their_pins(tmp_path, monkeypatch):
    reports, meta = tiny_sources(tmp_path)
    cfg = B.BenchConfig(package="fakexray==1.0", reports_member="data/r.tgz", metadata_member="data/m.csv.gz")
    _fake_package(tmp_path, monkeypatch, reports, meta)
    got = B.resolve_sources(cfg)
    assert got["reports"]["origin"] == "fakexray==1.0:data/r.tgz"
    assert got["reports"]["path"].read_bytes() == reports.read_bytes()
    with pytest.raises(B.BenchDataError, match="bench.metadata_member"):
        B.resolve_sources(B.BenchConfig(package="fakexray==1.0", reports_member="data/r.tgz", metadata_member="data/x"))
    _fake_package(tmp_path / "b", monkeypatch, reports, meta, pins={"data/r.tgz": "0" * 64, "data/m.csv.gz": "0" * 64})
    with pytest.raises(TextModelError, match="sha256"):
        B.resolve_sources(cfg)
    with pytest.raises(B.BenchDataError, match="bench.reports"):
        B.resolve_sources(B.BenchConfig(reports=tmp_path / "nope.tgz", metadata=meta))


def test_a_download_is_made_once_and_reused(tmp_path, monkeypatch):
    from cxrpipe.text import model as model_mod

    calls = []

    def fake_download(spec, dest):
        calls.append(spec)
        folder = dest / "unpacked" / "fakexray"
        folder.mkdir(parents=True)
        return folder, dest / "fakexray-1.0-py3-none-any.whl"

    monkeypatch.setattr(model_mod, "find_installed_package", lambda spec: None)
    monkeypatch.setattr(model_mod, "download_package", fake_download)
    first = B.package_folder("fakexray==1.0", tmp_path / "dl")
    assert first == tmp_path / "dl" / "fakexray-1.0" / "unpacked" / "fakexray"
    assert B.package_folder("fakexray==1.0", tmp_path / "dl") == first
    assert calls == ["fakexray==1.0"]


def test_config_is_strict():
    with pytest.raises(ConfigError):
        section({"bench": {"treez": []}}, "bench", B.BenchConfig)
    with pytest.raises(ConfigError, match="bench.package"):
        B.BenchConfig(package="torchxrayvision")
    with pytest.raises(ConfigError, match="bench.trees"):
        B.BenchConfig(trees=("../elsewhere",))
    assert section({"bench": {"trees": ["bench"]}}, "bench", B.BenchConfig).trees == ("bench",)


def test_stage_cli_says_in_one_line_what_is_missing(tmp_path):
    from stages.bench_data import main

    app = typer.Typer()
    app.command()(main)
    params = tmp_path / "params.yaml"
    params.write_text(f"bench:\n  reports: {tmp_path / 'gone.tgz'}\n  metadata: {tmp_path / 'gone.csv'}\n")
    result = CliRunner().invoke(app, ["--params", str(params), "--out", str(tmp_path / "bench")])
    assert result.exit_code == 1 and "bench.reports" in result.output and "Traceback" not in result.output


# ------------------------------------------------------------------------------ the real reports


def test_every_real_report_plans_with_renderable_detail(shared_data, tmp_path):
    """The 3,955 real reports (no metadata here: views by the fallback rule): every study that names an image
    is planned with the reader's labels, and every MeSH-derived detail is a value the renderer draws."""
    tgz = shared_data / "iu-xray" / "NLMCXR_reports.tgz"
    studies, skipped = B.plan_bench(tgz, {}, B.BenchConfig())
    assert (len(studies), skipped["reports"], skipped["no_images"], skipped["malformed"]) == (3851, 3955, 104, 0)
    assert all(s.images[0].view == "PA" and all(i.view == "LATERAL" for i in s.images[1:]) for s in studies)
    reports = {r.uid: r for r in iter_iu_reports(tgz)}
    assert all(np.array_equal(s.labels, reports[s.uid].labels, equal_nan=True) for s in studies)
    assert sum(bool(B.mesh_hints(r.mesh_major)) for r in reports.values()) > 800  # most findings carry detail
    valid = {"Pleural Effusion": set(signs.EFFUSION_HEIGHT), "Pneumothorax": set(signs.PTX_DEPTH),
             "Cardiomegaly": set(signs.HEART_RATIO), "Edema": set(signs.EDEMA_HAZE),
             "Atelectasis": {"mild", "moderate"},
             "Lung Opacity": {"patchy", "hazy", ""}, "Fracture": {"displaced", "nondisplaced"}}
    for s in studies:
        for f in s.findings.findings:
            assert f.side in ("", "left", "right", "bilateral")
            assert f.zone in ("", "upper", "middle", "lower", "apical", "lateral")
            assert f.label not in valid or f.severity in valid[f.label], (s.uid, f)
    coded = [s for s in studies if any(f.label == "Pleural Effusion" for f in s.findings.findings)]
    assert len(coded) > 150
    for s in coded[:3] + studies[:2]:  # a few drawn for real
        rows = B.render_study(s, 0, 48, tmp_path)
        assert all((tmp_path / r["filename"]).is_file() for r in rows)
