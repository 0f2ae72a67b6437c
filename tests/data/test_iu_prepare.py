"""`prepare` with data.source iu-xray: a miniature IU layout written here (XMLs in a tgz, PNGs in a tgz and
as a folder, an indiana_projections.csv), and the report side of the real NLMCXR_reports.tgz."""

from __future__ import annotations

import csv
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrpipe.config import ConfigError
from cxrpipe.data.iuxray import image_key, summarize_iu_reports
from cxrpipe.data.manifest import read_images, read_label_names, read_studies
from cxrpipe.data.prepare import DataConfig, PrepareConfig, PrepareError, run_prepare
from cxrpipe.labels import CHEXPERT_LABELS

from .test_iuxray import _xml

PREP = PrepareConfig(image_size=16, workers=0, flush_every=3, max_reject_fraction=0.5)
N = 12  # reports CXR1..CXR12, two images each (frontal 4001, lateral 3001)
FINDINGS = "The heart is normal in size. The lungs are clear."


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _png_bytes(value: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((20, 18), value, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def iu_layout(tmp: Path, *, empty: int = 0, no_images: int = 0, missing_png: int = 0) -> dict[str, Path]:
    """reports tgz, PNG tgz, PNG folder and projections CSV; the last ``empty`` reports have no text, the
    ``no_images`` before them name no image, and the first ``missing_png`` frontal PNGs are absent."""
    reports, pngs, folder = tmp / "NLMCXR_reports.tgz", tmp / "NLMCXR_png.tgz", tmp / "png"
    folder.mkdir(parents=True)
    proj = []
    with tarfile.open(reports, "w:gz") as rt, tarfile.open(pngs, "w:gz") as pt:
        for u in range(1, N + 1):
            ids = [f"CXR{u}_{u}_IM-{u:04d}-4001", f"CXR{u}_{u}_IM-{u:04d}-3001"]
            text = None if u > N - empty else FINDINGS
            named = [] if N - empty - no_images < u <= N - empty else ids
            major = ["Cardiomegaly/mild"] if u % 3 == 0 else ["Opacity/lung/base/left"] if u % 3 == 1 else ["No Indexing"]
            _add(rt, f"ecgen-radiology/{u}.xml", _xml(f"CXR{u}", {"FINDINGS": text, "IMPRESSION": None if text is None else "No acute disease."}, major=major, images=named).encode())
            for k, i in enumerate(ids):
                if k == 0 and u <= missing_png:
                    continue
                data = _png_bytes(20 * u + k)
                _add(pt, f"{i}.png", data)
                (folder / f"{i}.png").write_bytes(data)
            proj += [[u, f"{u}_IM-{u:04d}-4001.dcm.png", "Frontal"], [u, f"{u}_IM-{u:04d}-3001.dcm.png", "Lateral"]]
    with (tmp / "indiana_projections.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["uid", "filename", "projection"])
        w.writerows(proj)
    return {"reports": reports, "tgz": pngs, "folder": folder, "projections": tmp / "indiana_projections.csv"}


def test_image_key_names():
    assert image_key("CXR1_1_IM-0001-4001.png") == "CXR1_1_IM-0001-4001"
    assert image_key("images_normalized/1_IM-0001-4001.dcm.png") == "CXR1_1_IM-0001-4001"


@pytest.mark.parametrize("images", ["tgz", "folder"])
def test_iu_prepare_end_to_end(tmp_path, images):
    lay = iu_layout(tmp_path / "iu")
    cfg = DataConfig(source="iu-xray", root=lay[images], reports=lay["reports"], projections=lay["projections"],
                     views=("FRONTAL",), split_fractions=(0.5, 0.25, 0.25), split_seed=1)
    out = tmp_path / "out"
    report = run_prepare(cfg, PREP, out)
    imgs, studies = read_images(out), {s.study_id: s for s in read_studies(out)}
    assert read_label_names(out) == CHEXPERT_LABELS and len(imgs) == len(studies) == N
    assert {r.view for r in imgs} == {"FRONTAL"} and all(r.dicom_id.endswith("-4001") for r in imgs)
    assert [sum(s.split == x for s in studies.values()) for x in ("train", "validate", "test")] == [6, 3, 3]
    assert all(s.subject_id == s.study_id for s in studies.values())  # one report = one patient
    assert studies[3].label("Cardiomegaly") == 1.0 and studies[1].label("Lung Opacity") == 1.0
    assert not studies[2].has_labels  # "No Indexing": kept for pretraining, unlabelled, listed
    assert report.rejects["by_reason"] == {"labels/not_indexed": 4}
    assert "FINDINGS" not in studies[1].text and "heart is normal" in studies[1].text
    saved = json.loads((out / "prepare_report.json").read_text())
    assert saved["dataset"] == "iu-xray" and "seed 1" in saved["split"] and "projections table" in saved["details"]["views"]
    assert saved["details"]["label_coverage"]["Cardiomegaly"]["positive"] == 4
    assert not (out / "images.extracted").exists()  # the tarball's extraction is removed after success
    if images == "tgz":  # the same pixels either way: compare with the folder run
        folder_out = tmp_path / "out-folder"
        run_prepare(DataConfig(**{**cfg.__dict__, "root": lay["folder"]}), PREP, folder_out)
        import h5py

        with h5py.File(out / "images.h5") as a, h5py.File(folder_out / "images.h5") as b:
            assert np.array_equal(a["images"][:], b["images"][:])


def test_iu_without_projections_views_unknown_and_the_rule_is_recorded(tmp_path):
    lay = iu_layout(tmp_path / "iu")
    out = tmp_path / "out"
    # the default views, MIMIC's (a table of DICOM View Positions has them: the bench tree's); none here
    with pytest.raises(ConfigError, match=r"\['AP', 'PA'\] keeps no image of iu-xray: without a projections table"):
        run_prepare(DataConfig(source="iu-xray", root=lay["folder"], reports=lay["reports"]), PREP, out)
    with pytest.raises(ConfigError, match=r"the projections table .* holds \['FRONTAL', 'LATERAL'\]"):  # Open-i's
        run_prepare(DataConfig(source="iu-xray", root=lay["folder"], reports=lay["reports"],
                               projections=lay["projections"]), PREP, out)
    report = run_prepare(DataConfig(source="iu-xray", root=lay["folder"], reports=lay["reports"], views=()), PREP, out)
    assert {r.view for r in read_images(out)} == {"UNKNOWN"} and report.counts["images"] == 2 * N
    assert "no projections table" in report.details["views"]


def test_iu_bad_input_listed_counted_and_past_the_limit_fails(tmp_path):
    lay = iu_layout(tmp_path / "iu", empty=1, no_images=1, missing_png=2)
    cfg = DataConfig(source="iu-xray", root=lay["tgz"], reports=lay["reports"], projections=lay["projections"], views=("FRONTAL",))
    report = run_prepare(cfg, PREP, tmp_path / "out")
    by = report.rejects["by_reason"]
    assert by["study/empty_report"] == 1 and by["study/no_images"] == 1 + 2 and by["image/missing_image"] == 2
    assert report.counts["studies"] == N - 4 and report.lost["selected_studies"] == N
    with pytest.raises(PrepareError, match="max_reject_fraction = 0.1"):
        run_prepare(cfg, PrepareConfig(image_size=16, workers=0, max_reject_fraction=0.1), tmp_path / "out2")
    bad = tmp_path / "bad.csv"
    bad.write_text("uid,file,view\n1,a.png,Frontal\n")
    with pytest.raises(PrepareError, match=r"data.projections = .*: missing column\(s\) \['filename', 'projection'\]"):
        run_prepare(DataConfig(**{**cfg.__dict__, "projections": bad}), PREP, tmp_path / "out3")
    with pytest.raises(PrepareError, match="no such folder or file"):
        run_prepare(DataConfig(**{**cfg.__dict__, "root": tmp_path / "nope"}), PREP, tmp_path / "out4")
    with pytest.raises(PrepareError, match=r"data.reports = .*nope.tgz: no such file or folder; expected IU"):
        run_prepare(DataConfig(**{**cfg.__dict__, "reports": tmp_path / "nope.tgz"}), PREP, tmp_path / "out5")
    with pytest.raises(ConfigError, match="data.split_fractions must be 3"):  # a params error, named as such
        run_prepare(DataConfig(**{**cfg.__dict__, "split_fractions": (0.5, 0.5, 0.5)}), PREP, tmp_path / "out6")


def test_real_iu_reports_counts_and_mesh_coverage(shared_data):
    """The report side on the real NLMCXR_reports.tgz (its images are not here); numbers in docs/public-data.md."""
    s = summarize_iu_reports(shared_data / "iu-xray" / "NLMCXR_reports.tgz")
    assert (s["reports"], s["malformed"], s["reports_with_images"]) == (3955, 0, 3851)
    assert (s["dropped_no_images"], s["dropped_empty_report"], s["studies_kept"]) == (104, 25, 3826)
    assert s["images_referenced"] == 7430 and s["kept_unlabelled_not_indexed"] == 92 and s["labelled_studies"] == 3734
    cov = s["label_coverage"]
    assert cov["No Finding"]["positive"] == 2599 and cov["Cardiomegaly"] == {"positive": 318, "uncertain": 46, "fraction": 0.0975}
    assert all(v["positive"] > 0 for v in cov.values())  # every label has some MeSH coverage
    assert (s["dropped_no_images"] + s["dropped_empty_report"]) / s["reports"] < PrepareConfig().max_reject_fraction
