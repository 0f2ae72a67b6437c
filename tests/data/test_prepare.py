"""The prepare stage: every bad input counted and listed, the loss limit, resume, the CLI."""

import csv
import json

import h5py
import numpy as np
import pytest
import typer
import yaml
from typer.testing import CliRunner

import cxrpipe.data.prepare as prepare_mod
from cxrpipe.config import section
from cxrpipe.data.image_cache import ImageCache
from cxrpipe.data.images import load_image
from cxrpipe.data.manifest import read_images, read_studies
from cxrpipe.data.prepare import DataConfig, PrepareConfig, PrepareError, run_prepare
from tests.data.mimic_tree import BAD_KINDS, write_tree

SIZE = 24


def _cfgs(tree, **prep):
    prep = {"image_size": SIZE, "workers": 0, "flush_every": 2, "max_reject_fraction": 0.9, **prep}
    return DataConfig(root=tree.root, reports=tree.reports), PrepareConfig(**prep)


def _rejects(out):
    with (out / "rejects.csv").open() as f:
        return list(csv.DictReader(f))


def test_every_bad_input_is_counted_and_listed_and_the_run_goes_on(tmp_path):
    t = write_tree(tmp_path / "tree", 6, BAD_KINDS)
    out = tmp_path / "prepared"
    report = run_prepare(*_cfgs(t, workers=2, chunksize=2), out)  # worker processes decode

    listed = {(r["kind"], r["id"], r["reason"]) for r in _rejects(out)}
    b, study_of = t.bad, {d: s for s, ds in t.frontal.items() for d in ds}
    assert listed == {
        ("image", b["zero_byte"], "decode_failed"),
        ("image", b["truncated"], "decode_failed"),
        ("image", b["bad_dicom"], "decode_failed"),
        ("image", b["missing_image"], "missing_image"),
        ("study", str(study_of[b["zero_byte"]]), "no_images"),  # its only frontal image was the zero-byte one
        ("study", str(study_of[b["bad_dicom"]]), "no_images"),
        ("study", str(study_of[b["missing_image"]]), "no_images"),
        ("study", b["missing_report"], "missing_report"),
        ("study", b["empty_report"], "empty_report"),
        ("labels", b["no_label_row"], "no_label_row"),
        ("labels", b["bad_label"], "bad_label_value"),
    }
    details = {r["id"]: r["detail"] for r in _rejects(out)}
    assert details[b["zero_byte"]] == "empty file (0 bytes)" and "truncated" in details[b["truncated"]]
    assert report.rejects["by_reason"] == {
        "image/decode_failed": 3, "image/missing_image": 1, "labels/bad_label_value": 1, "labels/no_label_row": 1,
        "study/empty_report": 1, "study/missing_report": 1, "study/no_images": 3,
    }

    images, studies = read_images(out), read_studies(out)
    good = [d for s in t.studies[:6] for d in t.frontal[s]] + [t.frontal[study_of[b["truncated"]]][1]]
    good += [t.frontal[int(b[k])][0] for k in ("no_label_row", "bad_label")]
    assert sorted(r.dicom_id for r in images) == sorted(good)
    assert [r.row for r in images] == list(range(len(images)))
    assert {s.study_id for s in studies} == {r.study_id for r in images}
    unlabelled = {str(s.study_id) for s in studies if not s.has_labels}
    assert unlabelled == {b["no_label_row"], b["bad_label"]}

    cache = ImageCache(out / "images.h5")  # complete, and row i is images.csv row i
    assert cache.dicom_ids() == [r.dicom_id for r in images] and cache.size == SIZE
    for r in images:
        np.testing.assert_array_equal(cache[r.row], load_image(t.root / r.path, SIZE))
    assert not (out / "images.partial.h5").exists()

    rep = json.loads((out / "prepare_report.json").read_text())
    assert rep["source"] == "mimic-cxr-jpg" and rep["root"] == str(t.root) and rep["demo"] is False
    assert rep["counts"]["images"] == len(images) == sum(v["images"] for v in rep["counts"]["by_split"].values())
    assert rep["counts"]["by_view"] == {"AP": 4, "PA": 5}
    assert rep["counts"]["views_seen"]["LATERAL"] == 8  # even-numbered studies, the lateral-only one too
    assert all(sum(v.values()) == rep["counts"]["studies_with_labels"] for v in rep["labels"].values())
    assert rep["lost"]["images"] == 6 and rep["lost"]["selected_images"] == 15 and rep["failed"] is None
    assert rep["timing"]["decoded"] == 12 and rep["timing"]["failed"] == 3
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["prepare"]["image_size"] == SIZE and cfg["data"]["views"] == ["AP", "PA"]


def test_demo_marker_is_reported(tmp_path):
    t = write_tree(tmp_path / "tree", 3)
    (t.root / "generation.json").write_text("{}")
    report = run_prepare(*_cfgs(t), tmp_path / "out")
    assert report.demo is True and json.loads((tmp_path / "out" / "prepare_report.json").read_text())["demo"] is True


def test_too_many_decode_failures_fail_with_a_clear_message(tmp_path):
    t = write_tree(tmp_path / "tree", 3, ("zero_byte", "bad_dicom"))
    out = tmp_path / "out"
    with pytest.raises(PrepareError, match=r"lost 2 of 5 selected images \(40.0%\).*max_reject_fraction = 0.1.*image/decode_failed: 2"):
        run_prepare(*_cfgs(t, max_reject_fraction=0.1), out)
    assert len(_rejects(out)) == 4 and not (out / "images.csv").exists() and not (out / "images.h5").exists()
    assert "max_reject_fraction" in json.loads((out / "prepare_report.json").read_text())["failed"]
    assert list((out / "images.partial").glob("chunk-*.npz"))  # the decoded rows are kept: raising the limit resumes
    report = run_prepare(*_cfgs(t, max_reject_fraction=0.5), out)
    assert report.timing["resumed"] == 3 and report.counts["images"] == 3 and (out / "images.csv").exists()
    with pytest.raises(PrepareError):  # a failing rerun does not leave the earlier run's manifest behind
        run_prepare(*_cfgs(t, max_reject_fraction=0.1), out)
    assert not (out / "images.csv").exists() and not (out / "images.h5").exists()


def test_reader_losses_fail_before_decoding(tmp_path, monkeypatch):
    t = write_tree(tmp_path / "tree", 2, ("missing_report", "empty_report"))
    monkeypatch.setattr(prepare_mod, "_decode_all", lambda *a: pytest.fail("decoded although already lost"))
    with pytest.raises(PrepareError, match=r"2 of 4 studies \(50.0%\).*study/empty_report: 1"):
        run_prepare(*_cfgs(t, max_reject_fraction=0.25), tmp_path / "out")


def _snapshot(out):
    rep = json.loads((out / "prepare_report.json").read_text())
    rep.pop("timing")
    with h5py.File(out / "images.h5", "r") as f:
        pixels = f["images"][:]
    return (out / "images.csv").read_text(), (out / "studies.csv").read_text(), (out / "rejects.csv").read_text(), rep, pixels


def test_interrupted_run_resumes_to_the_identical_result(tmp_path, monkeypatch):
    t = write_tree(tmp_path / "tree", 8, ("truncated",))
    run_prepare(*_cfgs(t), tmp_path / "straight")

    real, calls = prepare_mod._decode_task, []

    def dies_after_five(task):
        if len(calls) == 5:
            raise KeyboardInterrupt  # Ctrl-C in the middle of decoding
        calls.append(task[0])
        return real(task)

    monkeypatch.setattr(prepare_mod, "_decode_task", dies_after_five)
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        run_prepare(*_cfgs(t), out)
    assert not (out / "images.csv").exists()
    chunks = sorted((out / "images.partial").glob("chunk-*.npz"))
    assert sum(len(np.load(c)["rows"]) for c in chunks) == 5  # Ctrl-C: the rows decoded so far are kept
    monkeypatch.setattr(prepare_mod, "_decode_task", real)
    report = run_prepare(*_cfgs(t), out)
    assert report.timing["resumed"] == 5 and report.timing["decoded"] == 5  # the truncated file among them
    a, b = _snapshot(tmp_path / "straight"), _snapshot(out)
    assert a[:4] == b[:4]
    np.testing.assert_array_equal(a[4], b[4])
    assert (tmp_path / "straight" / "images.h5").read_bytes() == (out / "images.h5").read_bytes()
    assert not (out / "images.partial").exists()



def _interrupted_prepare(monkeypatch, tree, out, first_failing: int, **prep) -> None:
    """Run prepare into ``out`` with a Ctrl-C at the decode of image ``first_failing`` (and every later one),
    then put the real decoder back: what is left in ``out`` is what a crash left."""
    real = prepare_mod._decode_task

    def interrupted(task):
        if task[0] >= first_failing:
            raise KeyboardInterrupt
        return real(task)

    monkeypatch.setattr(prepare_mod, "_decode_task", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_prepare(*_cfgs(tree, **prep), out)
    monkeypatch.setattr(prepare_mod, "_decode_task", real)

def test_a_partial_cache_from_other_code_is_not_resumed(tmp_path, monkeypatch):
    from cxrpipe import provenance

    t = write_tree(tmp_path / "tree", 4)
    out = tmp_path / "out"
    _interrupted_prepare(monkeypatch, t, out, 3)
    monkeypatch.setattr(provenance, "code_key", lambda stage: "0.1.0+edited")  # the stage's code changed
    assert run_prepare(*_cfgs(t), out).timing["resumed"] == 0


def test_a_partial_cache_from_other_settings_is_not_resumed(tmp_path, monkeypatch):
    t = write_tree(tmp_path / "tree", 4)
    out = tmp_path / "out"
    _interrupted_prepare(monkeypatch, t, out, 3)
    data_cfg, _ = _cfgs(t)
    report = run_prepare(data_cfg, PrepareConfig(image_size=16, workers=0), out)
    assert report.timing["resumed"] == 0 and ImageCache(out / "images.h5")[0].shape == (16, 16)


def test_iu_xray_with_mimic_files_and_bad_params_are_refused(tmp_path):
    t = write_tree(tmp_path / "tree", 1)
    with pytest.raises(PrepareError, match="not a tar archive of XML reports"):
        run_prepare(DataConfig(source="iu-xray", root=t.root, reports=t.reports, views=()), PrepareConfig(), tmp_path / "o")
    with pytest.raises(PrepareError, match="max_reject_fraction"):
        run_prepare(*_cfgs(t, max_reject_fraction=1.5), tmp_path / "o")


def _params(tmp_path, tree, **prepare):
    p = tmp_path / "params.yaml"
    sections = {
        "data": {"source": "mimic-cxr-jpg", "root": str(tree.root), "reports": str(tree.reports), "views": ["PA", "AP"]},
        "prepare": {"image_size": SIZE, "workers": 0, **prepare},
    }
    p.write_text(yaml.safe_dump(sections))
    return p


def test_stage_cli_in_process(tmp_path):
    from stages.prepare import main

    app = typer.Typer()
    app.command()(main)
    t = write_tree(tmp_path / "tree", 4)
    out = tmp_path / "prepared"
    res = CliRunner().invoke(app, ["--params", str(_params(tmp_path, t)), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert ImageCache(out / "images.h5").n == len(read_images(out)) == 4
    assert {p.name for p in out.iterdir()} == {"images.csv", "studies.csv", "images.h5", "prepare_report.json", "rejects.csv", "config.json"}
    assert _rejects(out) == []

    res = CliRunner().invoke(app, ["--params", str(_params(tmp_path, t, max_reject_fraction=2.0)), "--out", str(out)])
    assert res.exit_code == 1 and "prepare failed" in res.output and "max_reject_fraction" in res.output
    res = CliRunner().invoke(app, ["--params", str(_params(tmp_path, t, image_sise=8)), "--out", str(out)])
    assert res.exit_code == 1 and "unknown key(s) ['image_sise']" in res.output


def test_repo_params_build_both_configs():
    from pathlib import Path

    params = Path(__file__).resolve().parents[2] / "params.yaml"
    data, prep = section(params, "data", DataConfig), section(params, "prepare", PrepareConfig)
    assert data.views == ("AP", "PA") and data.sections == ("findings", "impression") and prep.image_size >= 32


def test_planted_demo_faults_say_so_where_they_are_logged(tmp_path, caplog):
    """On the demo tree the WARNING lines of DEMO_CORRUPTIONS.json's faults end "expected: planted demo
    fault"; a fault not listed there, and every line on real data, stays unmarked."""
    t = write_tree(tmp_path / "tree", 5, ("zero_byte", "missing_report"))
    with caplog.at_level("WARNING", logger="cxrpipe.data.prepare"):
        run_prepare(*_cfgs(t), tmp_path / "out1")
    assert caplog.records and not any("planted demo fault" in r.getMessage() for r in caplog.records)  # not the demo
    zero = next(r for r in _rejects(tmp_path / "out1") if r["reason"] == "decode_failed")
    study = int(zero["path"].split("/")[3][1:])  # files/p10/p1000003x/s<study>/<dicom>.jpg
    planted = [{"kind": "zero_byte_image", "dicom_id": zero["id"], "study_id": study, "path": zero["path"]}]
    (t.root / "DEMO_CORRUPTIONS.json").write_text(json.dumps(planted))
    (t.root / "generation.json").write_text("{}")
    caplog.clear()
    with caplog.at_level("WARNING", logger="cxrpipe.data.prepare"):
        run_prepare(*_cfgs(t), tmp_path / "out2")
    lines = {r.getMessage().split(" (", 1)[1].split(")", 1)[0]: r.getMessage() for r in caplog.records
             if " (" in r.getMessage()}
    assert lines["decode_failed"].endswith("(expected: planted demo fault)")
    assert lines["no_images"].endswith("(expected: planted demo fault)")  # the study the fault emptied
    assert "planted demo fault" not in lines["missing_report"]
