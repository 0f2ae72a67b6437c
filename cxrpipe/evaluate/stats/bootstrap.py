"""Bootstrap over test patients (or studies), vectorised with numpy, and the paired bootstrap of delta mAUC.

What is resampled (``stats.bootstrap_unit``, :class:`BootstrapUnit`): by default the PATIENT (MIMIC-CXR's
``subject_id``, the manifest's ``subject_id`` column): all of a patient's test studies and images are drawn
together. A study's frontal images share one report and one label row, and a patient's studies share the
patient, so neither is independent of its neighbours; resampling them one by one narrows the intervals
(MIMIC-CXR's test split has several studies per patient). ``study`` resamples studies (the older rule).

How: one replicate is a vector of counts ``c [n_groups]`` (how often each patient was drawn). An item's
weight is its group's count, and every metric is computed with those weights. A weighted metric with integer
weights equals the metric on the data set with the drawn items duplicated, so no data is copied and all
replicates of a chunk are evaluated at once on a ``[B, n]`` weight matrix. Point estimates elsewhere use
scikit-learn; the weighted kernels here are checked against ``sklearn.metrics`` (with ``sample_weight``) in
the tests: calling scikit-learn ``B x 14`` times per metric would take minutes, this takes milliseconds.

Interval and p-value come from the SAME replicates and agree by construction (:func:`percentile_ci`,
:func:`bootstrap_p`): the 95% interval is the order-statistic percentile interval ``[d_(k), d_(B+1-k)]`` with
``k = ceil(0.025 B)`` (1-based, over the ``B`` defined replicates), and the two-sided p is twice the share of
replicates on the far side of 0, ``p = min(1, 2 min(#{d_b <= 0}, #{d_b >= 0}) / B)``: the smallest level at
which that interval would exclude 0. Hence "the 95% interval excludes 0" <=> "p < 0.05", exactly. Its
resolution is ``2 / B``: no replicate on the far side gives ``p = 0``, which the reports print as
``p < 2/B`` (``< 0.002`` for 1000 replicates), never as a number below what B replicates can show.

The paired bootstrap (:func:`paired_bootstrap_mauc`) applies the SAME weight matrix to both models, so the
spread of the delta reflects only how the models differ on the same patients. Identical models give
``d_b = 0`` for every ``b``, hence ``p = 1`` and the interval ``[0, 0]``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Iterator

import numpy as np

from cxrpipe.evaluate.stats.rules import BootstrapUnit, labels_in_mean

# Replicates evaluated together; bounds memory at ~CHUNK x n_items x 8 bytes per array (MIMIC test: 5159
# images -> ~10 MB). Fixed, so the random stream (and every number) does not depend on the machine.
CHUNK = 250


def group_index(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ids ``[n]`` (e.g. study ids) -> (unique ids ``[G]`` sorted, index of each item's group ``[n]``)."""
    unique, inverse = np.unique(np.asarray(ids), return_inverse=True)
    return unique, inverse.reshape(-1)


def unit_groups(study_ids: np.ndarray, subject_ids: np.ndarray | None, unit: BootstrapUnit | str) -> np.ndarray:
    """Each item's resampled group ``[n]`` (0..G-1): its patient (``subject_ids [n]``) or its study.

    Raises ValueError when the unit is the patient and no patient ids are known (predictions written before
    they were recorded)."""
    if BootstrapUnit(unit) is BootstrapUnit.STUDY:
        return group_index(study_ids)[1]
    if subject_ids is None:
        raise ValueError("stats.bootstrap_unit is patient but these predictions hold no patient ids (written by "
                         "an older finetune): rerun the stages that wrote them, or set stats.bootstrap_unit: study")
    return group_index(subject_ids)[1]


def resample_weights(groups: np.ndarray, n_bootstrap: int, seed: int) -> Iterator[np.ndarray]:
    """Yield item weights ``[b, n]`` (float64, b <= CHUNK) for ``n_bootstrap`` replicates in all.

    ``groups [n]`` is each item's group (study) index in ``0..G-1``; a replicate draws G groups with
    replacement and an item's weight is the number of times its group was drawn.
    """
    groups = np.asarray(groups, dtype=np.int64)
    n_groups = int(groups.max()) + 1 if groups.size else 0
    rng = np.random.default_rng(seed)
    done = 0
    while done < n_bootstrap:
        b = min(CHUNK, n_bootstrap - done)
        draws = rng.integers(0, n_groups, size=(b, n_groups))  # [b, G] drawn group ids
        # counts[r, g] = how often group g was drawn in replicate r (one bincount for the whole chunk)
        flat = (draws + n_groups * np.arange(b)[:, None]).ravel()
        counts = np.bincount(flat, minlength=b * n_groups).reshape(b, n_groups)
        yield counts[:, groups].astype(np.float64)  # [b, n]
        done += b


def _tie_groups(sorted_scores: np.ndarray) -> np.ndarray:
    """Start index of each run of equal values in a sorted array ``[n]`` -> ``[T]``."""
    return np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])


def weighted_auroc(scores: np.ndarray, positive: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUROC of ``scores [n]`` for labels ``positive [n]`` (bool) under each row of ``weights [B, n]`` -> ``[B]``.

    AUROC = P(s+ > s-) + P(s+ = s-) / 2 over weighted (positive, negative) pairs; this equals
    ``sklearn.metrics.roc_auc_score(positive, scores, sample_weight=w)``. ``nan`` where a replicate holds
    no positive or no negative.
    """
    order = np.argsort(scores, kind="stable")
    starts = _tie_groups(scores[order])
    pos = positive[order]
    w = weights[:, order]
    wp = np.add.reduceat(w * pos, starts, axis=1)  # [B, T] positive weight per tied score value
    wn = np.add.reduceat(w * ~pos, starts, axis=1)  # [B, T] negative weight per tied score value
    neg_below = np.cumsum(wn, axis=1) - wn  # negatives strictly below each value
    n_pos, n_neg = wp.sum(axis=1), wn.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (wp * (neg_below + 0.5 * wn)).sum(axis=1) / (n_pos * n_neg)
    auc[(n_pos == 0) | (n_neg == 0)] = np.nan
    return auc


def weighted_average_precision(scores: np.ndarray, positive: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Average precision (scikit-learn's definition: sum over thresholds of delta-recall x precision) -> ``[B]``.

    Equals ``sklearn.metrics.average_precision_score(positive, scores, sample_weight=w)``; ``nan`` where a
    replicate holds no positive.
    """
    order = np.argsort(-scores, kind="stable")  # descending: thresholds from high to low
    starts = _tie_groups(scores[order])
    pos = positive[order]
    w = weights[:, order]
    tp = np.cumsum(np.add.reduceat(w * pos, starts, axis=1), axis=1)  # [B, T] positives scored >= t
    fp = np.cumsum(np.add.reduceat(w * ~pos, starts, axis=1), axis=1)
    n_pos = tp[:, -1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        recall = tp / n_pos
    d_recall = np.diff(recall, axis=1, prepend=0.0)  # zero where a threshold adds no positive
    ap = (d_recall * precision).sum(axis=1)
    ap[n_pos[:, 0] == 0] = np.nan
    return ap


def weighted_f1(predicted: np.ndarray, positive: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """F1 of hard predictions ``[n]`` (bool) under each row of ``weights [B, n]`` -> ``[B]`` (0 where undefined,
    as ``sklearn.metrics.f1_score(..., zero_division=0)``)."""
    tp = weights @ (predicted & positive).astype(np.float64)
    fp = weights @ (predicted & ~positive).astype(np.float64)
    fn = weights @ (~predicted & positive).astype(np.float64)
    denom = 2 * tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, 2 * tp / denom, 0.0)


def auroc_matrix(
    targets: np.ndarray, probs: np.ndarray, mask: np.ndarray, label_idx: np.ndarray, weights: np.ndarray
) -> np.ndarray:
    """Weighted AUROC per label: targets/probs/mask ``[n, L]``, ``label_idx [K]``, weights ``[B, n]`` -> ``[B, K]``.

    Each label uses only its valid (``mask``) entries; nan where a replicate lost a class.
    """
    out = np.empty((weights.shape[0], len(label_idx)))
    for k, j in enumerate(label_idx):
        m = mask[:, j]
        out[:, k] = weighted_auroc(probs[m, j], targets[m, j] > 0.5, weights[:, m])
    return out


def order_rank(n: int, level: float = 0.95) -> int:
    """``k = ceil((1 - level) / 2 * n)`` (at least 1): the 1-based rank of the interval's lower end."""
    return max(1, math.ceil(round((1 - level) / 2 * n, 9)))  # round: 0.025 * 1000 is 25.000000000000004


def percentile_ci(samples: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval ``[s_(k), s_(B+1-k)]`` of bootstrap replicates ``[B]`` (order statistics, 1-based,
    ``k = ceil((1 - level) / 2 B)``; nan replicates dropped); (nan, nan) if none left. It excludes 0 exactly
    when :func:`bootstrap_p` is below ``1 - level``."""
    samples = np.asarray(samples, dtype=np.float64)
    samples = np.sort(samples[~np.isnan(samples)])
    if samples.size == 0:
        return (float("nan"), float("nan"))
    k = order_rank(samples.size, level)
    return (float(samples[k - 1]), float(samples[samples.size - k]))


def bootstrap_p(samples: np.ndarray) -> float:
    """Two-sided p of "the replicated quantity is 0": ``min(1, 2 min(#{s <= 0}, #{s >= 0}) / B)`` over the
    defined replicates ``[B]`` (nan if none). 0 means no replicate on the far side: report ``p < 2/B``."""
    samples = np.asarray(samples, dtype=np.float64)
    samples = samples[~np.isnan(samples)]
    if samples.size == 0:
        return float("nan")
    far = min(np.count_nonzero(samples <= 0), np.count_nonzero(samples >= 0))
    return float(min(1.0, 2.0 * far / samples.size))


def nanmean_rows(values: np.ndarray) -> np.ndarray:
    """Mean over axis 1 ignoring nan, ``[B, K] -> [B]``; nan (without a warning) where a row is all nan."""
    valid = ~np.isnan(values)
    count = valid.sum(axis=1)
    total = np.where(valid, values, 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


@dataclasses.dataclass(frozen=True)
class PairedDelta:
    """Paired bootstrap of ``mauc_b - mauc_a`` on the same test items (``a`` = reference, ``b`` = candidate)."""

    mauc_a: float  # point estimate, labels with both classes in the full test set
    mauc_b: float
    delta: float  # mauc_b - mauc_a
    ci95: tuple[float, float]  # percentile interval of the replicated deltas
    p_value: float  # two-sided, from the same replicates as ci95 (module docstring): 0 = below 2 / n_valid
    n_bootstrap: int  # replicates drawn
    n_valid: int  # replicates where mAUC was defined for both (a label losing a class is left out of that
    # replicate's mean for both models alike)
    label_idx: tuple[int, ...]  # labels averaged
    mauc_a_ci95: tuple[float, float]
    mauc_b_ci95: tuple[float, float]
    # every replicate's delta in resampling order (nan where undefined): what seed_mean_delta averages
    replicates: np.ndarray = dataclasses.field(default_factory=lambda: np.empty(0), repr=False, compare=False)


def paired_bootstrap_mauc(
    targets: np.ndarray,
    mask: np.ndarray,
    probs_a: np.ndarray,
    probs_b: np.ndarray,
    groups: np.ndarray,
    n_bootstrap: int,
    seed: int,
    min_positives: int = 0,
) -> PairedDelta:
    """Delta mAUC (b - a) with its paired bootstrap 95% interval and p-value.

    targets/mask/probs ``[n, L]`` for the same ``n`` items in the same order (images or studies);
    ``groups [n]`` each item's resampled unit (patient or study index: :func:`unit_groups`). mAUC is the macro mean over the labels with
    both classes among the valid entries of the full set (and at least ``min_positives`` positives).
    """
    targets = np.asarray(targets)
    mask = np.asarray(mask, dtype=bool)
    probs_a = np.asarray(probs_a, dtype=np.float64)
    probs_b = np.asarray(probs_b, dtype=np.float64)
    if not (targets.shape == mask.shape == probs_a.shape == probs_b.shape):
        raise ValueError(
            f"shapes differ: targets {targets.shape}, mask {mask.shape}, a {probs_a.shape}, b {probs_b.shape}"
        )
    # labels with fewer than min_positives positives are reported apart, not in the mean (stats.rules)
    label_idx = labels_in_mean(targets, mask, min_positives)
    if label_idx.size == 0:
        raise ValueError("no label has both classes in the test set: mAUC is undefined")
    ones = np.ones((1, targets.shape[0]))
    mauc_a = float(nanmean_rows(auroc_matrix(targets, probs_a, mask, label_idx, ones))[0])
    mauc_b = float(nanmean_rows(auroc_matrix(targets, probs_b, mask, label_idx, ones))[0])
    delta = mauc_b - mauc_a
    reps_a, reps_b = [], []
    for w in resample_weights(groups, n_bootstrap, seed):
        auc_a = auroc_matrix(targets, probs_a, mask, label_idx, w)  # [b, K]
        auc_b = auroc_matrix(targets, probs_b, mask, label_idx, w)
        reps_a.append(nanmean_rows(auc_a))
        reps_b.append(nanmean_rows(auc_b))
    ra, rb = np.concatenate(reps_a), np.concatenate(reps_b)
    deltas = rb - ra  # nan exactly where both are nan (same targets and weights -> same labels defined)
    valid = deltas[~np.isnan(deltas)]
    return PairedDelta(
        mauc_a=mauc_a,
        mauc_b=mauc_b,
        delta=delta,
        ci95=percentile_ci(valid),
        p_value=bootstrap_p(valid),
        n_bootstrap=int(n_bootstrap),
        n_valid=int(valid.size),
        label_idx=tuple(int(i) for i in label_idx),
        mauc_a_ci95=percentile_ci(ra),
        mauc_b_ci95=percentile_ci(rb),
        replicates=deltas,
    )


@dataclasses.dataclass(frozen=True)
class SeedMeanDelta:
    """The mean over training seeds of a paired delta, with its bootstrap interval and p."""

    delta: float  # mean of the seeds' point deltas
    ci95: tuple[float, float]
    p_value: float
    n_valid: int  # replicates where every seed's delta was defined
    n_seeds: int


def seed_mean_delta(deltas: list[PairedDelta]) -> SeedMeanDelta:
    """The seed mean of ``deltas`` (one :class:`PairedDelta` per training seed, each ``b - a`` on the same test
    set) with the interval of that mean: replicate by replicate, the mean of the seeds' deltas, then
    :func:`percentile_ci` and :func:`bootstrap_p` of those means.

    Valid only when every delta was drawn on the SAME resamples (the same test items, ``groups``, ``n_bootstrap``
    and ``seed``: what compare's paired runner does for every seed), so that replicate ``b`` is the same
    resampled test set for every seed; a different replicate count is an error. The interval covers test-set
    sampling of the mean over these seeds, not the spread a new seed would add. One seed gives that seed's
    own interval and p."""
    if not deltas:
        raise ValueError("no deltas to average")
    reps = [np.asarray(d.replicates, dtype=np.float64) for d in deltas]
    if len({r.size for r in reps}) != 1 or reps[0].size == 0:
        raise ValueError(f"the seeds' deltas need the same (non-empty) replicates, got sizes {[r.size for r in reps]}")
    means = np.mean(np.stack(reps), axis=0)  # nan where any seed's replicate is nan
    valid = means[~np.isnan(means)]
    return SeedMeanDelta(delta=float(np.mean([d.delta for d in deltas])), ci95=percentile_ci(valid),
                         p_value=bootstrap_p(valid), n_valid=int(valid.size), n_seeds=len(deltas))
