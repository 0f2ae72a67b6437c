"""Bootstrap kernels against scikit-learn, the paired bootstrap on cases with known answers, the interval and
p from the same replicates (they agree: a property test), and the resampled unit (a patient's studies)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

from cxrpipe.evaluate.stats import bootstrap
from cxrpipe.evaluate.stats.metrics import EvalLevel, Predictions
from cxrpipe.evaluate.stats.rules import BootstrapUnit
from cxrpipe.evaluate.stats.summaries import fmt_ci, fmt_p


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
    assert r.p_value == 0.0  # no replicate at or beyond 0: reported as p < 2/200, never as a number


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


def test_seed_mean_is_the_mean_of_each_replicate_over_the_seeds():
    """Seed 1 better than a, seed 2 identical to a (every replicate 0): the seed mean's replicates are seed 1's
    halved, so its delta, interval ends and p follow by hand; one seed alone gives that seed's own interval."""
    targets, mask, noisy, groups = _two_labels(seed=3)
    better = bootstrap.paired_bootstrap_mauc(targets, mask, noisy, noisy + 0.5 * targets, groups, 400, seed=0)
    same = bootstrap.paired_bootstrap_mauc(targets, mask, noisy, noisy.copy(), groups, 400, seed=0)
    m = bootstrap.seed_mean_delta([better, same])
    assert m.delta == pytest.approx(better.delta / 2) and m.n_seeds == 2 and m.n_valid == better.n_valid
    assert m.ci95 == pytest.approx((better.ci95[0] / 2, better.ci95[1] / 2)) and m.ci95[0] > 0
    assert m.p_value == better.p_value
    one = bootstrap.seed_mean_delta([better])
    assert (one.delta, one.ci95, one.p_value) == (better.delta, better.ci95, better.p_value)


def test_seed_mean_cancels_opposite_seeds_replicate_by_replicate():
    """b over a on one seed, a over b on the other, on the same resamples: every replicate of the mean is 0
    (a mean of the two intervals' ends, or of one seed's replicates, would not be)."""
    targets, mask, noisy, groups = _two_labels(seed=4)
    b = noisy + 0.4 * targets
    up = bootstrap.paired_bootstrap_mauc(targets, mask, noisy, b, groups, 300, seed=1)
    down = bootstrap.paired_bootstrap_mauc(targets, mask, b, noisy, groups, 300, seed=1)
    assert up.ci95[0] > 0 > down.ci95[1]
    m = bootstrap.seed_mean_delta([up, down])
    assert (m.delta, m.ci95, m.p_value) == (pytest.approx(0.0, abs=1e-12), (0.0, 0.0), 1.0)


def test_seed_mean_of_equally_good_seeds_holds_zero_and_of_better_ones_does_not():
    targets, mask, noisy, groups = _two_labels(n=200, seed=2)
    rng = np.random.default_rng(7)
    null = [bootstrap.paired_bootstrap_mauc(targets, mask, noisy, targets + rng.normal(0, 1.0, size=targets.shape),
                                            groups, 400, seed=0) for _ in range(3)]
    m = bootstrap.seed_mean_delta(null)
    assert m.ci95[0] < 0 < m.ci95[1] and m.p_value > 0.05
    good = [bootstrap.paired_bootstrap_mauc(targets, mask, noisy, noisy + k * targets, groups, 400, seed=0)
            for k in (0.3, 0.4, 0.5)]
    m = bootstrap.seed_mean_delta(good)
    assert m.ci95[0] > 0 and m.p_value < 0.05
    assert m.delta == pytest.approx(np.mean([d.delta for d in good]))


def test_seed_mean_needs_the_same_replicates():
    targets, mask, noisy, groups = _two_labels()
    a = bootstrap.paired_bootstrap_mauc(targets, mask, noisy, noisy + targets, groups, 100, seed=0)
    b = bootstrap.paired_bootstrap_mauc(targets, mask, noisy, noisy + targets, groups, 200, seed=0)
    with pytest.raises(ValueError, match="need the same"):
        bootstrap.seed_mean_delta([a, b])
    with pytest.raises(ValueError):
        bootstrap.seed_mean_delta([])


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


# ---------------------------------------------------------------- interval and p from the same replicates


def test_percentile_interval_is_the_order_statistics():
    reps = np.random.default_rng(0).permutation(np.arange(1, 1001, dtype=float))  # 1..1000 shuffled
    assert bootstrap.percentile_ci(reps) == (25.0, 976.0)  # k = ceil(0.025 * 1000) = 25: s_(25), s_(976)
    assert bootstrap.percentile_ci(np.r_[reps, np.nan, np.nan]) == (25.0, 976.0)  # nan replicates dropped
    assert bootstrap.percentile_ci(np.array([3.0])) == (3.0, 3.0)


def test_p_is_twice_the_share_beyond_zero():
    reps = np.r_[-np.ones(24), np.ones(976)]  # 24 of 1000 at or below 0
    assert bootstrap.bootstrap_p(reps) == pytest.approx(0.048)
    assert bootstrap.percentile_ci(reps)[0] > 0  # s_(25) is the first positive one: excludes 0, p < 0.05
    reps = np.r_[-np.ones(25), np.ones(975)]  # 25 at or below 0: s_(25) = -1
    assert bootstrap.bootstrap_p(reps) == pytest.approx(0.05) and bootstrap.percentile_ci(reps)[0] < 0
    assert bootstrap.bootstrap_p(np.zeros(10)) == 1.0  # identical models: p = 1, never above
    assert bootstrap.bootstrap_p(np.r_[np.zeros(1), np.ones(99)]) == pytest.approx(0.02)  # a tie at 0 counts
    assert np.isnan(bootstrap.bootstrap_p(np.array([np.nan])))


def _printed_excludes_zero(cell: str) -> bool:
    """Reads a printed ``+0.012 [-0.004, +0.029]``: both ends printed with the same sign."""
    lo, hi = cell.split("[")[1].rstrip("]").split(", ")
    return (lo[0], hi[0]) in {("+", "+"), ("-", "-")}


def _printed_p_below(cell: str) -> bool:
    return cell.startswith("p <") or float(cell.removeprefix("p = ")) < 0.05


@settings(max_examples=300, deadline=None)
@given(
    n=st.integers(1, 400),
    centre=st.floats(-0.05, 0.05),
    spread=st.floats(0.0, 0.05),
    ties=st.integers(0, 40),
    seed=st.integers(0, 2**31 - 1),
)
def test_interval_excludes_zero_iff_p_below_005_computed_and_printed(n, centre, spread, ties, seed):
    """The reading a reviewer makes from the interval and from p is the same, for any set of replicates
    (with replicates exactly at 0 too), both as computed and as printed in the reports."""
    rng = np.random.default_rng(seed)
    reps = np.round(centre + spread * rng.standard_normal(n), 4)  # rounded: ties, and exact zeros
    reps[: min(ties, n)] = 0.0
    lo, hi = bootstrap.percentile_ci(reps)
    p = bootstrap.bootstrap_p(reps)
    assert (lo > 0 or hi < 0) == (p < 0.05)
    printed_ci, printed_p = fmt_ci(float(np.mean(reps)), [lo, hi], sign=True), fmt_p(p, n)
    assert _printed_excludes_zero(printed_ci) == _printed_p_below(printed_p) == (p < 0.05), (printed_ci, printed_p)


@settings(max_examples=25, deadline=None)
@given(shift=st.floats(0.0, 0.6), seed=st.integers(0, 1000))
def test_paired_delta_interval_and_p_agree(shift, seed):
    targets, mask, noisy, groups = _two_labels(n=60, seed=seed)
    other = noisy + shift * targets + np.random.default_rng(seed + 1).normal(0, 0.3, size=targets.shape)
    r = bootstrap.paired_bootstrap_mauc(targets, mask, noisy, other, groups, 200, seed=0)
    assert (r.ci95[0] > 0 or r.ci95[1] < 0) == (r.p_value < 0.05)


def test_p_prints_its_floor_and_never_rounds_across_005():
    assert fmt_p(0.0, 1000) == "p < 0.002"  # resolution 2/B: no smaller number is printed
    assert fmt_p(0.0496, 3000) == "p = 0.0496"  # 0.050 would read as not below 0.05
    assert fmt_p(0.05, 1000) == "p = 0.050" and fmt_p(0.046, 1000) == "p = 0.046"
    assert fmt_ci(0.0, [-0.0004, 0.0004], sign=True) == "0.000 [-0.000, +0.000]"  # an end keeps its side of 0


# ---------------------------------------------------------------- the resampled unit


def _clustered(cluster: bool, n_patients: int = 120, seed: int = 0) -> Predictions:
    """One study (one image) per patient, scores with a weak signal; with ``cluster``, patient 0 has 40 more
    studies, all alike (one label value, one score: a patient imaged again and again) and all misranked."""
    rng = np.random.default_rng(seed)
    y = (rng.random((n_patients, 2)) < 0.4).astype(np.float32)
    p = y * 0.5 + rng.normal(0, 0.5, size=y.shape)
    subjects = np.arange(n_patients)
    if cluster:
        y = np.vstack([y, np.tile([[1.0, 0.0]], (40, 1))]).astype(np.float32)
        p = np.vstack([p, np.tile([[-1.0, 1.0]], (40, 1))])
        subjects = np.r_[subjects, np.zeros(40, dtype=int)]
    n = y.shape[0]
    return Predictions(np.array([f"i{k}" for k in range(n)]), np.arange(1000, 1000 + n), p, y,
                       np.ones_like(y, dtype=bool), ("A", "B"), subjects)


def _width(pred: Predictions, unit: BootstrapUnit) -> float:
    lv = pred.at_level(EvalLevel.STUDY, unit)
    reps = np.concatenate([bootstrap.nanmean_rows(bootstrap.auroc_matrix(lv.targets, lv.probs, lv.mask,
                                                                         np.arange(2), w))
                           for w in bootstrap.resample_weights(lv.groups, 1000, seed=0)])
    lo, hi = bootstrap.percentile_ci(reps)
    return hi - lo


def test_a_planted_patient_cluster_widens_the_interval_over_patients():
    """40 correlated studies of one patient: drawn one by one (study) they look like 40 independent pieces of
    evidence; drawn together (patient) the interval is far wider. Without the cluster (one study per patient)
    the two units are the same draw, the same interval."""
    clustered = _clustered(True)
    assert _width(clustered, BootstrapUnit.PATIENT) > 1.5 * _width(clustered, BootstrapUnit.STUDY)
    single = _clustered(False)
    assert _width(single, BootstrapUnit.PATIENT) == _width(single, BootstrapUnit.STUDY)


def test_unit_groups_keep_a_patients_images_and_studies_together():
    studies, subjects = np.array([5, 5, 6, 7, 7, 8]), np.array([1, 1, 1, 2, 2, 3])
    np.testing.assert_array_equal(bootstrap.unit_groups(studies, subjects, "patient"), [0, 0, 0, 1, 1, 2])
    np.testing.assert_array_equal(bootstrap.unit_groups(studies, subjects, "study"), [0, 0, 1, 2, 2, 3])
    with pytest.raises(ValueError, match="stats.bootstrap_unit is patient but these predictions hold no patient"):
        bootstrap.unit_groups(studies, None, "patient")
