"""Bootstrap kernels against scikit-learn, and the paired bootstrap on cases with known answers."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

from cxrpipe.evaluate.stats import bootstrap


@pytest.fixture
def case():
    rng = np.random.default_rng(0)
    n = 80
    scores = np.round(rng.random(n), 1)  # many ties
    positive = rng.random(n) < 0.3
    weights = np.vstack([np.ones(n), rng.integers(0, 4, size=(6, n))]).astype(float)
    return scores, positive, weights


def test_weighted_kernels_equal_sklearn_with_sample_weight(case):
    scores, positive, weights = case
    auc = bootstrap.weighted_auroc(scores, positive, weights)
    ap = bootstrap.weighted_average_precision(scores, positive, weights)
    f1 = bootstrap.weighted_f1(scores >= 0.5, positive, weights)
    for b, w in enumerate(weights):
        assert auc[b] == pytest.approx(roc_auc_score(positive, scores, sample_weight=w), abs=1e-12)
        assert ap[b] == pytest.approx(average_precision_score(positive, scores, sample_weight=w), abs=1e-12)
        assert f1[b] == pytest.approx(f1_score(positive, scores >= 0.5, sample_weight=w), abs=1e-12)


def test_integer_weights_equal_duplicated_items(case):
    scores, positive, weights = case
    idx = np.repeat(np.arange(scores.size), weights[3].astype(int))
    assert bootstrap.weighted_auroc(scores, positive, weights[3:4])[0] == pytest.approx(
        roc_auc_score(positive[idx], scores[idx]), abs=1e-12
    )


def test_auroc_undefined_when_a_replicate_loses_a_class():
    w = np.array([[1.0, 1.0, 0.0, 0.0]])  # only the two negatives drawn
    assert np.isnan(bootstrap.weighted_auroc(np.array([0.1, 0.2, 0.3, 0.4]), np.array([0, 0, 1, 1], bool), w))[0]


def test_resample_weights_draw_whole_studies():
    groups = np.array([0, 0, 1, 2, 2, 2])  # three studies, six images
    chunks = list(bootstrap.resample_weights(groups, 600, seed=3))
    w = np.concatenate(chunks)
    assert w.shape == (600, 6) and len(chunks) == 3  # chunked by CHUNK = 250
    # images of one study share their study's count; every replicate draws exactly three studies
    np.testing.assert_array_equal(w[:, 0], w[:, 1])
    np.testing.assert_array_equal(w[:, 3], w[:, 5])
    np.testing.assert_array_equal(w[:, [0, 2, 3]].sum(axis=1), 3)
    again = np.concatenate(list(bootstrap.resample_weights(groups, 600, seed=3)))
    np.testing.assert_array_equal(w, again)


def _two_labels(n: int = 120, seed: int = 0):
    """Targets [n, 2] with both classes, one item per study, and a noisy score."""
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, 2)) < 0.4).astype(np.float32)
    noisy = targets + rng.normal(0, 1.0, size=(n, 2))
    return targets, np.ones_like(targets, dtype=bool), noisy, np.arange(n)


def test_identical_predictions_give_zero_delta_zero_interval_p_one():
    targets, mask, probs, groups = _two_labels()
    r = bootstrap.paired_bootstrap_mauc(targets, mask, probs, probs.copy(), groups, 300, seed=0)
    assert r.delta == 0.0
    assert r.ci95 == (0.0, 0.0)
    assert r.p_value == 1.0
    assert r.mauc_a == pytest.approx(np.mean([roc_auc_score(targets[:, j], probs[:, j]) for j in range(2)]))


def test_perfect_against_reversed_gives_delta_one_exactly():
    targets, mask, _, groups = _two_labels()
    r = bootstrap.paired_bootstrap_mauc(targets, mask, -targets, targets, groups, 200, seed=0)
    assert (r.mauc_a, r.mauc_b, r.delta) == (0.0, 1.0, 1.0)
    assert r.ci95 == (1.0, 1.0)
    assert r.p_value == pytest.approx(1 / 201)  # no replicate as far from d as 0 is


def test_strictly_better_model_has_interval_above_zero():
    targets, mask, noisy, groups = _two_labels()
    better = noisy + 1.5 * targets  # every positive pushed up: no pair ranks worse, many rank better
    r = bootstrap.paired_bootstrap_mauc(targets, mask, noisy, better, groups, 500, seed=0)
    assert r.delta > 0
    assert r.ci95[0] > 0
    assert r.p_value < 0.01


def test_pairing_same_studies_for_both():
    """b ranks every pair at least as well as a: in EVERY paired replicate delta >= 0, so the interval's low
    end is >= 0 although the two unpaired intervals overlap widely."""
    targets, mask, noisy, groups = _two_labels(seed=1)
    better = noisy + 0.15 * targets
    r = bootstrap.paired_bootstrap_mauc(targets, mask, noisy, better, groups, 400, seed=0)
    assert 0 < r.delta < 0.05
    assert r.ci95[0] >= 0.0
    assert r.mauc_a_ci95[1] > r.mauc_b_ci95[0]  # the marginal intervals overlap


def test_p_value_not_small_for_equally_good_models():
    targets, mask, noisy, groups = _two_labels(n=200, seed=2)
    rng = np.random.default_rng(5)
    other = targets + rng.normal(0, 1.0, size=targets.shape)  # same signal, independent noise
    r = bootstrap.paired_bootstrap_mauc(targets, mask, noisy, other, groups, 500, seed=0)
    assert r.ci95[0] < 0 < r.ci95[1]
    assert r.p_value > 0.05
    assert 0 < r.p_value <= 1


def test_interval_width_matches_hanley_mcneil():
    """The bootstrap interval of one AUROC has the width the Hanley-McNeil standard error predicts."""
    rng = np.random.default_rng(0)
    n = 400
    y = rng.random(n) < 0.5
    s = y + rng.normal(0, 1.2, size=n)
    auc = roc_auc_score(y, s)
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    n1, n0 = y.sum(), (~y).sum()
    se = np.sqrt((auc * (1 - auc) + (n1 - 1) * (q1 - auc**2) + (n0 - 1) * (q2 - auc**2)) / (n1 * n0))
    reps = np.concatenate(
        [bootstrap.weighted_auroc(s, y, w) for w in bootstrap.resample_weights(np.arange(n), 1000, seed=0)]
    )
    lo, hi = bootstrap.percentile_ci(reps)
    assert hi - lo == pytest.approx(2 * 1.96 * se, rel=0.15)
    assert lo < auc < hi


def test_shapes_must_match():
    targets, mask, probs, groups = _two_labels()
    with pytest.raises(ValueError, match="shapes differ"):
        bootstrap.paired_bootstrap_mauc(targets, mask, probs, probs[:, :1], groups, 10, seed=0)
