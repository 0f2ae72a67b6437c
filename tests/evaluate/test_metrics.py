"""Metric functions against hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cxrpipe.evaluate.stats import metrics
from cxrpipe.evaluate.stats.metrics import EvalLevel, Predictions
from cxrpipe.labels import CHEXPERT_LABELS

# One label, four items: pairs (pos, neg) ranked right = (0.35>0.1), (0.8>0.1), (0.8>0.4); wrong = (0.35<0.4)
Y = np.array([0, 0, 1, 1], dtype=np.float32)
P = np.array([0.1, 0.4, 0.35, 0.8])


def col(*arrays):
    return np.stack(arrays, axis=1)


def test_auroc_auprc_hand_computed():
    y, p, m = col(Y), col(P), np.ones((4, 1), bool)
    assert metrics.auroc_per_label(y, p, m)[0] == pytest.approx(3 / 4)
    # thresholds high -> low: 0.8 (P 1, R .5), 0.4 (P .5, R .5), 0.35 (P 2/3, R 1): AP = .5*1 + .5*2/3
    assert metrics.auprc_per_label(y, p, m)[0] == pytest.approx(0.5 + 0.5 * 2 / 3)


@settings(max_examples=200, deadline=None)
@given(n=st.integers(2, 60), levels=st.integers(1, 12), seed=st.integers(0, 2**31 - 1))
def test_auroc_equals_sklearn_with_ties_masks_and_float32(n, levels, seed):
    # the fast pair count must give roc_auc_score's value: scores on a coarse grid (many ties), float32 like
    # the heads' sigmoid outputs, masked entries left out, uncertain -1 targets masked as the stages do
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(seed)
    y = rng.integers(-1, 2, size=(n, 3)).astype(np.float32)
    p = (rng.integers(0, levels, size=(n, 3)) / levels).astype(np.float32)
    m = (y >= 0) & (rng.random((n, 3)) < 0.9)
    auc = metrics.auroc_per_label(y, p, m)
    for j in range(3):
        yy, pp = y[m[:, j], j] > 0.5, p[m[:, j], j]
        if yy.all() or not yy.any():
            assert math.isnan(auc[j])
        else:
            assert auc[j] == pytest.approx(roc_auc_score(yy, pp), abs=1e-12)


def test_label_with_one_class_is_left_out_of_mauc_and_named():
    # label 0: the hand case; label 1: negatives only; label 2: perfect ranking
    y = col(Y, np.zeros(4), Y)
    p = col(P, P, P + 10 * Y)
    m = np.ones_like(y, dtype=bool)
    auc = metrics.auroc_per_label(y, p, m)
    assert auc[0] == pytest.approx(0.75) and math.isnan(auc[1]) and auc[2] == 1.0
    mauc, idx = metrics.macro_auroc(y, p, m)
    assert mauc == pytest.approx((0.75 + 1.0) / 2)
    assert idx.tolist() == [0, 2]


def test_mask_leaves_uncertain_entries_out():
    # the wrongly ranked positive (0.35) is masked: the label becomes perfectly ranked
    y, p = col(Y), col(P)
    m = np.array([[True], [True], [False], [True]])
    assert metrics.auroc_per_label(y, p, m)[0] == 1.0
    # a mask that leaves one class makes the label undefined
    m_one = np.array([[True], [True], [False], [False]])
    assert math.isnan(metrics.auroc_per_label(y, p, m_one)[0])


def test_accuracy_and_all_negative_accuracy_on_the_same_entries():
    y = col(Y, np.array([0, 0, 0, 1.0]))
    p = col(P, np.array([0.6, 0.2, 0.1, 0.3]))
    m = np.array([[1, 1], [1, 1], [1, 0], [1, 1]], dtype=bool)  # 7 valid entries
    # at p >= 0.5: label 0 -> [0,0,0,1] vs [0,0,1,1]: 3 right; label 1 (valid rows 0,1,3) -> [1,0,0] vs [0,0,1]: 1
    assert metrics.accuracy_at(y, p, m) == pytest.approx(4 / 7)
    # all-negative: negatives among the 7 valid entries: label 0 two, label 1 two
    assert metrics.all_negative_accuracy(y, m) == pytest.approx(4 / 7)
    assert metrics.accuracy_at(y, p, m, threshold=0.05) == pytest.approx(3 / 7)


def test_thresholds_tuned_on_validate_then_f1():
    y, p, m = col(Y), col(P), np.ones((4, 1), bool)
    # F1 per threshold: 0.8 -> 2/3, 0.4 -> 1/2, 0.35 -> 4/5, 0.1 -> 2/3
    t = metrics.tune_thresholds(y, p, m)
    assert t[0] == pytest.approx(0.35)
    # on "test": predictions >= 0.35 -> [0, 1, 1, 1] vs [0, 0, 1, 1]: F1 = 2*2 / (2*2 + 1 + 0)
    assert metrics.f1_per_label(y, p, m, t)[0] == pytest.approx(0.8)
    # no positive on validate: the 0.5 fallback
    assert metrics.tune_thresholds(col(np.zeros(4)), p, m)[0] == 0.5


def _predictions(n_studies: int = 6) -> Predictions:
    rng = np.random.default_rng(0)
    study_ids = np.repeat(np.arange(100, 100 + n_studies), 2)  # two images per study
    targets = np.repeat(rng.integers(0, 2, size=(n_studies, 14)).astype(np.float32), 2, axis=0)
    probs = rng.random((2 * n_studies, 14))
    return Predictions(study_ids.astype(str), study_ids, probs, targets, np.ones_like(targets, dtype=bool))


def test_study_level_is_the_mean_over_a_study_images():
    pred = _predictions()
    study = pred.at_level(EvalLevel.STUDY)
    assert study.probs.shape == (6, 14)
    np.testing.assert_allclose(study.probs[0], (pred.probs[0] + pred.probs[1]) / 2)
    np.testing.assert_array_equal(study.targets, pred.targets[::2])
    np.testing.assert_array_equal(study.groups, np.arange(6))
    image = pred.at_level(EvalLevel.IMAGE)
    np.testing.assert_array_equal(image.groups, np.repeat(np.arange(6), 2))


def test_evaluate_level_block_and_bootstrap_interval():
    y = np.zeros((8, 14), dtype=np.float32)
    y[::2, :] = 1.0
    y[:, 3] = 0.0  # Edema: negatives only -> excluded, named
    p = 0.2 + 0.6 * y  # a perfect ranker where both classes exist
    lv = metrics.LevelData(np.arange(8), np.arange(8), p, y, np.ones_like(y, dtype=bool))
    block = metrics.evaluate_level(lv, np.full(14, 0.5), n_bootstrap=200, seed=0, level=EvalLevel.STUDY)
    assert block["mauc"] == 1.0
    assert block["mauc_ci95"] == [1.0, 1.0]  # perfect in every replicate
    assert block["labels_excluded"] == ["Edema"]
    assert len(block["labels_in_mauc"]) == 13
    edema = block["per_label"][CHEXPERT_LABELS.index("Edema")]
    assert edema["auroc"] is None and edema["in_mauc"] is False and edema["n_pos"] == 0
    assert block["accuracy"] == 1.0
    # all-negative: 4 negatives in each of 13 labels + 8 in Edema, out of 8 * 14
    assert block["all_negative_accuracy"] == pytest.approx((13 * 4 + 8) / (8 * 14))
    lo, hi = block["all_negative_accuracy_ci95"]
    assert lo < block["all_negative_accuracy"] < hi


def test_predictions_round_trip(tmp_path):
    pred = _predictions()
    metrics.save_predictions(pred, tmp_path / "p.npz", encoder="mae", protocol="linear")
    back, meta = metrics.load_predictions(tmp_path / "p.npz")
    assert meta == {"encoder": "mae", "protocol": "linear"}
    for f in ("image_ids", "study_ids", "targets", "mask"):
        np.testing.assert_array_equal(getattr(back, f), getattr(pred, f))
    np.testing.assert_allclose(back.probs, pred.probs, rtol=1e-6)


def test_jsonable_turns_nan_into_null():
    assert metrics.jsonable({"a": float("nan"), "b": [np.float32(0.5), np.int64(3)], "c": np.bool_(True)}) == {
        "a": None, "b": [0.5, 3], "c": True
    }


def test_labels_with_few_positives_are_reported_apart_not_averaged():
    """min_positives=3: a label with 2 test positives keeps its AUROC and interval but leaves the means."""
    rng = np.random.default_rng(0)
    n = 40
    y = (rng.random((n, 14)) < 0.4).astype(np.float32)
    y[:, 0] = 0.0
    y[:2, 0] = 1.0  # Atelectasis: 2 positives
    p = np.clip(0.5 * y + 0.5 * rng.random((n, 14)), 0, 1)
    p[:2, 0] = 0.0  # ranked worst: AUROC 0 for the rare label
    m = np.ones_like(y, dtype=bool)
    lv = metrics.LevelData(np.arange(n), np.arange(n), p, y, m)
    apart = metrics.evaluate_level(lv, np.full(14, 0.5), n_bootstrap=100, seed=0, level=EvalLevel.STUDY,
                                   min_positives=3)
    every = metrics.evaluate_level(lv, np.full(14, 0.5), n_bootstrap=100, seed=0, level=EvalLevel.STUDY)
    auc = metrics.auroc_per_label(y, p, m)
    assert apart["labels_low_positive"] == ["Atelectasis"] and "Atelectasis" not in apart["labels_in_mauc"]
    assert apart["mauc"] == pytest.approx(auc[1:].mean()) and every["mauc"] == pytest.approx(auc.mean())
    assert apart["mauc"] > every["mauc"]  # the rare label's AUROC 0 no longer drags the mean
    assert apart["min_test_positives"] == 3 and every["labels_low_positive"] == []
    rare = apart["per_label"][0]
    assert rare["low_positive"] and not rare["in_mauc"] and rare["n_pos"] == 2
    assert rare["auroc"] == 0.0 and rare["auroc_ci95"] is not None
    lo, hi = apart["mauc_ci95"]
    assert lo <= apart["mauc"] <= hi
    mauc, idx = metrics.macro_auroc(y, p, m, min_positives=3)
    assert mauc == pytest.approx(apart["mauc"]) and 0 not in idx.tolist()
