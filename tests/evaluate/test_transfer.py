"""Transfer evaluation on prepared folders with their own label sets (NIH-, RSNA-, CheXpert-like).

The folders are synthetic (``write_manifest(label_names=...)`` + the image cache writer, as ``transfer_prepare``
writes them) with a planted signal: each label is a texture in the image, so a tiny random ViT can read it.
Tests that can fail: the planted labels must be learned (fc, linear and LP-FT) at every label width, shuffled
labels must score chance, the paired delta must follow an encoder planted to be better, a fraction too small
to learn from must read "not estimable" (null), never 0.5.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from cxrpipe.config import section
from cxrpipe.data.image_cache import ImageCacheWriter
from cxrpipe.data.manifest import ImageRecord, StudyRecord, write_manifest
from cxrpipe.evaluate.probe.finetune import FinetuneConfig, Protocol
from cxrpipe.evaluate.stats.metrics import load_predictions
from cxrpipe.evaluate.stats.rules import BootstrapUnit, StatsConfig
from cxrpipe.evaluate.transfer.run import TransferConfig, run_transfer
from cxrpipe.evaluate.transfer.report import run_transfer_compare
from cxrpipe.labels import CHEXPERT_LABELS

from tests.evaluate.conftest import SIZE, TINY_PARAMS, make_encoder

pytestmark = pytest.mark.slow  # whole runs (seconds each)

NIH_LIKE = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion", "Emphysema", "Fibrosis",
            "Hernia", "Infiltration", "Mass", "No Finding", "Nodule", "Pleural_Thickening", "Pneumonia",
            "Pneumothorax")
THREE = ("Effusion", "Nodule", "Mass")  # a non-CheXpert set; the planted labels come first
STATS = StatsConfig(min_test_positives=2)  # patients (one study each here); labels with 2+ test positives


def _texture(img: np.ndarray, k: int) -> None:
    """Plant texture ``k`` (0: bright top-left quarter, 1: vertical stripes bottom-right, 2: a checkerboard
    top-right): different textures, so a position-blind random ViT still tells them apart."""
    h = SIZE // 2
    if k == 0:
        img[:h, :h] += 100
    elif k == 1:
        img[h:, h::2] += 140
    else:
        img[:h, h:] += 140 * ((np.add.outer(np.arange(h), np.arange(h)) % 2) == 0)


def make_transfer_set(out: Path, labels: tuple[str, ...], planted: int, shuffle: bool = False,
                      n_studies: int = 200, seed: int = 0, title: str = "synthetic") -> Path:
    """A prepared folder in the transfer format: one PA image per study (NIH: image = study), one patient
    per study; the first ``planted`` labels are textures (prevalence 40%), the others blank (negative).
    60% train, 15% validate, 25% test. ``shuffle``: label rows permuted over all studies (chance)."""
    rng = np.random.default_rng(seed)
    n_train, n_val = int(0.6 * n_studies), int(0.15 * n_studies)
    positive = rng.random((n_studies, planted)) < 0.4  # [S, k] what the images show
    raw = np.full((n_studies, len(labels)), math.nan)
    raw[:, :planted] = positive.astype(float)
    if shuffle:
        raw = raw[rng.permutation(n_studies)]
    images, studies = [], []
    out.mkdir(parents=True, exist_ok=True)
    with ImageCacheWriter(out / "images.h5", [f"{s:05d}.png" for s in range(n_studies)], SIZE) as w:
        for s in range(n_studies):
            split = "train" if s < n_train else "validate" if s < n_train + n_val else "test"
            studies.append(StudyRecord(s + 1, 1000 + s, split, "", {}, tuple(float(v) for v in raw[s])))
            images.append(ImageRecord(s, f"{s:05d}.png", s + 1, 1000 + s, split, "PA", f"images/{s:05d}.png"))
            img = rng.normal(60, 8, size=(SIZE, SIZE))
            for k in np.flatnonzero(positive[s]):
                _texture(img, int(k))
            w.write(s, np.clip(img, 0, 255).astype(np.uint8))
    write_manifest(out, images, studies, label_names=labels)
    (out / "prepare_report.json").write_text(json.dumps({"dataset": title, "demo": True, "source": title}))
    return out


def make_blind_encoder(out: Path, variant: str) -> Path:
    """The tiny ViT with its patch embedding zeroed: features that do not depend on the image (chance)."""
    from safetensors.torch import load_file, save_file

    make_encoder(out, variant, seed=4)
    state = load_file(out / "encoder.safetensors")
    for k in state:
        if k.startswith("patch_embed."):
            state[k] = state[k] * 0
    save_file(state, out / "encoder.safetensors")
    return out


def _cfg(**over) -> tuple[FinetuneConfig, TransferConfig]:
    params = copy.deepcopy(TINY_PARAMS)
    for probe in ("fc", "linear"):  # 120 training studies: 150 steps of 8 are 10 passes
        params["finetune"][probe].update({"steps": 150, "eval_every": 25, "batch_size": 8})
    params["transfer"] = {"encoders": ["mae", "multimodal", "random"], "label_fractions": [1.0],
                          "finetune_epochs": 2, "n_bootstrap": 100, **over}
    return section(params, "finetune", FinetuneConfig), section(params, "transfer", TransferConfig)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("transfer")
    return {
        "three": make_transfer_set(root / "three", THREE, planted=3),
        "shuffled": make_transfer_set(root / "shuffled", THREE, planted=3, shuffle=True),
        "rsna": make_transfer_set(root / "rsna", ("Pneumonia",), planted=1, title="RSNA Pneumonia"),
        "chexpert": make_transfer_set(root / "chexpert", CHEXPERT_LABELS, planted=0, n_studies=120),
        "nih": make_transfer_set(root / "nih", NIH_LIKE, planted=0, n_studies=120),
        "seeing": make_encoder(root / "models" / "seeing", "seeing", seed=3),
        "blind": make_blind_encoder(root / "models" / "blind", "blind"),
        # the same two, exported under the names the runs are compared by (a run records its encoder's name)
        "mae": make_blind_encoder(root / "models" / "mae", "mae"),
        "multimodal": make_encoder(root / "models" / "multimodal", "multimodal", seed=3),
        "random": make_blind_encoder(root / "models" / "random", "random"),
    }


@pytest.mark.parametrize("protocol", ["fc", "linear", "finetune"])
def test_planted_three_label_set_is_learned_with_its_own_head(inputs, tmp_path, protocol):
    ft, cfg = _cfg()
    s = run_transfer(ft, cfg, "three", inputs["seeing"], protocol, inputs["three"], tmp_path / "run", STATS)
    r = s["runs"]["f1"]
    assert s["labels"] == list(THREE) and r["labels_in_mauc"] == list(THREE) and r["estimable"]
    assert r["mauc"] > 0.9, r["mauc"]
    m = json.loads((tmp_path / "run" / "f1.json").read_text())
    assert min(p["auroc"] for p in m["study"]["per_label"]) > 0.9, m["study"]["per_label"]
    assert m["study"]["mauc5"] is None and m["study"]["labels_in_mauc5"] == []  # not a CheXpert label set
    pred, _ = load_predictions(tmp_path / "run" / "f1.npz", labels=None)
    assert pred.labels == THREE and pred.probs.shape == (50, 3)  # the head's width is the label set's
    with pytest.raises(ValueError, match="14 CheXpert"):
        load_predictions(tmp_path / "run" / "f1.npz")  # stage three's default still insists on its 14


@pytest.mark.parametrize("protocol", ["linear", "finetune"])
def test_shuffled_labels_score_chance(inputs, tmp_path, protocol):
    ft, cfg = _cfg()
    s = run_transfer(ft, cfg, "three", inputs["seeing"], protocol, inputs["shuffled"], tmp_path / "run", STATS)
    assert abs(s["runs"]["f1"]["mauc"] - 0.5) < 0.15, s["runs"]["f1"]["mauc"]


def test_one_label_set_rsna_like(inputs, tmp_path):
    ft, cfg = _cfg()
    s = run_transfer(ft, cfg, "rsna_pneumonia", inputs["seeing"], "linear", inputs["rsna"], tmp_path / "run", STATS)
    r = s["runs"]["f1"]
    assert s["labels"] == ["Pneumonia"] and r["labels_in_mauc"] == ["Pneumonia"] and r["mauc"] > 0.9
    assert r["mauc5"] is None and s["dataset"]["title"] == "RSNA Pneumonia"


def test_chexpert_like_set_reports_the_5_label_mauc_nih_like_does_not(inputs, tmp_path):
    """Labels drawn at random (no signal needed): what matters is which set gets mAUC-5."""
    ft, cfg = _cfg()
    for name, key in (("chexpert", "chexpert"), ("nih_cxr14", "nih")):
        _rewrite_random_labels(inputs[key], tmp_path / key)
    runs = tmp_path / "runs"
    for enc in ("mae", "multimodal"):
        che = run_transfer(ft, cfg, "chexpert", inputs[enc], "linear", tmp_path / "chexpert",
                           runs / "chexpert" / f"{enc}-linear", STATS)
        nih = run_transfer(ft, cfg, "nih_cxr14", inputs[enc], "linear", tmp_path / "nih",
                           runs / "nih_cxr14" / f"{enc}-linear", STATS)
    c, n = che["runs"]["f1"], nih["runs"]["f1"]
    five = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"]
    assert c["mauc5"] is not None and sorted(c["labels_in_mauc5"]) == five
    assert n["mauc"] is not None and n["mauc5"] is None and n["labels_in_mauc5"] == []
    assert {"Atelectasis", "Effusion"} <= set(n["labels_in_mauc"])  # NIH's 4 look-alikes are in its own mAUC
    cfg = dataclasses.replace(cfg, datasets=("chexpert", "nih_cxr14"), protocols=(Protocol.LINEAR,))
    out = run_transfer_compare(cfg, runs, tmp_path / "transfer.json", tmp_path / "transfer.md",
                               stats=dataclasses.replace(STATS, bootstrap_unit=BootstrapUnit.STUDY))
    rc, rn = out["chexpert"]["linear"]["f1"], out["nih_cxr14"]["linear"]["f1"]
    assert rc["multimodal"]["mauc5"] is not None and rc["delta_mauc5"] is not None and rc["p_value5"] is not None
    assert "mauc5" not in rn["multimodal"] and "delta_mauc5" not in rn and rn["delta_mauc"] is not None
    names = json.loads((tmp_path / "transfer.config.json").read_text())["datasets"]
    assert names["chexpert"]["competition_labels"] == five and names["nih_cxr14"]["competition_labels"] == []
    assert sorted(names["chexpert"]["protocols"]["linear"]["f1"]["labels_in_mauc5"]) == five
    md = (tmp_path / "transfer.md").read_text()
    assert md.count("5-label CheXpert competition mAUC") == 1  # the CheXpert section only


def _rewrite_random_labels(src: Path, out: Path) -> None:
    """Copy a prepared folder with every label drawn at random (prevalence 30%)."""
    import shutil

    from cxrpipe.data.manifest import read_images, read_label_names, read_studies

    shutil.copytree(src, out)
    names = read_label_names(src)
    rng = np.random.default_rng(1)
    studies = [StudyRecord(s.study_id, s.subject_id, s.split, "", {},
                           tuple(float(v) for v in (rng.random(len(names)) < 0.3))) for s in read_studies(src)]
    write_manifest(out, read_images(src), studies, label_names=names)


def test_paired_delta_follows_the_planted_better_encoder(inputs, tmp_path):
    """`multimodal` sees the textures, `mae` and `random` are blind: delta > 0 with its interval above 0;
    swapped, the sign follows. transfer.json holds numbers only; the names go to transfer.config.json."""
    ft, cfg = _cfg(label_fractions=[0.01, 1.0])
    runs = tmp_path / "runs"
    for enc in ("mae", "multimodal", "random"):  # multimodal sees; mae and random are blind
        run_transfer(ft, cfg, "nih_cxr14", inputs[enc], "linear", inputs["three"], runs / "nih_cxr14" / f"{enc}-linear",
                     STATS)
    cfg = TransferConfig(datasets=("nih_cxr14",), protocols=(Protocol.LINEAR,), label_fractions=(0.01, 1.0),
                         n_bootstrap=200)
    prepared = tmp_path / "transfer"
    prepared.mkdir()
    (prepared / "nih_cxr14").symlink_to(inputs["three"])
    out = run_transfer_compare(cfg, runs, tmp_path / "metrics" / "transfer.json", tmp_path / "transfer.md", prepared,
                               STATS)
    # one study per patient in this set: resampling patients is resampling studies, number for number
    by_study = run_transfer_compare(cfg, runs, tmp_path / "study.json", tmp_path / "study.md",
                                    stats=dataclasses.replace(STATS, bootstrap_unit=BootstrapUnit.STUDY))
    assert by_study == out and out["nih_cxr14"]["linear"]["f1"]["n_test_patients"] == 50
    r = out["nih_cxr14"]["linear"]["f1"]
    assert r["delta_mauc"] > 0.3 and r["delta_ci95"][0] > 0 and r["p_value"] < 0.05
    assert r["multimodal"]["mauc"] > 0.9 and abs(r["mae"]["mauc"] - 0.5) < 0.05
    assert r["references"]["multimodal_vs_random"]["delta_ci95"][0] > 0
    assert abs(r["references"]["mae_vs_random"]["delta_mauc"]) < 0.05 and r["n_labels_in_mauc"] == 3
    # 0.01 of 120 training studies = 1 study, 1 image: not run, reported as not estimable, never 0.5
    small = out["nih_cxr14"]["linear"]["f0.01"]
    assert small["n_train_studies"] == 1 and small["n_labels_in_mauc"] == 0
    assert small["delta_mauc"] is None and all(small[e]["mauc"] is None for e in ("mae", "multimodal", "random"))
    written = json.loads((tmp_path / "metrics" / "transfer.json").read_text())
    assert written == out and not _strings(written)
    config = json.loads((tmp_path / "metrics" / "transfer.config.json").read_text())
    assert config["datasets"]["nih_cxr14"]["labels"] == list(THREE)
    assert config["datasets"]["nih_cxr14"]["protocols"]["linear"]["f1"]["labels_in_mauc"] == list(THREE)
    md = (tmp_path / "transfer.md").read_text()
    assert "| 1 | 120 | 3 |" in md and "none: not estimable" in md and "multimodal - mae" in md
    assert "fraction 1: mAUC over Effusion, Nodule, Mass" in md  # which labels, not only how many
    assert "(50 test patients, 50 test studies)" in md
    # swapped roles: the delta's sign follows the better encoder
    swapped = run_transfer_compare(dataclasses.replace(cfg, reference="multimodal", candidate="mae"),
                                   runs, tmp_path / "s.json", tmp_path / "s.md", prepared, STATS)
    assert swapped["nih_cxr14"]["linear"]["f1"]["delta_ci95"][1] < 0


def _strings(node) -> list:
    if isinstance(node, dict):
        return [s for v in node.values() for s in _strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in _strings(v)]
    return [node] if isinstance(node, str) else []


def test_labels_without_a_training_positive_are_not_estimable(inputs, tmp_path):
    """A 3-label set where `Mass` is never positive in train (but is in test): its AUROC is left out of mAUC
    and named, instead of entering the mean as an untrained output's ~0.5."""
    from cxrpipe.data.manifest import read_images, read_label_names, read_studies

    src, out = inputs["three"], tmp_path / "three"
    _rewrite_random_labels(src, out)  # a copy to edit
    names = read_label_names(out)
    orig = {s.study_id: s for s in read_studies(src)}
    studies = [StudyRecord(s.study_id, s.subject_id, s.split, "", {},
                           tuple(0.0 if (n == "Mass" and s.split == "train") else v
                                 for n, v in zip(names, orig[s.study_id].labels)))
               for s in read_studies(out)]
    write_manifest(out, read_images(out), studies, label_names=names)
    ft, cfg = _cfg(label_fractions=[0.3, 1.0])
    s = run_transfer(ft, cfg, "three", inputs["seeing"], "linear", out, tmp_path / "run", STATS)
    for tag in ("f0.3", "f1"):
        r = s["runs"][tag]
        assert r["train_positives"]["Mass"] == 0 and r["labels_not_estimable"] == ["Mass"]
        assert r["labels_in_mauc"] == ["Effusion", "Nodule"] and r["mauc"] > 0.8
    m = json.loads((tmp_path / "run" / "f1.json").read_text())["study"]
    mass = next(p for p in m["per_label"] if p["label"] == "Mass")
    assert mass["not_estimable"] and not mass["in_mauc"] and mass["n_train_pos"] == 0 and mass["n_pos"] > 0


def test_transfer_stages_through_their_clis(inputs, tmp_path, monkeypatch):
    """`cxrpipe transfer` with its default paths (data/transfer/<dataset> -> data/transfer-runs/...), then
    `cxrpipe transfer-compare`; a missing prepared folder is a clear error."""
    import shutil

    from typer.testing import CliRunner

    from cxrpipe.cli import app

    monkeypatch.chdir(tmp_path)
    shutil.copytree(inputs["rsna"], tmp_path / "data" / "transfer" / "rsna_pneumonia")
    params = copy.deepcopy(TINY_PARAMS)
    params["transfer"] = {"datasets": ["rsna_pneumonia"], "encoders": ["mae", "multimodal"], "protocols": ["fc"],
                          "label_fractions": [0.5, 1.0], "n_bootstrap": 50}
    Path("params.yaml").write_text(yaml.safe_dump(params))
    runner = CliRunner()
    for enc in ("mae", "multimodal"):
        shutil.copytree(inputs[enc], tmp_path / "data" / "models" / enc)
        res = runner.invoke(app, ["transfer", "--dataset", "rsna_pneumonia", "--encoder", f"data/models/{enc}"])
        assert res.exit_code == 0, res.output
    assert (tmp_path / "data/transfer-runs/rsna_pneumonia/multimodal-fc/f0.5.npz").exists()  # --protocol: fc
    res = runner.invoke(app, ["transfer-compare"])
    assert res.exit_code == 0, res.output
    out = json.loads((tmp_path / "data/metrics/transfer.json").read_text())
    assert out["rsna_pneumonia"]["fc"]["f0.5"]["delta_mauc"] > 0.2
    assert "RSNA Pneumonia" in (tmp_path / "data/reports/transfer.md").read_text()
    res = runner.invoke(app, ["transfer", "--dataset", "chexpert"])
    assert res.exit_code == 1 and "data/transfer/chexpert/studies.csv not found" in res.output
    assert "dvc repro transfer_prepare@chexpert" in res.output


ROOT = Path(__file__).resolve().parents[2]
MATRIX = {"datasets", "encoders", "protocols"}  # the transfer stage's matrix axes, not its params


@pytest.mark.parametrize("profile", ["params.yaml", "params-mimic.yaml"])
def test_both_profiles_build_the_transfer_section(profile):
    cfg = section(ROOT / profile, "transfer", TransferConfig)
    assert "nih_cxr14" in cfg.datasets and cfg.reference in cfg.encoders and cfg.candidate in cfg.encoders
    assert sorted(cfg.label_fractions) == [0.01, 0.1, 1.0]


def test_dvc_yaml_lists_exactly_the_transfer_keys_each_stage_reads():
    import dataclasses as dc

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    fields = {f.name for f in dc.fields(TransferConfig)}

    def listed(stage: str) -> set[str]:
        return {p.split(".", 1)[1] for p in stages[stage]["params"] if p.startswith("transfer.")}

    assert listed("transfer") == fields - MATRIX - {"reference", "candidate", "references"}
    assert listed("transfer_compare") == fields - {"uncertain", "blank", "views", "finetune_epochs"}
    assert "stats" in stages["transfer"]["params"] and "stats" in stages["transfer_compare"]["params"]
    assert set(stages["transfer"]["matrix"]) == {"dataset", "encoder", "protocol"}
    deps = set(stages["transfer"]["deps"])
    assert {"cxrpipe/evaluate/transfer/run.py", "data/transfer/${item.dataset}", "data/models/${item.encoder}"} <= deps


def test_mauc5_interval_is_over_the_five_competition_labels_when_others_are_left_out():
    """With low-positive labels left out of mAUC, mAUC-5's interval must still come from the 5 competition
    labels' replicates (it once read the columns of other labels), and a NIH-like set gets no mAUC-5."""
    from cxrpipe.evaluate.stats import bootstrap
    from cxrpipe.evaluate.stats import metrics
    from cxrpipe.evaluate.stats.metrics import EvalLevel, LevelData

    rng = np.random.default_rng(0)
    n = 60
    y = (rng.random((n, 14)) < 0.4).astype(np.float32)
    low = [CHEXPERT_LABELS.index(x) for x in ("Enlarged Cardiomediastinum", "Fracture", "Lung Lesion")]
    y[:, low] = 0.0
    y[:2, low] = 1.0  # 2 positives each: reported apart with min_positives=5
    p = np.clip(0.3 * y + 0.7 * rng.random((n, 14)), 0, 1)
    m = np.ones_like(y, dtype=bool)
    block = metrics.evaluate_level(LevelData(np.arange(n), np.arange(n), p, y, m), np.full(14, 0.5), 200, 0,
                                   EvalLevel.STUDY, min_positives=5)
    c5 = np.array([CHEXPERT_LABELS.index(x) for x in metrics.COMPETITION_LABELS])
    reps = np.concatenate([bootstrap.nanmean_rows(bootstrap.auroc_matrix(y, p, m, c5, w))
                           for w in bootstrap.resample_weights(np.arange(n), 200, 0)])
    assert block["mauc5_ci95"] == pytest.approx(list(bootstrap.percentile_ci(reps)))
    assert block["mauc5"] == pytest.approx(metrics.auroc_per_label(y, p, m)[c5].mean())
    nih = metrics.evaluate_level(LevelData(np.arange(n), np.arange(n), p, y, m, NIH_LIKE[:14]),
                                 np.full(14, 0.5), 50, 0, EvalLevel.STUDY)
    assert nih["mauc5"] is None and nih["labels_in_mauc5"] == [] and nih["per_label"][4]["label"] == "Effusion"


def test_patient_bootstrap_draws_a_patients_studies_together():
    """Five identical studies per patient: resampling studies treats them as independent evidence; resampling
    patients does not, so its interval is wider (about sqrt(5) here) and the point estimates are the same.
    Runs whose predictions did not record the patients take them from the prepared folder's images.csv."""
    from cxrpipe.evaluate.stats.metrics import Predictions
    from cxrpipe.evaluate.stats.summaries import paired_columns
    from cxrpipe.evaluate.transfer.report import _level

    rng = np.random.default_rng(0)
    n_pat, k = 40, 5
    y = np.repeat((rng.random((n_pat, 2)) < 0.5).astype(np.float32), k, axis=0)  # [200, 2]
    pa = np.repeat(rng.random((n_pat, 2)), k, axis=0)
    pb = np.clip(pa + 0.4 * y, 0, 1)
    studies = np.arange(n_pat * k)
    subject_of = {int(s): 500 + int(s) // k for s in studies}
    cfg = TransferConfig(n_bootstrap=400)

    def level(probs, unit, recorded=True):
        pred = Predictions(studies.astype(str), studies, probs, y, np.ones_like(y, bool), ("A", "B"),
                           np.array([subject_of[int(s)] for s in studies]) if recorded else None)
        return _level(pred, cfg, unit, None if recorded else subject_of)

    a, b = level(pa, BootstrapUnit.STUDY), level(pb, BootstrapUnit.STUDY)
    pat_a, pat_b = level(pa, BootstrapUnit.PATIENT), level(pb, BootstrapUnit.PATIENT, recorded=False)
    assert pat_a.groups.max() == n_pat - 1 and np.array_equal(pat_a.groups, studies // k)
    assert np.array_equal(pat_b.groups, pat_a.groups)  # from images.csv: the same patients
    cols = np.arange(2)
    by_study, by_patient = paired_columns(a, b, cols, 0, 400, 0), paired_columns(pat_a, pat_b, cols, 0, 400, 0)
    assert by_patient["delta_mauc"] == pytest.approx(by_study["delta_mauc"])
    width = lambda d: d["delta_ci95"][1] - d["delta_ci95"][0]  # noqa: E731
    assert width(by_patient) > 1.8 * width(by_study), (width(by_patient), width(by_study))
    with pytest.raises(ValueError, match="no patient"):
        _level(Predictions(studies.astype(str), studies, pa, y, np.ones_like(y, bool), ("A", "B")), cfg,
               BootstrapUnit.PATIENT, {0: 1})
