"""The rules every comparison follows, in one params section (``stats``) and one place in the code.

* ``bootstrap_unit``: what every interval and paired delta resamples (``patient`` by default: a patient's test
  studies are drawn together; :mod:`cxrpipe.evaluate.stats.bootstrap`). Every stage that resamples reads it:
  finetune and pixels (per-run intervals), compare (deltas, references, seed summaries), label efficiency,
  zero-shot, retrieval, transfer.
* ``min_test_positives``: the one label rule. A label with fewer positive test entries (at the scored level)
  is reported apart and left out of every mean over labels: mAUC, the 5-label mAUC, macro F1, mean AUPRC,
  zero-shot mAUC, and every paired delta (:func:`labels_in_mean`).

The bottom of ``stats/``: it imports nothing from the package.

Each report names both (:func:`unit_sentence`, :func:`label_rule_sentence`) and counts what was resampled:
"N patients, M studies".
"""

from __future__ import annotations

import dataclasses
import enum

import numpy as np


class BootstrapUnit(str, enum.Enum):
    """What every interval and paired delta resamples (``stats.bootstrap_unit``)."""

    PATIENT = "patient"  # all of a patient's test studies together (the manifest's subject_id)
    STUDY = "study"  # each study on its own (its images together)


@dataclasses.dataclass(frozen=True)
class StatsConfig:
    """Params section ``stats``."""

    bootstrap_unit: BootstrapUnit = BootstrapUnit.PATIENT  # patient (subject_id) | study
    min_test_positives: int = 10  # labels with fewer test positives: reported apart, not in any mean (0 = off)


def labels_in_mean(targets: np.ndarray, mask: np.ndarray, min_positives: int) -> np.ndarray:
    """``[K]`` indices of the labels a mean over labels averages: both classes among the valid entries of
    ``targets``/``mask [n, L]`` and at least ``min_positives`` positives."""
    pos = ((targets > 0.5) & mask).sum(axis=0)
    neg = ((targets <= 0.5) & mask).sum(axis=0)
    return np.flatnonzero((pos > 0) & (neg > 0) & (pos >= min_positives))


def counts(study_ids: np.ndarray, subject_ids: np.ndarray | None) -> dict[str, int | None]:
    """``{"n_patients", "n_studies"}`` of the scored units (``n_patients`` None when no ids are known)."""
    return {"n_patients": None if subject_ids is None else int(np.unique(subject_ids).size),
            "n_studies": int(np.unique(study_ids).size)}


def unit_sentence(unit: BootstrapUnit | str, n_bootstrap: int, n_patients: int | None, n_studies: int) -> str:
    """``"1000 resamples of the test patients (310 patients, 465 studies; a patient's studies drawn together)"``."""
    unit = BootstrapUnit(unit)
    who = "unknown" if n_patients is None else str(n_patients)
    together = ("a patient's studies drawn together" if unit is BootstrapUnit.PATIENT
                else "each study drawn on its own")
    return f"{n_bootstrap} resamples of the test {unit.value}s ({who} patients, {n_studies} studies; {together})"


def label_rule_sentence(min_positives: int) -> str:
    """The label rule, as every report states it."""
    if min_positives <= 1:
        return "Means over labels average every label with both classes in test."
    return (f"Means over labels average the labels with both classes and at least {min_positives} positives in "
            "test (`stats.min_test_positives`); the others are reported apart.")
