"""Per-run metrics on a label set (the 14 CheXpert labels unless the prepared folder holds another: NIH
ChestX-ray14, RSNA ...), image- and study-level, with bootstrap intervals over test studies.

Definitions (all point estimates with scikit-learn; intervals with :mod:`cxrpipe.evaluate.stats.bootstrap`):

* AUROC / AUPRC per label over that label's valid entries (``mask``: uncertain labels are masked out under
  the default policy). A label whose valid test entries hold one class only has no AUROC: it is left out
  of mAUC and named in ``labels_excluded``.
* mAUC: macro mean of AUROC over the labels with both classes in the test set AND at least
  ``min_positives`` positive test entries (``stats.min_test_positives``, default 10; ``labels_in_mauc``).
  A label with fewer positives is **reported apart**: its AUROC and interval are still computed and listed
  (``labels_low_positive``, ``per_label[...]["low_positive"]``), but it is left out of mAUC, macro F1 and mean
  AUPRC, because an AUROC on 4 positives swings by +-0.2 from one patient (MIMIC-CXR's test split has such
  labels; the CheXpert/CheXzero literature likewise reports them apart or drops them).
* mAUC-5 (``mauc5``): the CheXpert competition's 5 labels among the mAUC labels, only for a label set that
  holds all 5 (:func:`competition_labels_of`); null otherwise.
* accuracy: at threshold 0.5 (positive when ``p >= 0.5``), micro over every valid (image or study, label)
  entry of all labels; ``all_negative_accuracy`` is the accuracy of predicting 0 everywhere on exactly
  the same entries. With ~13% positives it is already ~0.87: accuracy means little without it.
* F1: per label at the threshold that maximises F1 on ``validate`` (same level), macro over the mAUC labels.
* level ``image``: one unit per image; ``study``: the mean of a study's image probabilities, one unit per
  study. Both levels resample the same unit in the bootstrap: the patient (``stats.bootstrap_unit``, default;
  a patient's studies and images drawn together) or the study. Each block records ``bootstrap_unit`` and
  ``n_patients`` beside ``n_studies``.
"""

from __future__ import annotations

import dataclasses
import enum
import io
import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cxrpipe.evaluate.stats import bootstrap
from cxrpipe.evaluate.stats.rules import BootstrapUnit, counts, labels_in_mean
from cxrpipe.labels import CHEXPERT_LABELS, COMPETITION_LABELS


def competition_labels_of(labels: Sequence[str]) -> tuple[str, ...]:
    """The competition labels a label set reports ``mauc5`` on: all 5 when every one of them is in ``labels``
    (the 14 CheXpert labels: MIMIC-CXR, CheXpert, IU X-ray), else none (NIH ChestX-ray14 names 4 of them, one
    as "Effusion": a 4-label mean would not be the literature's number, so it is not reported)."""
    return COMPETITION_LABELS if set(COMPETITION_LABELS) <= set(labels) else ()


def competition_columns(label_idx: np.ndarray, labels: Sequence[str] = CHEXPERT_LABELS) -> np.ndarray:
    """Positions within ``label_idx`` (indices into ``labels``) of the 5 competition labels -> ``[<=5]``;
    empty for a label set without all 5 (:func:`competition_labels_of`)."""
    c5 = competition_labels_of(labels)
    return np.array([k for k, j in enumerate(label_idx) if labels[j] in c5], dtype=np.int64)


class EvalLevel(str, enum.Enum):
    """The unit a metric counts."""

    IMAGE = "image"
    STUDY = "study"  # mean probability over the study's (frontal) images


@dataclasses.dataclass(frozen=True)
class Predictions:
    """Per-image predictions of one split (one row per image)."""

    image_ids: np.ndarray  # [N] str (dicom ids)
    study_ids: np.ndarray  # [N] int64
    probs: np.ndarray  # [N, L] float32 sigmoid outputs, in ``labels`` order (L = 14: CHEXPERT_LABELS)
    targets: np.ndarray  # [N, L] float32 in {0, 1} (the study's labels under the run's policies)
    mask: np.ndarray  # [N, L] bool, False = left out of the metrics
    labels: tuple[str, ...] = CHEXPERT_LABELS  # the label set (the prepared folder's label columns)
    subject_ids: np.ndarray | None = None  # [N] int64 each image's patient (None: not recorded)

    def __post_init__(self) -> None:
        if np.ndim(self.probs) == 2 and np.shape(self.probs)[1] != len(self.labels):
            raise ValueError(f"predictions have {np.shape(self.probs)[1]} columns for {len(self.labels)} labels")

    def at_level(self, level: EvalLevel, unit: BootstrapUnit | str = BootstrapUnit.STUDY) -> "LevelData":
        """The units to score at ``level``; study level averages each study's image probabilities. Their
        bootstrap ``groups`` are the ``unit`` (patient or study: :func:`bootstrap.unit_groups`)."""
        studies, first, groups = np.unique(self.study_ids, return_index=True, return_inverse=True)
        subjects = None if self.subject_ids is None else np.asarray(self.subject_ids, dtype=np.int64)
        if EvalLevel(level) is EvalLevel.IMAGE:
            return LevelData(self.study_ids, bootstrap.unit_groups(self.study_ids, subjects, unit), self.probs,
                             self.targets, self.mask, self.labels, subjects)
        groups = groups.reshape(-1)
        n = len(studies)
        count = np.bincount(groups, minlength=n).astype(np.float64)  # images per study [M]
        probs = np.zeros((n, self.probs.shape[1]))
        np.add.at(probs, groups, self.probs)
        # labels (and the patient) are per study, so the study's first image row holds them
        subjects = None if subjects is None else subjects[first]
        return LevelData(studies, bootstrap.unit_groups(studies, subjects, unit), probs / count[:, None],
                         self.targets[first], self.mask[first], self.labels, subjects)


@dataclasses.dataclass(frozen=True)
class LevelData:
    """Units (images or studies) to score."""

    study_ids: np.ndarray  # [n] each unit's study id
    groups: np.ndarray  # [n] each unit's patient (or study) index: the bootstrap's resampled unit
    probs: np.ndarray  # [n, L]
    targets: np.ndarray  # [n, L]
    mask: np.ndarray  # [n, L] bool
    labels: tuple[str, ...] = CHEXPERT_LABELS  # names of the L columns
    subject_ids: np.ndarray | None = None  # [n] each unit's patient (None: not recorded)


def save_predictions(pred: Predictions, path: str | Path, **meta: str) -> None:
    """Write predictions (+ string metadata such as encoder/protocol) as ``.npz``, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.savez(
        buf,
        image_ids=np.asarray(pred.image_ids, dtype=str),
        study_ids=np.asarray(pred.study_ids, dtype=np.int64),
        probs=np.asarray(pred.probs, dtype=np.float32),
        targets=np.asarray(pred.targets, dtype=np.float32),
        mask=np.asarray(pred.mask, dtype=bool),
        labels=np.asarray(pred.labels, dtype=str),
        **({} if pred.subject_ids is None else {"subject_ids": np.asarray(pred.subject_ids, dtype=np.int64)}),
        **{k: np.asarray(v, dtype=str) for k, v in meta.items()},
    )
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, path)


def load_predictions(
    path: str | Path, labels: Sequence[str] | None = CHEXPERT_LABELS
) -> tuple[Predictions, dict[str, str]]:
    """Read :func:`save_predictions` output -> (predictions, metadata strings). ``labels``: the label set the
    file must hold, in order (default the 14 CheXpert labels of stage three); None = whichever it holds."""
    with np.load(path, allow_pickle=False) as z:
        stored = tuple(str(s) for s in z["labels"])
        if labels is not None and stored != tuple(labels):
            what = "the 14 CheXpert labels" if tuple(labels) == CHEXPERT_LABELS else f"{tuple(labels)}"
            raise ValueError(f"{path}: labels {stored} are not {what} in order")
        subjects = z["subject_ids"] if "subject_ids" in z.files else None  # older files: none recorded
        pred = Predictions(z["image_ids"], z["study_ids"], z["probs"], z["targets"], z["mask"].astype(bool), stored,
                           subjects)
        arrays = {"image_ids", "study_ids", "probs", "targets", "mask", "labels", "subject_ids"}
        meta = {k: str(z[k]) for k in z.files if k not in arrays}
    return pred, meta


# ---------------------------------------------------------------- point metrics (scikit-learn)


def both_classes(targets: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``[L]`` bool: the label's valid entries hold at least one positive and one negative."""
    pos = (targets > 0.5) & mask
    neg = (targets <= 0.5) & mask
    return pos.any(axis=0) & neg.any(axis=0)


def auroc_per_label(targets: np.ndarray, probs: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``[L]`` AUROC over each label's valid entries; nan for a label with one class.

    The pair-counting form of ``bootstrap.weighted_auroc`` with unit weights: the value of
    ``sklearn.metrics.roc_auc_score`` (ties count one half), correctly rounded (the count is exact), and tens of
    times faster on a few hundred studies, where roc_auc_score's input validation dominates; every probe's
    selection scores validate this way hundreds of times per run.
    """
    ok = both_classes(targets, mask)
    out = np.full(targets.shape[1], np.nan)
    for j in np.flatnonzero(ok):
        m = mask[:, j]
        out[j] = bootstrap.weighted_auroc(probs[m, j], targets[m, j] > 0.5, np.ones((1, int(m.sum()))))[0]
    return out


def auprc_per_label(targets: np.ndarray, probs: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``[L]`` average precision over each label's valid entries; nan for a label without positives."""
    from sklearn.metrics import average_precision_score  # here: scikit-learn's import costs the light stages ~1 s
    out = np.full(targets.shape[1], np.nan)
    for j in range(targets.shape[1]):
        m = mask[:, j]
        y = targets[m, j] > 0.5
        if y.any():
            out[j] = average_precision_score(y, probs[m, j])
    return out


def macro_auroc(
    targets: np.ndarray, probs: np.ndarray, mask: np.ndarray, min_positives: int = 0
) -> tuple[float, np.ndarray]:
    """(mAUC over the labels with both classes and >= ``min_positives`` positives, their indices ``[K]``);
    nan if no label qualifies."""
    idx = labels_in_mean(targets, mask, min_positives)
    auc = auroc_per_label(targets, probs, mask)
    return (float(auc[idx].mean()) if idx.size else float("nan")), idx


def accuracy_at(targets: np.ndarray, probs: np.ndarray, mask: np.ndarray, threshold: float = 0.5) -> float:
    """Micro accuracy over all valid entries, positive when ``p >= threshold``."""
    y = targets[mask] > 0.5
    return float(np.mean(y == (probs[mask] >= threshold))) if y.size else float("nan")


def all_negative_accuracy(targets: np.ndarray, mask: np.ndarray) -> float:
    """Accuracy of predicting 0 for every valid entry (the same entries :func:`accuracy_at` scores)."""
    y = targets[mask] > 0.5
    return float(np.mean(~y)) if y.size else float("nan")


def tune_thresholds(targets: np.ndarray, probs: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``[L]`` threshold maximising F1 per label (on validate); 0.5 where a label has no positive there."""
    from sklearn.metrics import precision_recall_curve
    out = np.full(targets.shape[1], 0.5)
    for j in range(targets.shape[1]):
        m = mask[:, j]
        y = targets[m, j] > 0.5
        if not y.any():
            continue
        precision, recall, thresholds = precision_recall_curve(y, probs[m, j])
        p, r = precision[:-1], recall[:-1]  # the last point (recall 0) has no threshold
        with np.errstate(invalid="ignore", divide="ignore"):
            f1 = np.where(p + r > 0, 2 * p * r / (p + r), 0.0)
        out[j] = float(thresholds[int(np.argmax(f1))])
    return out


def f1_per_label(targets: np.ndarray, probs: np.ndarray, mask: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """``[L]`` F1 at the given thresholds (``p >= t``) over each label's valid entries; nan where none."""
    from sklearn.metrics import f1_score
    out = np.full(targets.shape[1], np.nan)
    for j in range(targets.shape[1]):
        m = mask[:, j]
        if m.any():
            out[j] = f1_score(targets[m, j] > 0.5, probs[m, j] >= thresholds[j], zero_division=0)
    return out


# ---------------------------------------------------------------- one level, with intervals


def jsonable(x: Any) -> Any:
    """Plain JSON data: numpy scalars -> Python, nan -> None (JSON has no NaN; DVC and others reject it)."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return None if math.isnan(x) else float(x)
    return x


def _replicates(test: LevelData, thresholds: np.ndarray, idx: np.ndarray, n_bootstrap: int, seed: int,
                ) -> dict[str, np.ndarray]:
    """Bootstrap replicates over test groups: ``auroc``/``auprc``/``f1`` ``[B, K]`` for the labels ``idx``
    (those with an AUROC), ``acc``/``neg`` ``[B]`` (micro accuracy, all-negative accuracy)."""
    y, p, m = test.targets, test.probs, test.mask
    correct = ((p >= 0.5) == (y > 0.5)) & m
    negative = (y <= 0.5) & m
    n_valid = m.sum(axis=1).astype(np.float64)
    reps: dict[str, list[np.ndarray]] = {k: [] for k in ("auroc", "auprc", "f1", "acc", "neg")}
    for w in bootstrap.resample_weights(test.groups, n_bootstrap, seed):
        reps["auroc"].append(bootstrap.auroc_matrix(y, p, m, idx, w))
        ap = np.empty((w.shape[0], idx.size))
        f1r = np.empty((w.shape[0], idx.size))
        for k, j in enumerate(idx):
            mj = m[:, j]
            yj = y[mj, j] > 0.5
            ap[:, k] = bootstrap.weighted_average_precision(p[mj, j], yj, w[:, mj])
            f1r[:, k] = bootstrap.weighted_f1(p[mj, j] >= thresholds[j], yj, w[:, mj])
        reps["auprc"].append(ap)
        reps["f1"].append(f1r)
        with np.errstate(invalid="ignore", divide="ignore"):
            reps["acc"].append(w @ correct.sum(axis=1) / (w @ n_valid))
            reps["neg"].append(w @ negative.sum(axis=1) / (w @ n_valid))
    return {k: np.concatenate(v) for k, v in reps.items()}


def _per_label(test: LevelData, thresholds: np.ndarray, auc: np.ndarray, auprc: np.ndarray, f1: np.ndarray,
               idx: np.ndarray, kept_idx: np.ndarray, r: dict[str, np.ndarray],
               train_positives: np.ndarray | None, learned: np.ndarray) -> list[dict[str, Any]]:
    """One entry per label: counts, whether it is in the means, AUROC / AUPRC / F1 with their intervals."""
    y, m, ci = test.targets, test.mask, bootstrap.percentile_ci
    per_label = []
    for j, name in enumerate(test.labels):
        k = np.searchsorted(idx, j)
        has_auc = k < idx.size and idx[k] == j
        in_mauc = bool(has_auc and j in kept_idx)
        per_label.append(
            {
                "label": name,
                "n_pos": int(((y[:, j] > 0.5) & m[:, j]).sum()),
                "n_neg": int(((y[:, j] <= 0.5) & m[:, j]).sum()),
                **({} if train_positives is None else {"n_train_pos": int(train_positives[j]),
                                                       "not_estimable": bool(not learned[j])}),
                "in_mauc": in_mauc,
                # fewer than min_positives test positives (or, with train_positives, too few to learn from)
                "low_positive": bool(has_auc and not in_mauc),
                "auroc": jsonable(auc[j]),
                "auroc_ci95": jsonable(ci(r["auroc"][:, k])) if has_auc else None,
                "auprc": jsonable(auprc[j]),
                "auprc_ci95": jsonable(ci(r["auprc"][:, k])) if has_auc else None,
                "threshold": float(thresholds[j]),
                "f1": jsonable(f1[j]),
                "f1_ci95": jsonable(ci(r["f1"][:, k])) if has_auc else None,
            }
        )
    return per_label


def evaluate_level(
    test: LevelData,
    thresholds: np.ndarray,
    n_bootstrap: int,
    seed: int,
    level: EvalLevel,
    min_positives: int = 0,
    train_positives: np.ndarray | None = None,
    min_train_positives: int = 0,
) -> dict[str, Any]:
    """All metrics of one level with bootstrap 95% intervals (``n_bootstrap`` replicates of test studies);
    labels with fewer than ``min_positives`` test positives are reported apart (not in the means).

    ``train_positives [L]`` (the training studies' positives per label, e.g. of a small label fraction): a
    label with fewer than ``min_train_positives`` was never learned, so its AUROC says nothing (an untrained
    output ranks at chance): it is reported apart as ``not_estimable`` too, and the block records the counts.
    None (stage three on MIMIC): no such rule, and the block is as before."""
    labels = test.labels
    y, p, m = test.targets, test.probs, test.mask
    auc = auroc_per_label(y, p, m)
    auprc = auprc_per_label(y, p, m)
    f1 = f1_per_label(y, p, m, thresholds)
    mauc, kept_idx = macro_auroc(y, p, m, min_positives)
    learned = np.ones(len(labels), bool) if train_positives is None else np.asarray(train_positives) >= min_train_positives
    if not learned.all():
        kept_idx = kept_idx[learned[kept_idx]]
        mauc = float(auc[kept_idx].mean()) if kept_idx.size else float("nan")
    idx = np.flatnonzero(~np.isnan(auc))  # every label with an AUROC gets an interval, kept or reported apart
    kept_cols = np.searchsorted(idx, kept_idx)  # columns of the replicates that enter the means
    r = _replicates(test, thresholds, idx, n_bootstrap, seed)
    ci = bootstrap.percentile_ci
    per_label = _per_label(test, thresholds, auc, auprc, f1, idx, kept_idx, r, train_positives, learned)
    excluded = [n for j, n in enumerate(labels) if j not in set(idx.tolist())]  # one class only
    low = [n for j, n in enumerate(labels) if j in set(idx.tolist()) - set(kept_idx.tolist())]
    idx = kept_idx
    c5 = competition_columns(idx, labels)  # empty unless the label set holds all 5 (CheXpert's 14)
    return {
        "level": EvalLevel(level).value,
        "n": int(y.shape[0]),  # units scored: images or studies
        **counts(test.study_ids, test.subject_ids),  # n_patients, n_studies
        "mauc": jsonable(mauc),
        "mauc_ci95": jsonable(ci(bootstrap.nanmean_rows(r["auroc"][:, kept_cols]))),
        "labels_in_mauc": [labels[j] for j in idx],
        # the 5-label CheXpert competition mAUC (the literature's number), same replicates
        "mauc5": jsonable(auc[idx][c5].mean() if c5.size else np.nan),
        # kept_cols[c5]: the replicates' columns are every label with an AUROC, c5 indexes the kept ones
        "mauc5_ci95": jsonable(ci(bootstrap.nanmean_rows(r["auroc"][:, kept_cols[c5]]))),
        "labels_in_mauc5": [labels[j] for j in idx[c5]],
        "labels_excluded": excluded,
        "min_test_positives": int(min_positives),
        "labels_low_positive": low,
        **({} if train_positives is None else {
            "min_train_positives": int(min_train_positives),
            "labels_not_estimable": [n for j, n in enumerate(labels) if not learned[j]],
        }),
        "accuracy": jsonable(accuracy_at(y, p, m)),
        "accuracy_ci95": jsonable(ci(r["acc"])),
        "all_negative_accuracy": jsonable(all_negative_accuracy(y, m)),
        "all_negative_accuracy_ci95": jsonable(ci(r["neg"])),
        "macro_f1": jsonable(np.nanmean(f1[idx]) if idx.size else np.nan),
        "macro_f1_ci95": jsonable(ci(bootstrap.nanmean_rows(r["f1"][:, kept_cols]))),
        "mean_auprc": jsonable(np.nanmean(auprc[idx]) if idx.size else np.nan),
        "mean_auprc_ci95": jsonable(ci(bootstrap.nanmean_rows(r["auprc"][:, kept_cols]))),
        "n_bootstrap": int(n_bootstrap),
        "per_label": per_label,
    }


def evaluate(
    test: Predictions,
    validate: Predictions,
    n_bootstrap: int,
    seed: int,
    min_positives: int = 0,
    train_positives: np.ndarray | None = None,
    min_train_positives: int = 0,
    unit: BootstrapUnit | str = BootstrapUnit.STUDY,
) -> dict[str, Any]:
    """``{"image": block, "study": block}`` for the test predictions; F1 thresholds tuned on validate;
    labels with fewer than ``min_positives`` test positives (at that level) reported apart, and with
    ``train_positives`` those with fewer than ``min_train_positives`` training positives too. The intervals
    resample ``unit`` (``stats.bootstrap_unit``: patient or study), recorded in each block."""
    out = {}
    for level in EvalLevel:
        val = validate.at_level(level)
        thresholds = tune_thresholds(val.targets, val.probs, val.mask)
        block = evaluate_level(test.at_level(level, unit), thresholds, n_bootstrap, seed, level, min_positives,
                               train_positives, min_train_positives)
        out[level.value] = {**block, "bootstrap_unit": BootstrapUnit(unit).value}
    return out
