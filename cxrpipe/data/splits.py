"""Seeded splits by group (patient, or report uid where a dataset has no patients), for datasets whose
release has no split (IU X-ray, RSNA Pneumonia) or no validate split (NIH ChestX-ray14, CheXpert).

Deterministic: the groups are sorted, then permuted by ``numpy.random.default_rng(seed)``; the first
``round(f_train * n)`` go to train, the next ``round(f_validate * n)`` to validate, the rest to test. The same
groups, fractions and seed give the same split on every machine; a group never sits in two splits.
"""

from __future__ import annotations

from typing import Hashable, Iterable, Sequence

import numpy as np

from cxrpipe.config import ConfigError
from cxrpipe.data.manifest import SPLITS


def check_fractions(fractions: Sequence[float], where: str) -> tuple[float, float, float]:
    """Three non-negative fractions summing to 1 (train, validate, test); ConfigError naming ``where``."""
    f = tuple(float(x) for x in fractions)
    if len(f) != 3 or min(f) < 0 or abs(sum(f) - 1.0) > 1e-6:
        raise ConfigError(f"{where} must be 3 non-negative fractions (train, validate, test) summing to 1, got {list(f)}")
    return f  # type: ignore[return-value]


def seeded_split(groups: Iterable[Hashable], fractions: Sequence[float], seed: int) -> dict:
    """``{group: "train" | "validate" | "test"}`` for the distinct ``groups`` (see the module doc)."""
    f = check_fractions(fractions, "split fractions")
    uniq = sorted(set(groups), key=lambda g: (str(type(g)), g))
    order = np.random.default_rng(seed).permutation(len(uniq))
    n_train, n_val = int(round(f[0] * len(uniq))), int(round(f[1] * len(uniq)))
    out = {}
    for rank, i in enumerate(order):
        out[uniq[i]] = SPLITS[0] if rank < n_train else SPLITS[1] if rank < n_train + n_val else SPLITS[2]
    return out


def carve_validate(train_groups: Iterable[Hashable], fraction: float, seed: int) -> set:
    """The groups of an official train(+val) split that become ``validate``: a seeded ``fraction`` of them."""
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"validate_fraction must be in [0, 1), got {fraction}")
    split = seeded_split(train_groups, (1.0 - fraction, fraction, 0.0), seed)
    return {g for g, s in split.items() if s == "validate"}
