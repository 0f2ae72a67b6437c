"""Zero-shot on CheXpert, end to end (issue 18 part 5): a miniature CheXpert-v1.0-small layout whose frontal
images are :func:`tests.pretrain.synthetic.make_pairs`' clustered images, read by the real reader through
``transfer_prepare``, then scored by ``run_zeroshot`` and by the ``cxrpipe zeroshot`` command that the
``zeroshot_transfer`` stage runs, with an encoder pretrained here to separate the clusters."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from cxrpipe.data.chexpert import CheXpertConfig
from cxrpipe.data.image_cache import ImageCache
from cxrpipe.data.manifest import read_images, read_studies
from cxrpipe.data.prepare import PrepareConfig
from cxrpipe.data.transfer_prepare import TransferDataConfig, run_transfer_prepare
from cxrpipe.evaluate.alignment.zeroshot import ZeroShotConfig, prompt_labels, run_zeroshot
from cxrpipe.evaluate.stats.rules import StatsConfig
from tests.data.chexpert_tree import CheXpertImage, write_chexpert
from tests.evaluate.conftest import SIZE, cluster_prompt_cache, report_cluster

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

# Contrastive only (InfoNCE), mask 0.25 (the blob stays visible), 6 epochs x 3 steps: separates the 4 clusters on
# the 16 held-out studies in ~5 s (measured pair AUROCs 0.81-1.0). test_evaluations' `aligned` (Eq. 1 + MAE, 2
# epochs) does not (0.29-0.73): a planted label would not stand above chance there.
SEPARATING = {"model": {"mask_ratio": 0.25}, "epochs": 6, "batch_size": 8, "checkpoint_every": 100_000,
              "optim": {"lr": 3.0e-3, "warmup_epochs": 1.0}, "loss": {"kind": "infonce", "weight_mae": 0.0}}

COMPETITION = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"]  # labels' order
PLANTED = {"Atelectasis": 0, "Cardiomegaly": 1, "Edema": 2, "Pleural Effusion": 3}  # label -> its image cluster
UNPLANTED = "Consolidation"  # positive in half of each cluster's test studies: no signal the images carry
CFG = ZeroShotConfig(n_bootstrap=200, batch_size=8, device="cpu")
STATS = StatsConfig(min_test_positives=4)  # every scored label here has 4+ positives (16 test studies)


@pytest.fixture(scope="module")
def aligned(tmp_path_factory) -> dict:
    """make_pairs' 24 train + 16 held-out studies (4 clusters) and a ``multimodal`` encoder that separates them."""
    from cxrpipe.config import build
    from cxrpipe.pretrain.train import PretrainConfig, run_pretrain
    from tests.pretrain.synthetic import TINY, make_pairs

    root = tmp_path_factory.mktemp("separating")
    prepared, text = make_pairs(root, n_train=24, n_val=16)
    cfg = build(PretrainConfig, {**TINY, **SEPARATING, "model": {**TINY["model"], **SEPARATING["model"]}})
    run_pretrain(cfg, "multimodal", prepared, text, root / "multimodal", metrics_path=root / "m.json",
                 plots_dir=root / "plots")
    return {"prepared": prepared, "text": text, "models": {"multimodal": root / "multimodal"}}


def no_signal(k: int) -> bool:
    """Held-out study k's (cluster k % 4) label without signal: 2 of each cluster's 4 test studies positive."""
    return k // 4 in (0, 2)


def chexpert_of(aligned: dict, base: Path, planted: bool = True) -> tuple[Path, dict[tuple[int, int], dict]]:
    """A CheXpert layout of the fixture's studies: its 24 training studies in train.csv (patients 1..24), its 16
    held-out ones (never trained on) in valid.csv: 12 patients, the first 4 with two studies; 4 studies with a
    lateral drawn from ANOTHER cluster (the reader must drop it), 2 with a second frontal. ``planted``: PLANTED labels are
    1.0 exactly on their cluster, Consolidation on half of each cluster; else every competition label is
    positive on half of each cluster (no signal). -> (root, {(patient, study): {label: 0/1}} of valid.csv)."""
    cache = ImageCache(aligned["prepared"] / "images.h5")
    frontal = sorted((r for r in read_images(aligned["prepared"]) if r.view != "LATERAL"), key=lambda r: r.study_id)
    cluster = {s.study_id: report_cluster(s.text) for s in read_studies(aligned["prepared"])}
    images, truth = [], {}
    for i, r in enumerate(frontal):
        c = cluster[r.study_id]
        if i < 24:  # train.csv: planted labels, blanks and uncertain as in the real CSVs
            labels = {n: "1.0" if c == k else ("-1.0" if i % 5 == 0 else "") for n, k in PLANTED.items()}
            images.append(CheXpertImage("train.csv", i + 1, 1, cache[r.row], labels, ap_pa="AP" if i % 2 else "PA"))
            continue
        k = i - 24
        patient, study = (64541 + k // 2, 1 + k % 2) if k < 8 else (64541 + k - 4, 1)
        if planted:
            y = {n: int(c == PLANTED[n]) for n in PLANTED} | {UNPLANTED: int(no_signal(k))}
        else:
            y = {n: int(no_signal((k + j) % 16)) for j, n in enumerate(COMPETITION)}
        truth[(patient, study)] = y
        labels = {n: f"{v:.1f}" for n, v in y.items()} | {"Fracture": "0.0", "No Finding": "0.0"}
        images.append(CheXpertImage("valid.csv", patient, study, cache[r.row], labels, ap_pa="AP" if k % 3 else "PA"))
        if k < 4:  # a lateral drawn from another cluster
            other = next(x for x in frontal if cluster[x.study_id] == (c + 2) % 4)
            images.append(CheXpertImage("valid.csv", patient, study, cache[other.row], labels, False, "", 2))
        if k in (8, 9):  # a second frontal, of the same cluster: the study's probability is the mean of two
            twin = next(x for x in frontal if cluster[x.study_id] == c)
            images.append(CheXpertImage("valid.csv", patient, study, cache[twin.row], labels, view=2))
    return write_chexpert(base, images), truth


def prepare(root: Path, out: Path) -> Path:
    """The real reader through transfer_prepare (the transfer_prepare@chexpert stage's library call)."""
    prep = PrepareConfig(image_size=SIZE, workers=0, flush_every=8, max_reject_fraction=0.0)
    run_transfer_prepare("chexpert", TransferDataConfig(chexpert=CheXpertConfig(root=root)), prep, out)
    return out


def brute_force_auroc(aligned: dict, prepared: Path, prompts: Path, name: str, truth: dict) -> float:
    """scikit-learn's AUROC of label ``name`` from the raw scores of its prompt pair: softmax of (positive,
    negative), mean over each test study's frontal images, truth from the CSV we wrote (not from the reader)."""
    from sklearn.metrics import roc_auc_score

    from cxrpipe.evaluate.alignment.scorer import load_aligned, score_matrix
    from cxrpipe.text.cache import TextCache

    test = [r for r in read_images(prepared) if r.split == "test"]
    j = prompt_labels(CFG).index(name)
    cache = TextCache(prompts)
    raw = score_matrix(load_aligned(aligned["models"]["multimodal"]), ImageCache(prepared / "images.h5"),
                       [r.row for r in test], cache, [cache.row_of(2 * j), cache.row_of(2 * j + 1)], 4)  # [N, 2]
    prob = 1 / (1 + np.exp(raw[:, 1] - raw[:, 0]))
    key = {r.study_id: (r.subject_id, r.study_id - 1000 * r.subject_id) for r in test}  # -> (patient, study)
    ids = sorted(key)
    mean = [prob[[k for k, r in enumerate(test) if r.study_id == sid]].mean() for sid in ids]
    return float(roc_auc_score([truth[key[sid]][name] for sid in ids], mean))


def test_zeroshot_on_a_chexpert_layout_reports_the_competition_mauc(aligned, tmp_path):
    """valid.csv is the test set (frontal images only), the 5 competition findings make ``mauc5``; a planted
    label's AUROC equals the brute-force one and is well above chance, swapping its prompt pair gives 1 - AUROC,
    and the label without planted signal (and a whole layout without it) is not above chance."""
    root, truth = chexpert_of(aligned, tmp_path / "dl")
    prepared = prepare(root, tmp_path / "transfer" / "chexpert")
    test = [r for r in read_images(prepared) if r.split == "test"]
    assert len(test) == 18 and {r.subject_id for r in test} == set(range(64541, 64553))  # valid.csv, no laterals
    prompts = cluster_prompt_cache(aligned, prompt_labels(CFG), PLANTED, tmp_path / "p.h5")
    z = run_zeroshot(CFG, aligned["models"]["multimodal"], prepared, prompts, None, tmp_path / "z.json", stats=STATS)
    assert z["dataset"] == "chexpert" and "valid.csv" in z["split_rule"]
    assert (z["n"], z["n_studies"], z["n_patients"]) == (16, 16, 12) and z["bootstrap_unit"] == "patient"
    assert z["labels_in_mauc"] == z["labels_in_mauc5"] == COMPETITION  # Fracture, No Finding: no positive
    assert z["mauc5"] == pytest.approx(np.mean([z["per_label"][n]["auroc"] for n in COMPETITION]))
    assert z["prompts"]["Edema"] == list(CFG.prompts["Edema"])  # the params' pair is what the report names
    for name in PLANTED:
        assert z["per_label"][name]["auroc"] == pytest.approx(
            brute_force_auroc(aligned, prepared, prompts, name, truth), abs=1e-9)
    signal = [z["per_label"][n]["auroc"] for n in PLANTED]
    assert min(signal) > 0.75 and z["mauc5"] > 0.7 and z["mauc5_ci95"][0] > 0.5, z["per_label"]
    chance = z["per_label"][UNPLANTED]
    assert abs(chance["auroc"] - 0.5) <= 0.25 and chance["auroc_ci95"][0] < 0.5 < chance["auroc_ci95"][1]
    assert chance["auroc"] < min(signal)

    swapped = run_zeroshot(CFG, aligned["models"]["multimodal"], prepared,
                           cluster_prompt_cache(aligned, prompt_labels(CFG), PLANTED, tmp_path / "q.h5", {"Edema"}),
                           None, tmp_path / "q.json", stats=STATS)
    assert swapped["per_label"]["Edema"]["auroc"] == pytest.approx(1 - z["per_label"]["Edema"]["auroc"])
    assert swapped["per_label"]["Atelectasis"]["auroc"] == pytest.approx(z["per_label"]["Atelectasis"]["auroc"])

    root, _ = chexpert_of(aligned, tmp_path / "noise", planted=False)
    flat = run_zeroshot(CFG, aligned["models"]["multimodal"], prepare(root, tmp_path / "transfer" / "noise"), prompts,
                        None, tmp_path / "n.json", stats=STATS)
    assert flat["labels_in_mauc5"] == COMPETITION
    assert abs(flat["mauc5"] - 0.5) < 0.15 and flat["mauc5_ci95"][0] < 0.5 < flat["mauc5_ci95"][1], flat["per_label"]


def test_the_zeroshot_stage_command_scores_a_chexpert_folder(aligned, tmp_path, monkeypatch):
    """``cxrpipe zeroshot --prepared data/transfer/chexpert`` (what zeroshot_transfer@chexpert-<encoder> runs,
    with the repository's params: prompts, label rule, bootstrap) writes the library's numbers; a prompt cache
    made with other settings than the params' is a one-line error."""
    from typer.testing import CliRunner

    from cxrpipe.cli import app
    from cxrpipe.config import section
    from cxrpipe.data.prepare import DataConfig
    from cxrpipe.evaluate.alignment.zeroshot import prompt_texts
    from cxrpipe.text.embed import EmbedConfig
    from cxrpipe.text.prompts import prompt_fingerprint

    root, _ = chexpert_of(aligned, tmp_path / "dl")
    monkeypatch.chdir(tmp_path)
    prepared = prepare(root, Path("data/transfer/chexpert"))
    params = yaml.safe_load((Path(__file__).resolve().parents[2] / "params.yaml").read_text())
    params["zeroshot"].update(n_bootstrap=CFG.n_bootstrap, batch_size=CFG.batch_size, device="cpu")
    params["stats"]["min_test_positives"] = STATS.min_test_positives
    params["embed"]["model"] = "lm"  # a local folder: its hash is the model identity the fingerprint records
    Path("lm").mkdir()
    Path("lm/config.json").write_text("{}")
    Path("params.yaml").write_text(yaml.safe_dump(params))
    cfg = section(params, "zeroshot", ZeroShotConfig)
    expect = prompt_fingerprint(section(params, "embed", EmbedConfig), prompt_texts(cfg),
                                section(params, "data", DataConfig).sections)
    cluster_prompt_cache(aligned, prompt_labels(cfg), PLANTED, Path("prompts.h5"), fingerprint=expect)
    argv = ["zeroshot", "--params", "params.yaml", "--encoder", str(aligned["models"]["multimodal"]), "--prepared",
            str(prepared), "--prompts", "prompts.h5", "--out", "data/metrics/zeroshot-chexpert-multimodal.json"]
    res = CliRunner().invoke(app, argv)
    assert res.exit_code == 0, res.output
    written = json.loads(Path("data/metrics/zeroshot-chexpert-multimodal.json").read_text())
    lib = run_zeroshot(cfg, aligned["models"]["multimodal"], prepared, "prompts.h5", expect, tmp_path / "lib.json",
                       stats=StatsConfig(min_test_positives=STATS.min_test_positives))
    assert written["mauc5"] == lib["mauc5"] and written["mauc5_ci95"] == lib["mauc5_ci95"]
    names = json.loads(Path("data/metrics/zeroshot-chexpert-multimodal.config.json").read_text())
    assert names["labels_in_mauc5"] == COMPETITION and names["dataset"] == "chexpert"

    params["embed"]["max_tokens"] = 7  # the prompts would be embedded otherwise: the cache is stale
    Path("params.yaml").write_text(yaml.safe_dump(params))
    res = CliRunner().invoke(app, argv)
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert res.exit_code == 1 and len(lines) == 1 and lines[0].startswith("zeroshot failed: "), res.output
    assert "max_tokens" in lines[0], lines[0]
