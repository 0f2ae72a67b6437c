"""The 14 CheXpert labels and the policies that turn raw label values into training targets.

Raw values as MIMIC-CXR's ``mimic-cxr-2.0.0-chexpert.csv.gz`` stores them: ``1.0`` positive, ``0.0``
negative, ``-1.0`` uncertain, blank = not mentioned. In memory a raw value is a float with ``nan`` for
blank. Always index labels by name, never by column position.
"""

from __future__ import annotations

import enum
from typing import Mapping, Sequence

import numpy as np

# CSV column order of MIMIC-CXR's chexpert/negbio files (alphabetical).
CHEXPERT_LABELS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Enlarged Cardiomediastinum",
    "Fracture",
    "Lung Lesion",
    "Lung Opacity",
    "No Finding",
    "Pleural Effusion",
    "Pleural Other",
    "Pneumonia",
    "Pneumothorax",
    "Support Devices",
)
N_LABELS = len(CHEXPERT_LABELS)
# The CheXpert competition's 5 labels (Irvin et al. 2019): the mAUC that CheXpert, GLoRIA, MGCA and most peers
# report beside the 14 (``mauc5``: their macro mean over those with both classes in the test set).
COMPETITION_LABELS: tuple[str, ...] = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")

RAW_VALUES = (1.0, 0.0, -1.0)  # plus blank (nan)


class UncertainPolicy(str, enum.Enum):
    """What an uncertain (-1) label becomes."""

    IGNORE = "ignore"  # masked out of the loss and the metrics (default)
    ONES = "ones"
    ZEROS = "zeros"


class BlankPolicy(str, enum.Enum):
    """What a blank (not mentioned) label becomes."""

    ZEROS = "zeros"  # not mentioned = negative (default, as CheXpert's own convention)
    IGNORE = "ignore"


def parse_raw_label(value: str | float | None) -> float:
    """One raw CSV cell -> 1.0 / 0.0 / -1.0 / nan. Raises ValueError for anything else."""
    if value is None:
        return float("nan")
    if isinstance(value, str):
        value = value.strip()
        if value == "":
            return float("nan")
        try:
            value = float(value)
        except ValueError:
            raise ValueError(f"label value {value!r} is not one of 1, 0, -1 or blank") from None
    v = float(value)
    if np.isnan(v):
        return v
    if v not in RAW_VALUES:
        raise ValueError(f"label value {value!r} is not one of 1, 0, -1 or blank")
    return v


def parse_label_row(row: Mapping[str, str], names: Sequence[str]) -> tuple[tuple[float, ...], list[str]]:
    """The raw values of columns ``names`` of one CSV row (nan for a bad cell) and the bad cells, as
    ``"<name>='<value>'"`` strings: a row with any is the caller's to reject, naming them."""
    values, bad = [], []
    for name in names:
        try:
            values.append(parse_raw_label(row[name]))
        except ValueError:
            bad.append(f"{name}={row[name]!r}")
            values.append(float("nan"))
    return tuple(values), bad


def targets_and_mask(
    raw: np.ndarray,
    uncertain: UncertainPolicy = UncertainPolicy.IGNORE,
    blank: BlankPolicy = BlankPolicy.ZEROS,
) -> tuple[np.ndarray, np.ndarray]:
    """Raw labels ``[N, 14]`` (1/0/-1/nan) -> (targets ``[N, 14]`` float32 in {0,1}, mask ``[N, 14]`` bool).

    ``mask`` is False where the label must be left out of the loss and the metrics.
    """
    raw = np.asarray(raw, dtype=np.float32)
    targets = np.zeros_like(raw, dtype=np.float32)
    mask = np.ones_like(raw, dtype=bool)
    targets[raw == 1.0] = 1.0
    unc = raw == -1.0
    if uncertain is UncertainPolicy.IGNORE:
        mask[unc] = False
    elif uncertain is UncertainPolicy.ONES:
        targets[unc] = 1.0
    blank_ = np.isnan(raw)
    if blank is BlankPolicy.IGNORE:
        mask[blank_] = False
    return targets, mask
