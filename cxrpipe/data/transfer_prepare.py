"""The ``transfer_prepare`` stage: an external labelled dataset -> ``data/transfer/<name>/``, in exactly the
prepared-folder format of ``prepare`` (``images.csv``, ``studies.csv`` with the dataset's OWN label columns,
``images.h5``, ``prepare_report.json``, ``rejects.csv``, ``config.json``).

The dataset's reader comes from :mod:`cxrpipe.data.registry`, its settings from params
``transfer_data.<name>``, the image cache settings and the loss tolerance from ``prepare`` (same image size as
the pretraining cache, same ``max_reject_fraction``). Decoding, resume, the image cache and the report are
prepare's own code (:func:`cxrpipe.data.prepare.write_prepared`).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from cxrpipe.data import registry
from cxrpipe.data.chexpert import CheXpertConfig
from cxrpipe.data.nih import NIHConfig
from cxrpipe.data.prepare import PrepareConfig, PrepareError, PrepareReport, Target, write_prepared
from cxrpipe.data.rsna import RSNAConfig


@dataclasses.dataclass(frozen=True)
class TransferDataConfig:
    """params section ``transfer_data``: where each external dataset lives and how it is split."""

    nih_cxr14: NIHConfig = dataclasses.field(default_factory=lambda: NIHConfig(root=Path("data/demo-nih")))
    chexpert: CheXpertConfig = dataclasses.field(default_factory=CheXpertConfig)
    rsna_pneumonia: RSNAConfig = dataclasses.field(default_factory=RSNAConfig)


def run_transfer_prepare(
    name: str, data_cfg: TransferDataConfig, prep_cfg: PrepareConfig, out_dir: str | Path
) -> PrepareReport:
    """Read dataset ``name`` and write its prepared folder into ``out_dir``."""
    try:
        spec = registry.get(name)
    except KeyError as e:
        raise PrepareError(str(e.args[0])) from None
    if spec.role != registry.Role.TRANSFER:
        raise PrepareError(f"{name!r} is a pretraining source (data.source of `prepare`), not a transfer set; "
                           f"transfer sets: {registry.names(registry.Role.TRANSFER)}")
    cfg = getattr(data_cfg, name)
    t0 = time.perf_counter()
    read = spec.read(cfg)
    target = Target(name, Path(cfg.root), "", spec.labels, {"transfer_data": {name: cfg}, "prepare": prep_cfg})
    return write_prepared(read, target, prep_cfg, out_dir, t0=t0)
