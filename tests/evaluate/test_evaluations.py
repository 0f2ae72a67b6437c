"""The evaluations of issue 10: label efficiency, zero-shot, retrieval, attention maps, 5-label mAUC."""

from __future__ import annotations

import dataclasses
import json
import math
import re

import numpy as np
import pytest
import torch

from cxrpipe.config import build
from cxrpipe.evaluate.probe.data import labelled_splits, sample_studies
from cxrpipe.evaluate.stats.metrics import COMPETITION_LABELS, LevelData
from cxrpipe.evaluate.alignment.retrieval import chance_at_k, hits_at_k, retrieval_both_ways
from cxrpipe.evaluate.alignment.zeroshot import auroc_summary, pair_probabilities
from cxrpipe.evaluate.stats.rules import StatsConfig
from cxrpipe.labels import CHEXPERT_LABELS, BlankPolicy, UncertainPolicy

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


# ------------------------------------------------------------------------------------------- label efficiency


def test_label_fraction_samples_are_nested_and_seeded():
    ids = np.arange(5000, 5400)
    small, mid, full = (sample_studies(ids, f, seed=3) for f in (0.01, 0.1, 1.0))
    assert small.size == 4 and mid.size == 40 and full.size == 400
    assert set(small) <= set(mid) <= set(full)  # the 0.1 sample contains the 0.01 sample
    np.testing.assert_array_equal(mid, sample_studies(ids[::-1], 0.1, seed=3))  # row order irrelevant
    assert not set(sample_studies(ids, 0.1, seed=4)) == set(mid)


def test_label_efficiency_same_studies_for_every_encoder(synthetic, tmp_path, tiny_params):
    from cxrpipe.evaluate.probe.finetune import FinetuneConfig
    from cxrpipe.evaluate.probe.label_efficiency import LabelEfficiencyConfig, run_label_efficiency, summarize_label_efficiency

    ft = build(FinetuneConfig, tiny_params["finetune"])
    cfg, stats = LabelEfficiencyConfig(n_bootstrap=50), StatsConfig(min_test_positives=2)
    fractions = (0.5, 1.0, 0.25)
    out = {}
    for enc in ("mae", "multimodal"):
        out[enc] = run_label_efficiency(ft, cfg, fractions, synthetic[enc], synthetic["prepared"],
                                        tmp_path / "runs" / enc, tmp_path / f"le-{enc}.json", stats)["protocols"]
    assert list(out["mae"]) == ["fc", "linear"] and list(out["mae"]["fc"]) == ["f0.25", "f0.5", "f1"]
    for protocol in ("fc", "linear"):
        for tag in out["mae"][protocol]:
            assert out["mae"][protocol][tag]["train_studies_hash"] == out["multimodal"][protocol][tag]["train_studies_hash"]
    runs = out["mae"]["linear"]
    n = [runs[t]["n_train_studies"] for t in ("f0.25", "f0.5", "f1")]
    assert n[0] < n[1] < n[2]
    # scheduled by optimizer steps: every fraction trains the same number (an epoch of f0.25 is one step)
    for tag in runs:
        m = json.loads((tmp_path / "runs" / "mae" / "linear" / f"{tag}.json").read_text())
        assert max(h["step"] for h in m["history"]) == ft.linear.steps
    train = {f: set(labelled_splits(synthetic["prepared"], ("AP", "PA"), UncertainPolicy.IGNORE, BlankPolicy.ZEROS,
                                    f, ft.seed)["train"].study_ids) for f in (0.25, 0.5)}
    assert train[0.25] <= train[0.5]
    res = summarize_label_efficiency(cfg, fractions, tmp_path / "runs", tmp_path / "le.json", tmp_path / "le.md",
                                     tmp_path / "le.png", stats)
    assert set(res["delta"]) == {"fc", "linear"} and set(res["delta"]["linear"]) == {"f0.25", "f0.5", "f1"}
    d = res["delta"]["linear"]["f1"]
    assert d["delta_mauc"] == pytest.approx(out["multimodal"]["linear"]["f1"]["mauc"] - runs["f1"]["mauc"])
    assert (d["delta_ci95"][0] > 0 or d["delta_ci95"][1] < 0) == (d["p_value"] < 0.05)
    md = (tmp_path / "le.md").read_text()
    assert (tmp_path / "le.png").stat().st_size > 0 and "| 0.25 |" in md and "## fc" in md and "## linear" in md
    assert "5 patients, 10 studies" in md and "not estimable" in md
    # a run of the same encoder on other studies is refused
    summary = tmp_path / "runs" / "multimodal" / "summary.json"
    s = json.loads(summary.read_text())
    s["protocols"]["fc"]["f0.5"]["train_studies_hash"] = "other"
    summary.write_text(json.dumps(s))
    with pytest.raises(ValueError, match="different studies"):
        summarize_label_efficiency(cfg, fractions, tmp_path / "runs", tmp_path / "x.json", tmp_path / "x.md",
                                   tmp_path / "x.png", stats)


def test_label_efficiency_leaves_labels_without_a_training_positive_out(synthetic, tmp_path, tiny_params):
    """The transfer path's rule: a label no training study of the fraction is positive for is not estimable,
    out of mAUC and of the delta; with every study (f1) it is back in."""
    from cxrpipe.evaluate.probe.finetune import FinetuneConfig, Protocol
    from cxrpipe.evaluate.probe.label_efficiency import LabelEfficiencyConfig, run_label_efficiency, summarize_label_efficiency

    ft = build(FinetuneConfig, tiny_params["finetune"])
    cfg, stats = LabelEfficiencyConfig(protocols=(Protocol.LINEAR,), n_bootstrap=30), StatsConfig(min_test_positives=2)
    for enc in ("mae", "multimodal"):
        runs = run_label_efficiency(ft, cfg, (0.1, 1.0), synthetic[enc], synthetic["prepared"], tmp_path / enc,
                                    tmp_path / f"{enc}.json", stats)["protocols"]["linear"]
    small, full = runs["f0.1"], runs["f1"]
    lacking = [n for n, k in small["train_positives"].items() if k == 0]
    assert lacking and small["labels_not_estimable"] == lacking  # 3 training studies: most labels lack one
    assert not set(lacking) & set(small["labels_in_mauc"] or [])
    assert set(full["labels_in_mauc"]) - set(small["labels_in_mauc"] or [])  # learnable with every study
    res = summarize_label_efficiency(cfg, (0.1, 1.0), tmp_path, tmp_path / "s.json", tmp_path / "s.md",
                                     tmp_path / "s.png", stats)
    learned = [n for n in small["labels_in_mauc"] or []]
    assert res["delta"]["linear"]["f0.1"]["n_labels"] == len(learned)


# ------------------------------------------------------------------------------------------- 5-label mAUC


def test_metrics_report_the_five_label_competition_mauc(synthetic, tmp_path, tiny_params):
    from cxrpipe.evaluate.probe.finetune import FinetuneConfig, run_finetune

    m = run_finetune(build(FinetuneConfig, tiny_params["finetune"]), synthetic["mae"], "linear",
                     synthetic["prepared"], tmp_path / "m.json", stats=StatsConfig(min_test_positives=2))
    blk = m["study"]
    per = {p["label"]: p for p in blk["per_label"]}
    five = [n for n in COMPETITION_LABELS if per[n]["in_mauc"]]
    assert blk["labels_in_mauc5"] == five and five
    assert blk["mauc5"] == pytest.approx(np.mean([per[n]["auroc"] for n in five]))
    assert blk["mauc5_ci95"][0] <= blk["mauc5"] <= blk["mauc5_ci95"][1]


# ------------------------------------------------------------------------------------------- retrieval


def test_retrieval_with_duplicate_texts_by_hand():
    # images 0 and 1 are one study's two images (text 0); image 2 -> text 1; image 3 -> text 2
    scores = np.array([[0.1, 0.9, 0.5], [0.8, 0.2, 0.1], [0.3, 0.4, 0.6], [0.7, 0.0, 0.2]])
    image_text = np.array([0, 0, 1, 2])
    r = retrieval_both_ways(scores, image_text, np.array([7, 7, 8, 9]), ks=(1, 2, 3), n_bootstrap=20, seed=0)
    i2r, r2i = r["image_to_report"], r["report_to_image"]
    # image -> report: ranks of the own text 2, 0, 1, 1
    assert [i2r[f"recall@{k}"] for k in (1, 2, 3)] == pytest.approx([1 / 4, 3 / 4, 1.0])
    assert [i2r[f"chance@{k}"] for k in (1, 2, 3)] == pytest.approx([1 / 3, 2 / 3, 1.0])
    # report -> image: text 0 hits with image 1 (either image of the duplicate counts) at rank 0;
    # text 1's image ranks 1 (behind image 0); text 2's image ranks 2
    assert [r2i[f"recall@{k}"] for k in (1, 2, 3)] == pytest.approx([1 / 3, 2 / 3, 1.0])
    # chance: 1 - C(4 - m, k) / C(4, k), m = 2, 1, 1
    assert r2i["chance@1"] == pytest.approx((1 / 2 + 1 / 4 + 1 / 4) / 3)
    assert r2i["chance@2"] == pytest.approx((5 / 6 + 1 / 2 + 1 / 2) / 3)
    assert i2r["n_candidates"] == 3 and r2i["n_candidates"] == 4 and r2i["n_queries"] == 3
    lo, hi = i2r["recall@2_ci95"]
    assert 0 <= lo <= 0.75 <= hi <= 1


def test_random_scores_sit_at_chance():
    rng = np.random.default_rng(0)
    n_text = 50
    image_text = np.repeat(np.arange(n_text), 3)  # each text has 3 images
    scores = rng.normal(size=(image_text.size, n_text))
    r = retrieval_both_ways(scores, image_text, image_text, ks=(5,), n_bootstrap=100, seed=0)
    for way in ("image_to_report", "report_to_image"):
        lo, hi = r[way]["recall@5_ci95"]
        assert lo <= r[way]["chance@5"] <= hi
    assert r["report_to_image"]["chance@5"] == pytest.approx(1 - math.comb(147, 5) / math.comb(150, 5))
    with pytest.raises(ValueError, match="positive"):
        hits_at_k(scores, np.zeros_like(scores, dtype=bool), (1,))
    assert chance_at_k(np.array([1]), 10, (20,))[0] == 1.0  # k beyond the candidates


def test_label_precision_by_hand():
    """Hit@k / P@k on a hand-ranked example: query 0's relevant candidates sit at ranks 1 and 3 (of 4)."""
    from cxrpipe.evaluate.alignment.retrieval import label_precision

    scores = np.array([[0.9, 0.8, 0.7, 0.1], [0.1, 0.2, 0.3, 0.4]])
    relevant = np.array([[False, True, False, True], [False, False, False, True]])
    hit, prec = label_precision(scores, relevant, (1, 2, 4, 9))
    np.testing.assert_array_equal(hit, [[False, True, True, True], [True, True, True, True]])
    np.testing.assert_allclose(prec, [[0, 1 / 2, 2 / 4, 2 / 4], [1, 1 / 2, 1 / 4, 1 / 4]])


def _clustered_findings(n_text: int = 40, per: int = 3, n_labels: int = 4, signal: float = 0.0, seed: int = 1):
    """Texts in ``n_labels`` finding clusters (one finding each), ``per`` images per text (one study each, patients
    of two studies); scores = ``signal`` x same cluster + noise: a planted label-level signal without exact pairs."""
    rng = np.random.default_rng(seed)
    cluster = np.arange(n_text) % n_labels  # [M]
    image_text = np.repeat(np.arange(n_text), per)  # [N]
    findings = np.eye(n_labels, dtype=bool)[cluster[image_text]]  # [N, L]
    scores = signal * (cluster[image_text][:, None] == cluster[None, :]) + rng.normal(size=(image_text.size, n_text))
    study = np.arange(image_text.size)
    return scores, image_text, study, study // 2, findings


@pytest.mark.parametrize("signal", [0.0, 3.0])
def test_label_retrieval_finds_a_planted_finding_signal_and_not_its_absence(signal):
    """Scores that prefer the query's finding cluster (never its exact text) lift Hit@k / P@k above the prior
    while exact-pair recall stays at chance; random scores leave P@k at the prior (1 / 4 here) in both ways."""
    scores, image_text, study, subject, findings = _clustered_findings(signal=signal)
    r = retrieval_both_ways(scores, image_text, study, (1, 10), 200, 0, subject, "patient", findings)
    for way in ("image_to_report", "report_to_image"):
        w = r[way]
        assert w["precision_prior"] == pytest.approx(1 / 4) and w["n_label_queries"] == w["n_queries"]
        lo, hi = w["precision@10_ci95"]
        if signal:
            assert lo > w["precision_prior"] and w["precision@10"] > 0.8 and w["hit@1"] > 0.8
        else:
            assert lo <= w["precision_prior"] <= hi
            assert abs(w["hit@1"] - w["hit_chance@1"]) < 0.2 and w["hit@10"] < 1
        assert w["hit_chance@1"] == pytest.approx(1 / 4)
    assert r["image_to_report"]["recall@1"] < 0.3  # the exact pair is not what was planted


def test_label_retrieval_skips_queries_without_a_finding():
    scores, image_text, study, subject, findings = _clustered_findings(n_text=8, per=1)
    findings[:2] = False  # two studies without a positive label: never queries, never relevant
    r = retrieval_both_ways(scores, image_text, study, (1,), 20, 0, subject, "patient", findings)
    assert r["image_to_report"]["n_label_queries"] == 6 and r["report_to_image"]["n_label_queries"] == 6
    assert "hit@1" not in retrieval_both_ways(scores, image_text, study, (1,), 20, 0)["image_to_report"]


# ------------------------------------------------------------------------------------------- zero-shot


def _planted_heads(tmp_path, dim: int = 16):
    """A PretrainModel whose pools average their tokens (query weights 0 -> uniform attention) and whose maps
    are identities, exported and reloaded: image embedding = mean patch token, text embedding = mean
    normalised token. The planted agreement is then exact, so the test checks the zero-shot arithmetic."""
    from cxrpipe.pretrain.heads import load_heads, save_heads
    from cxrpipe.pretrain.losses import LossConfig
    from cxrpipe.pretrain.mae import MAEConfig
    from cxrpipe.pretrain.model import PretrainModel
    from cxrpipe.pretrain.pooling import PoolConfig

    mae = MAEConfig(img_size=32, patch_size=8, embed_dim=dim, depth=1, num_heads=2, decoder_embed_dim=16,
                    decoder_depth=1, decoder_num_heads=2)
    pool, loss = PoolConfig(dim=dim, num_heads=2), LossConfig()
    model = PretrainModel(mae, pool, loss, text_hidden=dim)
    eye = torch.eye(dim)
    with torch.no_grad():
        model.text_proj.proj.weight.copy_(eye)
        model.text_proj.proj.bias.zero_()
        for p in (model.image_pool.pool, model.text_pool.pool):
            p.q.weight.zero_()
            p.q.bias.zero_()
            p.kv.weight.copy_(torch.cat([eye, eye]))
            p.kv.bias.zero_()
            p.proj.weight.copy_(eye)
            p.proj.bias.zero_()
            p.mlp.fc2.weight.zero_()
            p.mlp.fc2.bias.zero_()
    save_heads(model, tmp_path, {"pool": pool, "loss": loss, "text_hidden": dim, "embed_dim": dim})
    return load_heads(tmp_path)[0]


def test_zeroshot_planted_signal_above_chance_and_swapped_prompts_not(tmp_path):
    rng = np.random.default_rng(0)
    dim, n, n_labels = 16, 120, 3
    heads = _planted_heads(tmp_path, dim)
    directions = torch.from_numpy(rng.normal(size=(n_labels, dim))).float()
    directions -= directions.mean(1, keepdim=True)  # the text side's per-token norm removes the mean
    y = rng.random((n, n_labels)) < 0.4  # [N, 3] planted findings
    patches = torch.from_numpy(rng.normal(scale=1.5, size=(n, 16, dim))).float()
    patches += (torch.from_numpy(y.astype(np.float32)) @ directions)[:, None, :]  # every patch carries the signs
    # prompts: positive = the finding's direction, negative = its opposite (token noise added)
    texts = []
    for j in range(n_labels):
        texts += [directions[j] + 0.3 * torch.randn(5, dim), -directions[j] + 0.3 * torch.randn(5, dim)]
    text = torch.stack(texts)  # [2 L, 5, dim]
    mask = torch.ones(text.shape[:2], dtype=torch.bool)
    with torch.no_grad():
        scores = heads.scores(patches, text, mask).numpy()  # [N, 2 L]
    probs = pair_probabilities(scores)
    assert np.all((probs > 0) & (probs < 1))

    def mauc(p: np.ndarray, targets: np.ndarray) -> float:
        data = LevelData(np.arange(n), np.arange(n), p, targets.astype(np.float32), np.ones_like(targets, bool))
        return auroc_summary(data, 100, 0, labels=CHEXPERT_LABELS[:n_labels])["mauc"]

    good = mauc(probs, y)
    assert good > 0.8
    # prompts given to the wrong labels at random (a derangement): the signal no longer agrees
    wrong = mauc(pair_probabilities(scores.reshape(n, n_labels, 2)[:, [1, 2, 0]].reshape(n, -1)), y)
    assert abs(wrong - 0.5) < 0.1
    # positive and negative swapped: the ranking flips
    flipped = mauc(pair_probabilities(scores.reshape(n, n_labels, 2)[:, :, ::-1].reshape(n, -1)), y)
    assert flipped == pytest.approx(1 - good)


def test_auroc_summary_intervals_and_five_labels():
    rng = np.random.default_rng(1)
    n = 200
    y = (rng.random((n, 14)) < 0.3).astype(np.float32)
    p = y * 0.5 + rng.random((n, 14))
    groups = np.repeat(np.arange(n // 2), 2)
    s = auroc_summary(LevelData(groups, groups, p, y, np.ones((n, 14), bool)), 100, 0)
    assert s["n_studies"] == n // 2 and len(s["labels_in_mauc"]) == 14
    assert s["mauc_ci95"][0] < s["mauc"] < s["mauc_ci95"][1]
    five = [s["per_label"][k]["auroc"] for k in COMPETITION_LABELS]
    assert s["mauc5"] == pytest.approx(np.mean(five))


def test_zeroshot_mauc_follows_the_label_rule():
    """A label with 3 test positives (fewer than min_test_positives) keeps its AUROC but leaves mAUC and
    mAUC-5, as in stage three; with the rule off it is averaged in."""
    rng = np.random.default_rng(2)
    n = 200
    y = (rng.random((n, 14)) < 0.3).astype(np.float32)
    rare = CHEXPERT_LABELS.index("Edema")  # a competition label
    y[:, rare] = 0.0
    y[:3, rare] = 1.0
    p = y * 0.5 + rng.random((n, 14))
    data = LevelData(np.arange(n), np.arange(n), p, y, np.ones((n, 14), bool))
    ruled, every = auroc_summary(data, 50, 0, min_positives=10), auroc_summary(data, 50, 0, min_positives=0)
    assert "Edema" not in ruled["labels_in_mauc"] and "Edema" not in ruled["labels_in_mauc5"]
    assert ruled["labels_low_positive"] == ["Edema"] and ruled["per_label"]["Edema"]["auroc"] is not None
    assert "Edema" in every["labels_in_mauc"] and len(every["labels_in_mauc5"]) == 5
    others = [ruled["per_label"][k]["auroc"] for k in ruled["labels_in_mauc"]]
    assert ruled["mauc"] == pytest.approx(np.mean(others)) and ruled["mauc"] != every["mauc"]
    assert ruled["mauc5"] == pytest.approx(np.mean([ruled["per_label"][k]["auroc"] for k in ruled["labels_in_mauc5"]]))


# ------------------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def aligned(tmp_path_factory):
    """Synthetic pairs with a test split and cluster labels, and both variants pretrained briefly."""
    from cxrpipe.data.manifest import read_images, read_studies, write_manifest
    from cxrpipe.pretrain.train import PretrainConfig, run_pretrain
    from tests.pretrain.synthetic import TINY, make_pairs

    root = tmp_path_factory.mktemp("aligned")
    prepared, text = make_pairs(root, n_train=24, n_val=16)
    test_ids = {s.study_id for s in read_studies(prepared) if s.split == "validate"}
    test_ids = set(sorted(test_ids)[8:])  # the last 8 validate studies (one duplicated text) become test

    def split(x):
        return dataclasses.replace(x, split="test") if x.study_id in test_ids and x.split == "validate" else x

    def labelled(s):
        c = int(re.search(r"cluster (\d)", s.text).group(1))
        return dataclasses.replace(s, labels=tuple(float(j == c) for j in range(14)))

    write_manifest(prepared, [split(r) for r in read_images(prepared)], [labelled(split(s)) for s in read_studies(prepared)])
    cfg = build(PretrainConfig, {**TINY, "epochs": 2, "batch_size": 8})
    models = {}
    for v in ("mae", "multimodal"):
        models[v] = root / "models" / v
        run_pretrain(cfg, v, prepared, text, models[v], metrics_path=root / f"{v}.json", plots_dir=root / v)
    return {"prepared": prepared, "text": text, "models": models, "root": root}


def test_zeroshot_and_retrieval_stages_run_on_exported_models(aligned, tmp_path):
    """The stages' numbers equal the ones recomputed here from the exported model's raw scores (scikit-learn
    AUROC on study-mean probabilities; recall by brute-force ranking), on the manifest's test images."""
    from sklearn.metrics import roc_auc_score

    from cxrpipe.data.image_cache import ImageCache
    from cxrpipe.data.manifest import read_images, read_studies
    from cxrpipe.evaluate.alignment.retrieval import RetrievalConfig, run_retrieval
    from cxrpipe.evaluate.alignment.scorer import load_aligned, score_matrix
    from cxrpipe.evaluate.alignment.zeroshot import ZeroShotConfig, prompt_texts, run_zeroshot
    from cxrpipe.text.cache import TextCache, write_text_cache

    # a prompt cache stand-in: label j's positive = a report of cluster j, negative = one of another cluster
    text = TextCache(aligned["text"])
    studies = {}
    for s in read_studies(aligned["prepared"]):
        studies.setdefault(int(re.search(r"cluster (\d)", s.text).group(1)), text.row_of(s.study_id))
    cfg = ZeroShotConfig(n_bootstrap=50, batch_size=4)
    rows = [studies[(j % 4) if k == 0 else (j + 1) % 4] for j in range(14) for k in range(2)]
    emb = [text.text_row(r) for r in rows]
    write_text_cache(tmp_path / "prompts.h5", emb, [text.token_ids(r) for r in rows], list(range(28)),
                     list(range(28)), text.fingerprint)
    assert len(prompt_texts(cfg)) == 28 + 2 * len(cfg.extra_prompts)  # CheXpert first: ids 0..27 are its 14 pairs
    stats = StatsConfig(min_test_positives=1)
    z = run_zeroshot(cfg, aligned["models"]["multimodal"], aligned["prepared"], tmp_path / "prompts.h5", None,
                     tmp_path / "z.json", stats=stats)
    assert z["n_studies"] == 8 and z["labels_in_mauc"] == list(CHEXPERT_LABELS[:4])
    assert z["bootstrap_unit"] == "patient" and z["n_patients"] == len(
        {r.subject_id for r in read_images(aligned["prepared"]) if r.split == "test"})
    written = json.loads((tmp_path / "z.json").read_text())
    assert written["mauc"] == z["mauc"] and "encoder" not in written  # the metrics file holds numbers only
    assert json.loads((tmp_path / "z.config.json").read_text())["labels_in_mauc"] == z["labels_in_mauc"]
    # the same number from the raw scores: softmax of each (positive, negative) pair, mean over a study's images
    model = load_aligned(aligned["models"]["multimodal"])
    test = [r for r in read_images(aligned["prepared"]) if r.split == "test" and r.view in ("AP", "PA")]
    prompts = TextCache(tmp_path / "prompts.h5")
    raw = score_matrix(model, ImageCache(aligned["prepared"] / "images.h5"), [r.row for r in test], prompts,
                       [prompts.row_of(i) for i in range(28)], 4)  # [N, 28]
    prob = 1 / (1 + np.exp(raw[:, 1::2] - raw[:, 0::2]))  # [N, 14]
    label_of = {s.study_id: s.labels for s in read_studies(aligned["prepared"])}
    ids = sorted({r.study_id for r in test})
    mean = np.array([prob[[k for k, r in enumerate(test) if r.study_id == sid]].mean(0) for sid in ids])
    y = np.array([label_of[sid] for sid in ids]) > 0.5
    mine = [roc_auc_score(y[:, j], mean[:, j]) for j in range(4)]
    assert z["mauc"] == pytest.approx(np.mean(mine), abs=1e-9)
    assert [z["per_label"][n]["auroc"] for n in CHEXPERT_LABELS[:4]] == pytest.approx(mine, abs=1e-9)

    r = run_retrieval(RetrievalConfig(n_bootstrap=50, batch_size=4), aligned["models"]["mae"], aligned["prepared"],
                      aligned["text"], None, tmp_path / "r.json", stats=stats)
    assert r["n_images"] == 8 and r["n_texts"] == 7  # one duplicated report text: 7 targets
    assert r["image_to_report"]["chance@1"] == pytest.approx(1 / 7)
    assert r["report_to_image"]["n_queries"] == 7 and r["bootstrap_unit"] == "patient"
    # brute force: each test image's own text among the distinct test texts, ranked by the raw scores
    mae = load_aligned(aligned["models"]["mae"])
    distinct = sorted({text.row_of(x.study_id) for x in test})
    raw = score_matrix(mae, ImageCache(aligned["prepared"] / "images.h5"), [x.row for x in test], text, distinct, 4)
    own = np.array([distinct.index(text.row_of(x.study_id)) for x in test])
    rank = (raw > raw[np.arange(len(test)), own][:, None]).sum(1)
    for k in (1, 5, 10):
        assert r["image_to_report"][f"recall@{k}"] == pytest.approx(float((rank < k).mean()))
    # P@k by brute force: the share of each image's k best texts whose studies share a positive finding
    pos = {s.study_id: np.asarray(s.labels) == 1.0 for s in read_studies(aligned["prepared"])}
    text_pos = {t: np.any([pos[x.study_id] for x in test if text.row_of(x.study_id) == t], axis=0) for t in distinct}
    rel = np.array([[bool((pos[x.study_id] & text_pos[t]).any()) for t in distinct] for x in test])
    keep = rel.any(1)
    top = np.argsort(-raw, axis=1, kind="stable")[:, :5]
    assert r["image_to_report"]["n_label_queries"] == int(keep.sum()) > 0
    assert r["image_to_report"]["precision@5"] == pytest.approx(
        float(np.take_along_axis(rel, top, 1)[keep].mean()))
    assert r["image_to_report"]["precision_prior"] == pytest.approx(float(rel[keep].mean(1).mean()))


def test_zeroshot_scores_a_transfer_dataset_by_its_own_label_names(aligned, tmp_path):
    """A prepared folder labelled with NIH's names (as transfer_prepare writes it) is scored with each label's
    prompt pair looked up BY NAME (zeroshot.extra_prompts for NIH's): the AUROCs equal the brute-force ones from
    the rows of those names, swapping a label's pair flips its AUROC to 1 - AUROC, a label without prompts is a
    one-line error, and NIH's set has no 5-label competition mAUC."""
    import shutil

    from sklearn.metrics import roc_auc_score

    from cxrpipe.data.image_cache import ImageCache
    from cxrpipe.data.manifest import read_images, read_studies, write_manifest
    from cxrpipe.data.nih import NIH_LABELS
    from cxrpipe.evaluate.alignment.scorer import load_aligned, score_matrix
    from cxrpipe.evaluate.alignment.zeroshot import ZeroShotConfig, prompt_labels, run_zeroshot
    from cxrpipe.text.cache import TextCache
    from tests.evaluate.conftest import cluster_prompt_cache

    nih = tmp_path / "transfer" / "nih_cxr14"
    nih.mkdir(parents=True)
    shutil.copy(aligned["prepared"] / "images.h5", nih / "images.h5")
    planted = {"Mass": 0, "Nodule": 1, "Effusion": 2, "Hernia": 3}  # NIH label -> report cluster
    cluster = {s.study_id: int(re.search(r"cluster (\d)", s.text).group(1)) for s in read_studies(aligned["prepared"])}
    studies = [dataclasses.replace(s, labels=tuple(float(planted.get(n) == cluster[s.study_id]) for n in NIH_LABELS))
               for s in read_studies(aligned["prepared"])]
    write_manifest(nih, read_images(aligned["prepared"]), studies, NIH_LABELS)

    def prompt_cache(cfg, path, swap=()):  # label's positive = a report of its cluster, negative = the next's
        return cluster_prompt_cache(aligned, prompt_labels(cfg), planted, path, swap)

    cfg, stats = ZeroShotConfig(n_bootstrap=30, batch_size=4), StatsConfig(min_test_positives=1)
    z = run_zeroshot(cfg, aligned["models"]["multimodal"], nih, prompt_cache(cfg, tmp_path / "p.h5"), None,
                     tmp_path / "z.json", stats=stats)
    assert z["labels_in_mauc"] == sorted(planted) and z["mauc5"] is None and z["labels_in_mauc5"] == []
    assert z["dataset"] == "nih_cxr14" and set(z["prompts"]) == set(NIH_LABELS)
    model = load_aligned(aligned["models"]["multimodal"])
    test = [r for r in read_images(nih) if r.split == "test" and r.view in ("AP", "PA")]
    prompts = TextCache(tmp_path / "p.h5")
    order = prompt_labels(cfg)
    ids = sorted({r.study_id for r in test})
    for name, c in planted.items():
        j = order.index(name)
        raw = score_matrix(model, ImageCache(nih / "images.h5"), [r.row for r in test], prompts,
                           [prompts.row_of(2 * j), prompts.row_of(2 * j + 1)], 4)  # [N, 2]
        prob = 1 / (1 + np.exp(raw[:, 1] - raw[:, 0]))
        mean = np.array([prob[[k for k, r in enumerate(test) if r.study_id == sid]].mean() for sid in ids])
        assert z["per_label"][name]["auroc"] == pytest.approx(
            roc_auc_score([cluster[sid] == c for sid in ids], mean), abs=1e-9)
    swapped = run_zeroshot(cfg, aligned["models"]["multimodal"], nih,
                           prompt_cache(cfg, tmp_path / "q.h5", swap={"Mass"}), None, tmp_path / "q.json", stats=stats)
    assert swapped["per_label"]["Mass"]["auroc"] == pytest.approx(1 - z["per_label"]["Mass"]["auroc"])
    assert swapped["per_label"]["Nodule"]["auroc"] == pytest.approx(z["per_label"]["Nodule"]["auroc"])
    no_hernia = dataclasses.replace(cfg, extra_prompts={k: v for k, v in cfg.extra_prompts.items() if k != "Hernia"})
    with pytest.raises(ValueError, match=r"\['Hernia'\] have no prompt pair.*zeroshot.extra_prompts"):
        run_zeroshot(no_hernia, aligned["models"]["multimodal"], nih, tmp_path / "p.h5", None, tmp_path / "x.json")


def test_retrieval_resamples_patients_and_links_their_texts():
    """Image -> report queries of one patient are drawn together; report -> image texts are grouped by the
    patients whose studies have them (texts 0 and 1 share patient 1; text 2 is patient 2's alone)."""
    from cxrpipe.evaluate.alignment.retrieval import text_groups

    image_text = np.array([0, 0, 1, 2])
    np.testing.assert_array_equal(text_groups(image_text, np.array([0, 0, 0, 1]), 3), [0, 0, 1])
    np.testing.assert_array_equal(text_groups(image_text, np.array([0, 0, 1, 2]), 3), [0, 1, 2])
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(4, 3))
    r = retrieval_both_ways(scores, image_text, np.array([7, 7, 8, 9]), (1,), 20, 0, np.array([1, 1, 1, 2]),
                            "patient")
    assert r["image_to_report"]["n_groups"] == 2 and r["report_to_image"]["n_groups"] == 2
    by_study = retrieval_both_ways(scores, image_text, np.array([7, 7, 8, 9]), (1,), 20, 0)
    assert by_study["image_to_report"]["n_groups"] == 3 and by_study["report_to_image"]["n_groups"] == 3


def test_attention_pool_weights_find_a_planted_patch():
    """The latent attention the maps draw: a query that matches a direction puts (nearly) all its weight on
    the one patch carrying it, and on no particular patch when the direction is reversed."""
    from cxrpipe.pretrain.heads import latent_attention
    from cxrpipe.pretrain.pooling import AttentionPool

    dim, n = 16, 12
    torch.manual_seed(0)
    pool = AttentionPool(dim, dim, num_heads=2)
    d = torch.randn(dim)
    with torch.no_grad():
        p = pool.pool
        p.q.weight.zero_()
        p.q.bias.copy_(4 * d)  # the query is 4 d, whatever the latent
        p.kv.weight.copy_(torch.cat([torch.eye(dim), torch.eye(dim)]))  # keys = the tokens
        p.kv.bias.zero_()
    tokens = 0.1 * torch.randn(1, n, dim)
    tokens[0, 7] += 4 * d / d.norm()
    a = latent_attention(pool, tokens)  # [1, H, N]
    assert a.argmax(-1).tolist() == [[7, 7]] and float(a[0, :, 7].min()) > 0.9
    reversed_ = latent_attention(pool, tokens * torch.tensor([1.0] * 7 + [-1.0] + [1.0] * 4)[None, :, None])
    assert float(reversed_[0, :, 7].max()) < 0.01


def test_attention_maps_rows_sum_to_one_and_pngs_written(aligned, tmp_path):
    from cxrpipe.evaluate.alignment.scorer import load_aligned
    from cxrpipe.evaluate.alignment.attention_maps import AttentionMapsConfig, run_attention_maps, sentence_attention, sentence_index
    from cxrpipe.pretrain.heads import latent_attention

    model = load_aligned(aligned["models"]["multimodal"])
    with torch.no_grad():
        a = latent_attention(model.heads.image_pool, model.patch_tokens(torch.zeros(2, 32, 32, dtype=torch.uint8)))
    assert a.shape == (2, 2, 16) and torch.allclose(a.sum(-1), torch.ones(2, 2), atol=1e-5)
    res = run_attention_maps(AttentionMapsConfig(n_studies=3), aligned["models"]["multimodal"], aligned["prepared"],
                             aligned["text"], tmp_path / "att", tmp_path / "att.json")
    pngs = sorted((tmp_path / "att").glob("*.png"))
    assert len(pngs) == 3 and all(p.stat().st_size > 1000 for p in pngs)
    assert res["vmax"] >= max(p["max"] for p in res["panels"]) and (tmp_path / "att.json").exists()
    again = run_attention_maps(AttentionMapsConfig(n_studies=3), aligned["models"]["multimodal"], aligned["prepared"],
                               aligned["text"], tmp_path / "att2")
    assert [p["study_id"] for p in again["panels"]] == [p["study_id"] for p in res["panels"]]  # seeded set
    # cross pool: per-sentence maps average the tokens of each sentence, padding left out
    sent = sentence_index(["Findings:", " A", " 1.7", " cm", " nodule.", " No", " effusion.", " x"])
    assert sent.tolist() == [0, 0, 0, 0, 0, 1, 1, 2]
    att = torch.rand(2, 8, 5).softmax(-1)  # [H, L, P]
    mask = torch.tensor([True] * 7 + [False])
    maps, kept = sentence_attention(att, sent, mask)
    assert kept.tolist() == [0, 1] and torch.allclose(maps.sum(-1), torch.ones(2))
    assert torch.allclose(maps[1], att.mean(0)[5:7].mean(0))


def test_repository_params_build_every_evaluation_section():
    from pathlib import Path

    from cxrpipe.config import load_params, section
    from cxrpipe.evaluate.alignment.attention_maps import AttentionMapsConfig
    from cxrpipe.evaluate.probe.finetune import FinetuneConfig
    from cxrpipe.evaluate.probe.label_efficiency import LabelEfficiencyConfig
    from cxrpipe.evaluate.alignment.retrieval import RetrievalConfig
    from cxrpipe.evaluate.alignment.zeroshot import DEFAULT_EXTRA_PROMPTS, DEFAULT_PROMPTS, ZeroShotConfig, prompt_texts

    raw = load_params(Path(__file__).parents[2] / "params.yaml")
    zs = section(raw, "zeroshot", ZeroShotConfig)
    assert zs.prompts == DEFAULT_PROMPTS and len(set(prompt_texts(zs)[:28])) == 28  # documented defaults
    assert zs.extra_prompts == DEFAULT_EXTRA_PROMPTS
    assert section(raw, "finetune", FinetuneConfig).label_fractions
    for name, cls in (("label_efficiency", LabelEfficiencyConfig), ("retrieval", RetrievalConfig),
                      ("attention", AttentionMapsConfig)):
        section(raw, name, cls)


def test_attention_maps_cross_pool_one_map_per_sentence(aligned, tmp_path):
    from cxrpipe.evaluate.alignment.attention_maps import AttentionMapsConfig, run_attention_maps
    from cxrpipe.pretrain.train import PretrainConfig, run_pretrain
    from tests.pretrain.synthetic import TINY

    cfg = build(PretrainConfig, {**TINY, "pool": {**TINY["pool"], "kind": "cross"}, "epochs": 1, "batch_size": 8})
    model = tmp_path / "cross"
    run_pretrain(cfg, "multimodal", aligned["prepared"], aligned["text"], model, metrics_path=tmp_path / "m.json",
                 plots_dir=tmp_path / "p")

    class Pieces:  # a stand-in tokenizer: every third token ends a sentence
        def decode(self, ids):
            return " w." if int(ids[0]) % 3 == 2 else " w"

    cfg = AttentionMapsConfig(n_studies=2, max_sentences=3, show_report=True)  # captions are report text
    res = run_attention_maps(cfg, model, aligned["prepared"], aligned["text"], tmp_path / "att", tmp_path / "att.json",
                             tokenizer=Pieces())
    assert len(list((tmp_path / "att").glob("*.png"))) == 2
    for p in res["panels"]:
        assert 2 <= len(p["captions"]) <= 3 and p["captions"][0] == "w w w."  # tokens 0, 1, 2 form sentence 0
    hidden = run_attention_maps(dataclasses.replace(cfg, show_report=False), model, aligned["prepared"],
                                aligned["text"], tmp_path / "att", tmp_path / "att.json", tokenizer=Pieces())
    assert [p["captions"][:2] for p in hidden["panels"]] == [["sentence 1", "sentence 2"]] * 2  # not a demo source
