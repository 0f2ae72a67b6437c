"""The datasets cxrpipe reads: one :class:`DatasetSpec` per name, and :func:`get`.

Pretraining sources (``data.source`` of ``prepare``): ``mimic-cxr-jpg``, ``mimic-cxr``, ``iu-xray``; their
reader takes prepare's ``DataConfig``. Transfer sets (``transfer_prepare``, params ``transfer_data.<name>``):
``nih_cxr14``, ``chexpert``, ``rsna_pneumonia``; their reader takes the dataset's own config dataclass
(``config``). Every reader returns a :class:`~cxrpipe.data.records.SourceRead`; ``labels`` are the label
columns the prepared folder gets, in this order. The reader modules never import this one (no circles).
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Callable

from cxrpipe.data import chexpert, iuxray, mimic, nih, rsna
from cxrpipe.data.records import UNKNOWN_VIEW, SourceRead
from cxrpipe.labels import CHEXPERT_LABELS, COMPETITION_LABELS


class Role(str, enum.Enum):
    PRETRAIN = "pretrain"  # images + reports: prepare -> embed -> pretrain
    TRANSFER = "transfer"  # images + labels: transfer_prepare -> transfer


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    name: str  # params value and folder name
    title: str  # for tables and messages
    role: Role
    labels: tuple[str, ...]  # the label columns of its prepared folder, in this order
    competition_labels: tuple[str, ...]  # a customary subset reported beside the mean (CheXpert's 5), else ()
    layout: str  # where the files must be (named in errors and in docs/public-data.md)
    split_rule: str  # how train / validate / test are formed
    reader: Callable[..., SourceRead]  # config -> SourceRead
    config: type | None = None  # the params dataclass of transfer_data.<name> (None: prepare's DataConfig)
    views: tuple[str, ...] = ()  # every view its images.csv rows can hold (the `views` params name some of them)
    check: Callable[..., None] | None = None  # config -> None: the files the reader needs are there (cheap)

    def read(self, cfg) -> SourceRead:
        return self.reader(cfg)


_MIMIC_SPLIT = "MIMIC-CXR's own split table (by subject)"
_FRONTAL_PA_AP = ("PA", "AP", UNKNOWN_VIEW)
SPECS: dict[str, DatasetSpec] = {s.name: s for s in (
    DatasetSpec("mimic-cxr-jpg", "MIMIC-CXR-JPG", Role.PRETRAIN, CHEXPERT_LABELS, (), mimic.EXPECTED_LAYOUT,
                _MIMIC_SPLIT, mimic.read_mimic_source, views=mimic.VIEWS, check=mimic.check_source),
    DatasetSpec("mimic-cxr", "MIMIC-CXR (DICOM)", Role.PRETRAIN, CHEXPERT_LABELS, (), mimic.EXPECTED_LAYOUT,
                _MIMIC_SPLIT, mimic.read_mimic_source, views=mimic.VIEWS, check=mimic.check_source),
    DatasetSpec("iu-xray", "IU X-ray (Open-i)", Role.PRETRAIN, CHEXPERT_LABELS, (), iuxray.IU_LAYOUT,
                "seeded split by report uid (data.split_fractions, data.split_seed)", iuxray.read_iu_xray,
                views=iuxray.VIEWS, check=iuxray.check_source),
    DatasetSpec("nih_cxr14", "NIH ChestX-ray14", Role.TRANSFER, nih.NIH_LABELS, (), nih.LAYOUT, nih.SPLIT_RULE,
                nih.read_nih, nih.NIHConfig, views=_FRONTAL_PA_AP),
    DatasetSpec("chexpert", "CheXpert", Role.TRANSFER, CHEXPERT_LABELS, COMPETITION_LABELS,
                chexpert.LAYOUT, chexpert.SPLIT_RULE, chexpert.read_chexpert, chexpert.CheXpertConfig,
                views=("AP", "PA", "LL", "RL", UNKNOWN_VIEW)),  # frontal images' AP/PA column (may be blank)
    DatasetSpec("rsna_pneumonia", "RSNA Pneumonia", Role.TRANSFER, rsna.RSNA_LABELS, (), rsna.LAYOUT,
                "seeded split by patient (split_fractions, seed), or split_file", rsna.read_rsna, rsna.RSNAConfig,
                views=_FRONTAL_PA_AP),
)}


def get(name: str) -> DatasetSpec:
    """The spec of dataset ``name``; KeyError naming the known ones."""
    if name not in SPECS:
        raise KeyError(f"unknown dataset {name!r}; known: {sorted(SPECS)}")
    return SPECS[name]


def names(role: Role | None = None) -> list[str]:
    return [n for n, s in SPECS.items() if role is None or s.role == role]
