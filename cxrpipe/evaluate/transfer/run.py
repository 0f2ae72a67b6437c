"""Transfer evaluation: an exported encoder on an external labelled dataset, at several label fractions.

The dataset is a prepared folder (``data/transfer/<dataset>``, written by ``transfer_prepare`` in exactly the
format ``prepare`` writes: manifest, ``images.h5``, ``prepare_report.json``) whose label columns are the
dataset's own (NIH ChestX-ray14's 14, CheXpert's 14, RSNA's 1: :func:`cxrpipe.data.manifest.read_label_names`).
:func:`run_transfer` runs stage three (:func:`cxrpipe.evaluate.probe.finetune.run_finetune`, protocol ``fc``,
``linear`` or LP-FT ``finetune``) of one encoder at every fraction of ``transfer.label_fractions``. The training studies of a
fraction are the label-efficiency sample (:func:`cxrpipe.evaluate.probe.data.sample_studies`): by study, seeded by
``transfer.seed``, nested, and the same for every encoder; validate (model selection) and test are whole.

Small fractions: a label with fewer than ``transfer.min_train_positives`` positive studies in the sample was
never learned, so its test AUROC (an untrained output, ~0.5) says nothing about the encoder: it is reported
as **not estimable**, apart from mAUC. A fraction where no label can be learned (or fewer than two training
images: BatchNorm cannot train) is not run at all and is reported as not estimable (mAUC null), never as 0.5.
The rule and the runs are label efficiency's (:func:`cxrpipe.evaluate.probe.label_efficiency.run_fraction`).
The low-positive rule on test (``stats.min_test_positives``) applies per dataset as in stage three.

The paired comparison of the runs (``transfer_compare``) is :mod:`cxrpipe.evaluate.transfer.report`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from cxrpipe.evaluate.probe.finetune import FinetuneConfig, Protocol
from cxrpipe.evaluate.probe.label_efficiency import SUMMARY, fraction_tag, run_fraction
from cxrpipe.evaluate.stats.metrics import EvalLevel, jsonable
from cxrpipe.evaluate.stats.rules import StatsConfig
from cxrpipe.labels import BlankPolicy, UncertainPolicy

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TransferConfig:
    """Params section ``transfer``; the head, optimiser and epoch selection come from ``finetune``."""

    datasets: tuple[str, ...] = ("nih_cxr14",)  # data/transfer/<name>; dvc.yaml's matrix reads this list
    encoders: tuple[str, ...] = ("mae", "multimodal", "random")  # data/models/<name>
    protocols: tuple[Protocol, ...] = (Protocol.FC, Protocol.FINETUNE)
    label_fractions: tuple[float, ...] = (0.01, 0.1, 1.0)  # nested seeded samples of the training studies
    seed: int = 0  # label-fraction sample, head init, batch order (finetune.seed is not used here)
    uncertain: UncertainPolicy = UncertainPolicy.IGNORE  # -1 labels (CheXpert's): ignore | ones | zeros
    blank: BlankPolicy = BlankPolicy.ZEROS  # blank labels: zeros | ignore
    views: tuple[str, ...] = ()  # images.csv views used; () = all (the transfer readers keep frontal images)
    min_train_positives: int = 1  # labels with fewer positive training studies in a fraction: not estimable
    finetune_epochs: int | None = None  # protocol finetune: epochs after the probe; None = finetune.finetune.epochs
    n_bootstrap: int = 1000  # replicates (test studies resampled) for every interval and paired delta
    level: EvalLevel = EvalLevel.STUDY  # unit of mAUC and of the paired deltas in transfer_compare
    reference: str = "mae"  # paired delta = candidate - reference
    candidate: str = "multimodal"
    references: tuple[str, ...] = ("random",)  # baselines: each of reference / candidate minus each of these


def transfer_finetune_config(ft: FinetuneConfig, cfg: TransferConfig) -> FinetuneConfig:
    """Stage three's config with the transfer section's seed, label policies, views and epochs."""
    return dataclasses.replace(
        ft, seed=cfg.seed, uncertain=cfg.uncertain, blank=cfg.blank, views=cfg.views,
        n_bootstrap=cfg.n_bootstrap, label_fraction=1.0,
        finetune=dataclasses.replace(ft.finetune, epochs=cfg.finetune_epochs or ft.finetune.epochs),
    )


def dataset_info(prepared: str | Path, name: str) -> dict[str, Any]:
    """Name, title and provenance from the prepared folder's ``prepare_report.json`` (title: the report's
    ``title``, else its ``dataset``, else ``name``)."""
    path = Path(prepared) / "prepare_report.json"
    report = json.loads(path.read_text()) if path.exists() else {}
    title = report.get("title") or report.get("dataset") or name
    split = (report.get("details") or {}).get("split_label")  # NIH: official lists | random 70/10/20 (never mixed)
    return {"name": name, "title": f"{title} ({split})" if split else title,
            "source": report.get("source"), "demo": report.get("demo")}


def run_transfer(
    ft: FinetuneConfig,
    cfg: TransferConfig,
    dataset: str,
    encoder_dir: str | Path,
    protocol: Protocol | str,
    prepared: str | Path,
    out_dir: str | Path,
    stats: StatsConfig = StatsConfig(),
) -> dict[str, Any]:
    """One dataset x encoder x protocol at every fraction: ``out_dir/<tag>.json`` (metrics), ``.config.json``,
    ``.npz`` (test predictions) per fraction run, and ``out_dir/summary.json`` (returned)."""
    from cxrpipe.data.manifest import read_label_names
    from cxrpipe.inputs import encoder_name
    from cxrpipe.io import write_json_atomic

    protocol, out_dir, prepared = Protocol(protocol), Path(out_dir), Path(prepared)
    name = encoder_name(encoder_dir)  # the encoder's own (config.json), checked by transfer_compare
    out_dir.mkdir(parents=True, exist_ok=True)
    base = transfer_finetune_config(ft, cfg)
    labels = read_label_names(prepared)
    runs = {fraction_tag(f): run_fraction(base, f, encoder_dir, protocol, prepared, out_dir, cfg.min_train_positives,
                                          cfg.level, stats, who=f"{dataset} {name}")
            for f in sorted(set(float(x) for x in cfg.label_fractions))}
    summary = jsonable({
        "dataset": dataset_info(prepared, dataset), "encoder": name, "protocol": protocol.value,
        "level": cfg.level.value, "seed": cfg.seed, "labels": list(labels), "runs": runs,
    })
    write_json_atomic(out_dir / SUMMARY, summary)
    for tag, r in runs.items():
        log.info("%s %s-%s %s: %d train studies, test mAUC %s %s", dataset, summary["encoder"], protocol.value, tag,
                 r["n_train_studies"], r["mauc"], r["mauc_ci95"])
    return summary
