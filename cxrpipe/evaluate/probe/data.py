"""Labelled images per split for stage three, and the label-fraction sample of the training studies.

Which images: the split's images of a wanted view (frontal AP/PA by default; prepare usually filtered
already) whose study has a label row (``has_labels``; studies without one serve pretraining only). Each image
carries its study's labels turned into targets and a mask by the uncertain/blank policies.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from cxrpipe.data.image_cache import ImageCache
from cxrpipe.data.manifest import SPLITS, label_matrix, read_images, read_label_names, read_studies
from cxrpipe.labels import CHEXPERT_LABELS, BlankPolicy, UncertainPolicy, targets_and_mask

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class LabelledImages:
    """One split's images, in ``images.h5`` row order."""

    rows: np.ndarray  # [N] int64 rows of images.h5
    image_ids: np.ndarray  # [N] str dicom ids
    study_ids: np.ndarray  # [N] int64
    targets: np.ndarray  # [N, L] float32 in {0, 1}
    mask: np.ndarray  # [N, L] bool (False: left out of the loss and the metrics)
    labels: tuple[str, ...] = CHEXPERT_LABELS  # the L label names (the prepared folder's label columns)
    subject_ids: np.ndarray | None = None  # [N] int64 each image's patient (images.csv subject_id)

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    @property
    def n_studies(self) -> int:
        return int(np.unique(self.study_ids).size)

    def select_studies(self, keep: np.ndarray) -> "LabelledImages":
        """The images of the studies in ``keep``."""
        m = np.isin(self.study_ids, keep)
        return LabelledImages(self.rows[m], self.image_ids[m], self.study_ids[m], self.targets[m], self.mask[m],
                              self.labels, None if self.subject_ids is None else self.subject_ids[m])

    def positives(self) -> np.ndarray:
        """``[L]`` int: valid positive entries per label, counted once per study (a study's images share them)."""
        _, first = np.unique(self.study_ids, return_index=True)
        return ((self.targets[first] > 0.5) & self.mask[first]).sum(axis=0)


def sample_studies(study_ids: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A ``fraction`` of the distinct studies (at least one), drawn without replacement with ``seed``.

    Sampling is by study, never by image: a study's images stay together, as in the label-efficiency
    protocols (1%, 10%, 100% of the training studies). The result depends only on the set of ids and the seed
    (so every encoder gets the same studies), and the samples are NESTED: one seeded permutation of the
    studies, of which each fraction takes a prefix (the 0.1 sample contains the 0.01 sample).
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"label_fraction must be in (0, 1], got {fraction}")
    studies = np.unique(study_ids)  # sorted: the draw does not depend on manifest order
    if fraction == 1.0:
        return studies
    k = max(1, int(round(fraction * studies.size)))
    order = np.random.default_rng(seed).permutation(studies.size)
    return np.sort(studies[order[:k]])


def split_counts(splits: dict[str, LabelledImages]) -> dict[str, int]:
    """The sizes every stage-three metrics file records: train images and studies, validate studies, test
    images and studies."""
    return {
        "n_train_images": len(splits["train"]),
        "n_train_studies": splits["train"].n_studies,
        "n_validate_studies": splits["validate"].n_studies,
        "n_test_images": len(splits["test"]),
        "n_test_studies": splits["test"].n_studies,
    }


def labelled_splits(
    prepared: str | Path,
    views: Sequence[str],
    uncertain: UncertainPolicy,
    blank: BlankPolicy,
    label_fraction: float = 1.0,
    seed: int = 0,
) -> dict[str, LabelledImages]:
    """``{"train", "validate", "test"}`` -> labelled images; ``train`` keeps ``label_fraction`` of its studies.

    The labels are the prepared folder's own columns (:func:`read_label_names`: the 14 CheXpert labels for
    MIMIC-CXR, a transfer dataset's set otherwise). ``views`` empty = every view. Raises ValueError when a
    split ends up empty.
    """
    prepared = Path(prepared)
    images = read_images(prepared)
    names = read_label_names(prepared)
    studies = [s for s in read_studies(prepared) if s.has_labels]
    targets, mask = targets_and_mask(label_matrix(studies, len(names)), uncertain, blank)  # [S, L] each
    index = {s.study_id: i for i, s in enumerate(studies)}
    wanted = {v.upper() for v in views}
    dropped: Counter[str] = Counter()
    out: dict[str, LabelledImages] = {}
    for split in SPLITS:
        keep = []
        for r in images:
            if r.split != split:
                continue
            if wanted and r.view.upper() not in wanted:
                dropped[f"{split}: view {r.view or '(missing)'}"] += 1
            elif r.study_id not in index:
                dropped[f"{split}: study without labels"] += 1
            else:
                keep.append(r)
        st = np.array([index[r.study_id] for r in keep], dtype=np.int64)
        out[split] = LabelledImages(
            rows=np.array([r.row for r in keep], dtype=np.int64),
            image_ids=np.array([r.dicom_id for r in keep], dtype=str),
            study_ids=np.array([r.study_id for r in keep], dtype=np.int64),
            targets=targets[st].reshape(-1, targets.shape[1]),
            mask=mask[st].reshape(-1, mask.shape[1]),
            labels=names,
            subject_ids=np.array([r.subject_id for r in keep], dtype=np.int64),
        )
    for what, n in sorted(dropped.items()):
        log.info("left out of stage three: %d images (%s)", n, what)
    if label_fraction < 1.0:
        full = out["train"]
        out["train"] = full.select_studies(sample_studies(full.study_ids, label_fraction, seed))
        log.info(
            "label_fraction %.3g: %d of %d training studies (%d images)",
            label_fraction, out["train"].n_studies, full.n_studies, len(out["train"]),
        )
    for split, d in out.items():
        if len(d) == 0:
            raise ValueError(
                f"{prepared}: no labelled images of views {sorted(wanted) or 'any'} in split '{split}'; "
                "stage three needs train, validate (model selection) and test"
            )
        log.info("%s: %d images, %d studies", split, len(d), d.n_studies)
    return out


class ImageRows(torch.utils.data.Dataset):
    """``(image uint8 [S, S], targets float32 [L], mask bool [L])`` per image of a :class:`LabelledImages`."""

    def __init__(self, cache: ImageCache, images: LabelledImages):
        self.cache = cache  # opens its HDF5 file lazily in each worker
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        image = torch.from_numpy(np.asarray(self.cache[int(self.images.rows[i])]))
        return image, torch.from_numpy(self.images.targets[i]), torch.from_numpy(self.images.mask[i])
