"""Transfer dataset readers (NIH ChestX-ray14, CheXpert, RSNA Pneumonia), the registry and transfer_prepare:
miniature copies of each real layout written here, plus the 16 real NIH PNGs in ../shared/data/png."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from cxrpipe.data import registry
from cxrpipe.data.chexpert import CheXpertConfig
from cxrpipe.data.manifest import read_images, read_label_names, read_studies
from cxrpipe.data.nih import NIH_LABELS, NIHConfig, read_nih
from cxrpipe.data.prepare import PrepareConfig, PrepareError
from cxrpipe.data.records import DatasetFormatError
from cxrpipe.data.rsna import RSNAConfig
from cxrpipe.data.transfer_prepare import TransferDataConfig, run_transfer_prepare
from cxrpipe.labels import CHEXPERT_LABELS
from tests.data.chexpert_tree import CHEX_HEADER, chexpert_tree
from tests.data.chexpert_tree import write_csv as _csv
from tests.data.chexpert_tree import write_png as _png

PREP = PrepareConfig(image_size=16, workers=0, flush_every=4, max_reject_fraction=0.5)
NIH_HEADER = ["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age", "Patient Gender",
              "View Position", "OriginalImage[Width", "Height]", "OriginalImagePixelSpacing[x", "y]"]


# ------------------------------------------------------------------------------------------------ NIH
def nih_tree(root: Path, n_patients: int = 20, csv_name: str = "Data_Entry_2017_v2020.csv") -> dict[str, str]:
    """Patients 1..n with 1-2 images, labels cycling; test = patients 1-4. -> {image: Finding Labels}."""
    rows, test, train_val, truth = [], [], [], {}
    cycle = ["No Finding", "Cardiomegaly", "Effusion|Infiltration", "Pneumothorax", "Mass|Nodule"]
    for p in range(1, n_patients + 1):
        for k in range(1 + p % 2):
            name = f"{p:08d}_{k:03d}.png"
            labels = cycle[(p + k) % len(cycle)]
            truth[name] = labels
            rows.append([name, labels, k, p, 50, "M", "PA" if k == 0 else "AP", 2500, 2048, 0.14, 0.14])
            (test if p <= 4 else train_val).append(name)
            _png(root / f"images_{1 + p // 10:03d}" / "images" / name, value=10 * p)
    _csv(root / csv_name, NIH_HEADER, rows)
    (root / "test_list.txt").write_text("\n".join(test) + "\n")
    (root / "train_val_list.txt").write_text("\n".join(train_val) + "\n")
    return truth


def test_registry_specs():
    assert registry.get("nih_cxr14").labels == NIH_LABELS and len(NIH_LABELS) == 14
    assert registry.get("chexpert").labels == CHEXPERT_LABELS
    assert registry.get("chexpert").competition_labels == (
        "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
    assert registry.get("rsna_pneumonia").labels == ("Pneumonia",)
    assert set(registry.names(registry.Role.PRETRAIN)) == {"mimic-cxr-jpg", "mimic-cxr", "iu-xray"}
    assert registry.get("iu-xray").title and "NLMCXR" in registry.get("iu-xray").layout
    with pytest.raises(KeyError, match="known"):
        registry.get("padchest")


def test_nih_official_split_patient_validate_and_labels(tmp_path):
    truth = nih_tree(tmp_path / "nih")
    out = tmp_path / "out"
    report = run_transfer_prepare("nih_cxr14", TransferDataConfig(nih_cxr14=NIHConfig(root=tmp_path / "nih", validate_fraction=0.25)), PREP, out)
    assert report.rejects["total"] == 0 and report.dataset == "nih_cxr14"
    assert read_label_names(out) == NIH_LABELS
    images, studies = read_images(out), {s.study_id: s for s in read_studies(out)}
    assert len(images) == len(truth) == len(studies)  # one image = one study
    for r in images:
        s = studies[r.study_id]
        names = {n for n, v in zip(NIH_LABELS, s.labels) if v == 1.0}
        assert names == set(truth[r.dicom_id + ".png"].split("|")) - {"No Finding"}
        assert all(v in (0.0, 1.0) for v in s.labels)  # never blank
        assert (r.split == "test") == (r.subject_id <= 4)
    by_subject: dict[int, set] = {}
    for r in images:
        by_subject.setdefault(r.subject_id, set()).add(r.split)
    assert all(len(v) == 1 for v in by_subject.values())  # validate is carved by patient
    assert 3 <= sum(v == {"validate"} for v in by_subject.values()) <= 5  # 25% of 16 train_val patients
    assert "test_list.txt" in report.split and json.loads((out / "prepare_report.json").read_text())["dataset"] == "nih_cxr14"


def test_nih_random_split_by_patient_ignores_the_official_lists(tmp_path):
    """split: random gives a seeded 70/10/20 split of the patients (the official test patients 1-4 are not
    forced into test), labelled in prepare_report's details and in the transfer tables' title; official is the
    default and keeps test_list.txt."""
    from cxrpipe.config import ConfigError
    from cxrpipe.evaluate.transfer.run import dataset_info

    nih_tree(tmp_path / "nih", n_patients=25)
    out = tmp_path / "out"
    cfg = NIHConfig(root=tmp_path / "nih", split="random", seed=3)
    report = run_transfer_prepare("nih_cxr14", TransferDataConfig(nih_cxr14=cfg), PREP, out)
    by_subject: dict[int, set] = {}
    for r in read_images(out):
        by_subject.setdefault(r.subject_id, set()).add(r.split)
    assert all(len(v) == 1 for v in by_subject.values())  # by patient
    counts = {sp: sum(v == {sp} for v in by_subject.values()) for sp in ("train", "validate", "test")}
    assert counts == {"train": 18, "validate": 2, "test": 5}  # round(0.7 x 25), round(0.1 x 25), the rest
    assert {p for p, v in by_subject.items() if v == {"test"}} != {1, 2, 3, 4}
    assert "random split by patient" in report.split and report.details["split_label"] == "random 70/10/20 by patient"
    assert dataset_info(out, "nih_cxr14")["title"] == "nih_cxr14 (random 70/10/20 by patient)"
    official = tmp_path / "official"
    run_transfer_prepare("nih_cxr14", TransferDataConfig(nih_cxr14=NIHConfig(root=tmp_path / "nih")), PREP, official)
    assert dataset_info(official, "nih_cxr14")["title"] == "nih_cxr14 (official lists)"
    assert {r.subject_id for r in read_images(official) if r.split == "test"} == {1, 2, 3, 4}
    with pytest.raises(ConfigError, match="transfer_data.nih_cxr14.split"):
        NIHConfig(split="70/10/20")


def test_nih_old_csv_name_and_images_folder(tmp_path):
    nih_tree(tmp_path / "nih", n_patients=6, csv_name="Data_Entry_2017.csv")
    for p in (tmp_path / "nih").glob("images_*/images/*.png"):  # the extracted tarballs: one images/ folder
        (tmp_path / "nih" / "images").mkdir(exist_ok=True)
        shutil.move(p, tmp_path / "nih" / "images" / p.name)
    read = read_nih(NIHConfig(root=tmp_path / "nih"))
    assert not read.rejects and all(c.path.startswith("images/") for c in read.images)


def test_nih_bad_input_listed_and_counted(tmp_path):
    root = tmp_path / "nih"
    nih_tree(root)
    rows = list(csv.reader((root / "Data_Entry_2017_v2020.csv").open()))
    rows[1][1] = "Cardiomegaly|Pneumonitis"  # unknown label name
    rows[2][1] = "No Finding|Effusion"  # contradictory
    _csv(root / "Data_Entry_2017_v2020.csv", rows[0], rows[1:])
    (root / "train_val_list.txt").write_text((root / "train_val_list.txt").read_text() + "00000099_000.png\n")
    missing = rows[5][0]
    next(root.glob(f"images_*/images/{missing}")).unlink()
    broken = rows[6][0]
    next(root.glob(f"images_*/images/{broken}")).write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    out = tmp_path / "out"
    report = run_transfer_prepare("nih_cxr14", TransferDataConfig(nih_cxr14=NIHConfig(root=root)), PREP, out)
    by = report.rejects["by_reason"]
    assert by["study/unknown_label"] == 2 and by["image/not_in_csv"] == 1
    assert by["image/missing_image"] == 1 and by["image/decode_failed"] == 1
    rejected = {r["id"] for r in csv.DictReader((out / "rejects.csv").open())}
    assert {rows[1][0], rows[2][0], "00000099_000.png", missing, Path(broken).stem} <= rejected
    n_rows = len(rows) - 1
    assert report.lost["selected_images"] == n_rows + 1 and len(read_images(out)) == n_rows - 4
    with pytest.raises(PrepareError, match=r"max_reject_fraction = 0.05.*unknown_label: 2"):
        run_transfer_prepare("nih_cxr14", TransferDataConfig(nih_cxr14=NIHConfig(root=root)),
                             PrepareConfig(image_size=16, workers=0, max_reject_fraction=0.05), tmp_path / "out2")
    assert (tmp_path / "out2" / "rejects.csv").is_file() and not (tmp_path / "out2" / "images.csv").exists()


def test_nih_wrong_columns_and_missing_files_are_one_line_errors(tmp_path):
    root = tmp_path / "nih"
    nih_tree(root, n_patients=3)
    with pytest.raises(DatasetFormatError, match="not set"):
        read_nih(NIHConfig(root=None))
    (root / "test_list.txt").unlink()
    with pytest.raises(DatasetFormatError, match="test_list.txt: no such file"):
        read_nih(NIHConfig(root=root))
    (root / "test_list.txt").write_text("")
    _csv(root / "Data_Entry_2017_v2020.csv", ["Image Index", "Labels"], [["00000001_000.png", "Hernia"]])
    with pytest.raises(DatasetFormatError, match=r"missing column\(s\) \['Finding Labels'"):
        read_nih(NIHConfig(root=root))
    with pytest.raises(DatasetFormatError, match="neither Data_Entry"):
        read_nih(NIHConfig(root=tmp_path))


def test_real_nih_pngs_with_their_labels(shared_data, tmp_path):
    """The 16 real NIH PNGs, laid out as NIH ships them, read back with their own labels."""
    src = shared_data / "png"
    truth = {r["image"]: r for r in csv.DictReader((src / "labels.csv").open())}
    root = tmp_path / "nih"
    rows = []
    for name, r in truth.items():
        (root / "images").mkdir(parents=True, exist_ok=True)
        shutil.copy(src / r["path"], root / "images" / name)
        patient, follow = name[:-4].split("_")
        rows.append([name, r["labels"], int(follow), int(patient), r["age"], r["sex"], r["view"], 0, 0, 0, 0])
    _csv(root / "Data_Entry_2017_v2020.csv", NIH_HEADER, rows)
    names = sorted(truth)
    (root / "test_list.txt").write_text("\n".join(n for n in names if n.startswith("00000001")) + "\n")
    (root / "train_val_list.txt").write_text("\n".join(n for n in names if not n.startswith("00000001")) + "\n")
    out = tmp_path / "out"
    report = run_transfer_prepare("nih_cxr14", TransferDataConfig(nih_cxr14=NIHConfig(root=root, views=())), PREP, out)
    assert report.rejects["total"] == 0 and report.counts["images"] == len(truth) == 16
    studies = {s.study_id: s for s in read_studies(out)}
    for r in read_images(out):
        want = set(truth[r.dicom_id + ".png"]["labels"].split("|")) - {"No Finding"}
        assert {n for n, v in zip(NIH_LABELS, studies[r.study_id].labels) if v == 1.0} == want
        assert r.view == truth[r.dicom_id + ".png"]["view"]
    import h5py

    with h5py.File(out / "images.h5") as f:
        assert f["images"].shape == (16, 16, 16) and f["images"][:].std() > 10  # real pixels, not blank


# ------------------------------------------------------------------------------------------- CheXpert
def test_chexpert_frontal_only_valid_is_test_labels_by_name(tmp_path):
    root = chexpert_tree(tmp_path)
    out = tmp_path / "out"
    report = run_transfer_prepare("chexpert", TransferDataConfig(chexpert=CheXpertConfig(root=root, validate_fraction=0.25)), PREP, out)
    assert report.rejects["total"] == 0 and read_label_names(out) == CHEXPERT_LABELS
    images, studies = read_images(out), {s.study_id: s for s in read_studies(out)}
    assert all("frontal" in r.dicom_id for r in images) and report.counts["views_seen"]["LATERAL"] == len(images)
    assert {r.split for r in images if r.subject_id >= 64541} == {"test"}
    assert "validate" in {r.split for r in images} and not {r.split for r in images if r.subject_id < 64541} & {"test"}
    rows = {r["Path"]: r for r in csv.DictReader((root / "train.csv").open())}
    for r in images:
        if r.split == "test":
            continue
        raw = rows[f"CheXpert-v1.0-small/{r.path.split('/', 1)[1]}"]
        for name, v in zip(CHEXPERT_LABELS, studies[r.study_id].labels):  # by name, not by CSV position
            assert (math.isnan(v) and raw[name] == "") or v == float(raw[name])
    assert {r.view for r in images} == {"AP", "PA"}


def test_chexpert_root_without_parent_layout_and_bad_labels(tmp_path):
    root = chexpert_tree(tmp_path / "dl")
    moved = tmp_path / "flat"
    shutil.move(str(root), str(moved))  # the CSVs and train/ valid/ in one folder, Path's first folder absent
    rows = list(csv.reader((moved / "train.csv").open()))
    rows[1][CHEX_HEADER.index("Edema")] = "2.0"
    _csv(moved / "train.csv", rows[0], rows[1:])
    (moved / "train" / "patient00002" / "study1" / "view1_frontal.jpg").unlink()
    out = tmp_path / "out"
    report = run_transfer_prepare("chexpert", TransferDataConfig(chexpert=CheXpertConfig(root=moved)), PREP, out)
    assert report.rejects["by_reason"] == {"image/missing_image": 1, "study/bad_label_value": 1}
    assert all(not r.path.startswith("CheXpert") for r in read_images(out))
    with pytest.raises(DatasetFormatError, match="no train.csv"):
        run_transfer_prepare("chexpert", TransferDataConfig(chexpert=CheXpertConfig(root=tmp_path)), PREP, out)


# ----------------------------------------------------------------------------------------------- RSNA
def rsna_tree(root: Path, n: int = 20) -> list[str]:
    from cxrpipe.data.demo import dicom

    ids = [f"{k:08x}-0000-4000-8000-{k:012x}" for k in range(n)]
    rows = []
    for k, pid in enumerate(ids):
        if k % 4 == 0:  # two boxes, Target 1
            rows += [[pid, 10, 10, 5, 5, 1], [pid, 30, 30, 5, 5, 1]]
        else:
            rows.append([pid, "", "", "", "", 0])
        img = np.random.default_rng(k).random((24, 24)).astype(np.float32)
        (root / "stage_2_train_images").mkdir(parents=True, exist_ok=True)
        dicom.write_dicom(root / "stage_2_train_images" / f"{pid}.dcm", img, dicom.VARIANTS[0], seed=0, dicom_id=pid,
                          subject_id=k + 1, study_id=k + 1, view="PA" if k % 2 else "AP", study_date="20200101",
                          study_time="120000", description="CHEST")
    _csv(root / "stage_2_train_labels.csv", ["patientId", "x", "y", "width", "height", "Target"], rows)
    return ids


def test_rsna_one_label_per_patient_seeded_split_and_split_file(tmp_path):
    ids = rsna_tree(tmp_path / "rsna")
    out = tmp_path / "out"
    cfg = RSNAConfig(root=tmp_path / "rsna", split_fractions=(0.5, 0.25, 0.25), seed=3)
    report = run_transfer_prepare("rsna_pneumonia", TransferDataConfig(rsna_pneumonia=cfg), PREP, out)
    assert report.rejects["total"] == 0 and read_label_names(out) == ("Pneumonia",)
    images, studies = read_images(out), {s.study_id: s for s in read_studies(out)}
    assert len(images) == len(studies) == len(ids)
    assert {r.dicom_id: studies[r.study_id].labels[0] for r in images} == {p: float(k % 4 == 0) for k, p in enumerate(ids)}
    assert [sum(r.split == s for r in images) for s in ("train", "validate", "test")] == [10, 5, 5]
    assert {r.view for r in images} == {"AP", "PA"} and "seed 3" in report.split
    again = run_transfer_prepare("rsna_pneumonia", TransferDataConfig(rsna_pneumonia=cfg), PREP, tmp_path / "again")
    assert [r.split for r in read_images(tmp_path / "again")] == [r.split for r in images] and again.split == report.split
    _csv(tmp_path / "split.csv", ["patientId", "split"], [[p, "test" if k < 5 else "train"] for k, p in enumerate(ids[:-1])])
    cfg = RSNAConfig(root=tmp_path / "rsna", split_file=tmp_path / "split.csv")
    report = run_transfer_prepare("rsna_pneumonia", TransferDataConfig(rsna_pneumonia=cfg), PREP, tmp_path / "sf")
    assert report.rejects["by_reason"] == {"study/no_split": 1}
    assert sum(r.split == "test" for r in read_images(tmp_path / "sf")) == 5


def test_rsna_conflicting_targets_and_missing_dicoms(tmp_path):
    ids = rsna_tree(tmp_path / "rsna")
    with (tmp_path / "rsna" / "stage_2_train_labels.csv").open("a") as f:
        f.write(f"{ids[0]},,,,,0\n{ids[1]},,,,,yes\n")
    (tmp_path / "rsna" / "stage_2_train_images" / f"{ids[2]}.dcm").unlink()
    (tmp_path / "rsna" / "stage_2_train_images" / f"{ids[3]}.dcm").write_bytes(b"\0" * 200)
    report = run_transfer_prepare("rsna_pneumonia", TransferDataConfig(rsna_pneumonia=RSNAConfig(root=tmp_path / "rsna")), PREP, tmp_path / "o")
    assert report.rejects["by_reason"] == {"image/decode_failed": 1, "image/missing_image": 1,
                                           "study/conflicting_labels": 2, "study/no_images": 1}
    assert report.counts["images"] == len(ids) - 4
    _csv(tmp_path / "rsna" / "stage_2_train_labels.csv", ["patientId", "label"], [[ids[0], 1]])
    with pytest.raises(DatasetFormatError, match=r"missing column\(s\) \['Target'\]"):
        run_transfer_prepare("rsna_pneumonia", TransferDataConfig(rsna_pneumonia=RSNAConfig(root=tmp_path / "rsna")), PREP, tmp_path / "o")


# ----------------------------------------------------------------------------------------- demo NIH
def test_demo_nih_tree_is_read_with_exactly_its_planted_faults(tmp_path):
    from cxrpipe.data.demo.nih import ENTRY_CSV, DemoNIHConfig, write_demo_nih

    counts = write_demo_nih(DemoNIHConfig(n_images=40, image_size=64), tmp_path / "demo-nih")
    root = tmp_path / "demo-nih"
    header = next(csv.reader((root / ENTRY_CSV).open()))
    assert header == NIH_HEADER and (root / "train_val_list.txt").is_file() and (root / "test_list.txt").is_file()
    assert counts["images"] == 40 and len(list(root.glob("images_001/images/*.png"))) == 40
    faults = json.loads((root / "DEMO_CORRUPTIONS.json").read_text())
    report = run_transfer_prepare("nih_cxr14", TransferDataConfig(nih_cxr14=NIHConfig(root=root)), PREP, tmp_path / "out")
    assert report.demo
    from cxrpipe.data.demo_faults import PlantedFaults
    from cxrpipe.data.records import Reject

    planted = PlantedFaults(root)  # prepare's WARNING lines mark them "expected: planted demo fault"
    assert all(Reject(**r) in planted for r in csv.DictReader((tmp_path / "out" / "rejects.csv").open()))
    rejected = {r["id"].removesuffix(".png") for r in csv.DictReader((tmp_path / "out" / "rejects.csv").open()) if r["kind"] == "image"}
    assert rejected == {f["dicom_id"].removesuffix(".png") for f in faults}
    positives = sum(np.array([s.labels for s in read_studies(tmp_path / "out")]).sum(0) > 0)
    assert positives >= 5  # several NIH labels occur (from the MIMIC demo's finding sampler)


def test_transfer_prepare_cli_writes_the_folder_and_fails_in_one_line(tmp_path):
    import yaml
    from typer.testing import CliRunner

    from cxrpipe.cli import app

    nih_tree(tmp_path / "nih", n_patients=5)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({
        "transfer_data": {"nih_cxr14": {"root": str(tmp_path / "nih")}},
        "prepare": {"image_size": 16, "workers": 0},
    }))
    runner = CliRunner()
    res = runner.invoke(app, ["transfer-prepare", "--params", str(params), "--dataset", "nih_cxr14", "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    assert read_label_names(tmp_path / "o") == NIH_LABELS
    res = runner.invoke(app, ["transfer-prepare", "--params", str(params), "--dataset", "chexpert", "--out", str(tmp_path / "c")])
    assert res.exit_code == 1 and "transfer_prepare failed: transfer_data.chexpert.root is not set" in res.output
    res = runner.invoke(app, ["transfer-prepare", "--params", str(params), "--dataset", "iu-xray", "--out", str(tmp_path / "c")])
    assert res.exit_code == 1 and "is a pretraining source" in res.output


def test_transfer_prepare_resumes_an_interrupted_decode(tmp_path, monkeypatch):
    """The same chunk-resume path as prepare: a Ctrl-C part-way keeps the decoded chunks, the rerun decodes
    only the rest, and the image cache is byte-identical to an uninterrupted run's."""
    import cxrpipe.data.prepare as prepare_mod

    nih_tree(tmp_path / "nih", n_patients=8)
    cfg = TransferDataConfig(nih_cxr14=NIHConfig(root=tmp_path / "nih"))
    prep = PrepareConfig(image_size=16, workers=0, flush_every=2)
    ref = tmp_path / "ref"
    run_transfer_prepare("nih_cxr14", cfg, prep, ref)
    real = prepare_mod._decode_task

    def interrupted(task):
        if task[0] >= 5:
            raise KeyboardInterrupt
        return real(task)

    monkeypatch.setattr(prepare_mod, "_decode_task", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_transfer_prepare("nih_cxr14", cfg, prep, tmp_path / "out")
    monkeypatch.setattr(prepare_mod, "_decode_task", real)
    report = run_transfer_prepare("nih_cxr14", cfg, prep, tmp_path / "out")
    assert report.timing["resumed"] == 5 and report.timing["decoded"] == report.counts["images"] - 5
    for name in ("images.h5", "images.csv", "studies.csv"):
        assert (tmp_path / "out" / name).read_bytes() == (ref / name).read_bytes()


def test_demo_nih_labels_are_drawn_signs(tmp_path):
    """Plant-and-detect: a pixel logistic regression trained on the demo's train images finds Cardiomegaly and
    Effusion on its test images (the MIMIC demo's signs), and not a shuffled copy of the labels."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    import h5py
    from cxrpipe.data.demo.nih import DemoNIHConfig, write_demo_nih

    write_demo_nih(DemoNIHConfig(n_images=400, image_size=64, n_corrupt=0, test_fraction=0.3), tmp_path / "d")
    out = tmp_path / "out"
    run_transfer_prepare("nih_cxr14", TransferDataConfig(nih_cxr14=NIHConfig(root=tmp_path / "d", validate_fraction=0.0)),
                         PrepareConfig(image_size=16, workers=0), out)
    with h5py.File(out / "images.h5") as f:
        x = f["images"][:].reshape(-1, 16 * 16).astype(np.float32) / 255.0
    images, studies = read_images(out), {s.study_id: s for s in read_studies(out)}
    test = np.array([r.split == "test" for r in images])
    x = (x - x[~test].mean(0)) / (x[~test].std(0) + 1e-3)  # standardised on train, as the pixels reference
    rng = np.random.default_rng(0)
    for label in ("Cardiomegaly", "Effusion"):
        y = np.array([studies[r.study_id].labels[NIH_LABELS.index(label)] for r in images])
        auc = roc_auc_score(y[test], LogisticRegression(C=0.1, max_iter=2000).fit(x[~test], y[~test]).predict_proba(x[test])[:, 1])
        y_shuf = rng.permutation(y[~test])
        auc_shuf = roc_auc_score(y[test], LogisticRegression(C=0.1, max_iter=2000).fit(x[~test], y_shuf).predict_proba(x[test])[:, 1])
        assert auc > 0.75 and abs(auc_shuf - 0.5) < 0.2, (label, auc, auc_shuf)  # measured: ~0.87 / ~0.93
