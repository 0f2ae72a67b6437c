"""Transfer evaluation: an exported encoder on an external labelled dataset, at several label fractions.

The dataset is a prepared folder (``data/transfer/<dataset>``, written by ``transfer_prepare`` in exactly the
format ``prepare`` writes: manifest, ``images.h5``, ``prepare_report.json``) whose label columns are the
dataset's own (NIH ChestX-ray14's 14, CheXpert's 14, RSNA's 1: :func:`cxrpipe.data.manifest.read_label_names`).
:func:`run_transfer` runs stage three (:func:`cxrpipe.evaluate.probe.finetune.run_finetune`, protocol ``linear`` or
LP-FT ``finetune``) of one encoder at every fraction of ``transfer.label_fractions``. The training studies of a
fraction are the label-efficiency sample (:func:`cxrpipe.evaluate.probe.data.sample_studies`): by study, seeded by
``transfer.seed``, nested, and the same for every encoder; validate (model selection) and test are whole.

Small fractions: a label with fewer than ``transfer.min_train_positives`` positive studies in the sample was
never learned, so its test AUROC (an untrained output, ~0.5) says nothing about the encoder: it is reported
as **not estimable**, apart from mAUC. A fraction where no label can be learned (or fewer than two training
images: BatchNorm cannot train) is not run at all and is reported as not estimable (mAUC null), never as 0.5.
The low-positive rule on test (``transfer.min_test_positives``) applies per dataset as in stage three.

The paired comparison of the runs (``transfer_compare``) is :mod:`cxrpipe.evaluate.transfer.report`.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import logging
from pathlib import Path
from typing import Any

from cxrpipe.evaluate.probe.finetune import FinetuneConfig, Protocol
from cxrpipe.evaluate.probe.label_efficiency import fraction_tag, studies_hash
from cxrpipe.evaluate.stats.metrics import EvalLevel, jsonable
from cxrpipe.labels import BlankPolicy, UncertainPolicy

log = logging.getLogger(__name__)

SUMMARY = "summary.json"  # per run folder: what transfer_compare reads beside the predictions


class BootstrapUnit(str, enum.Enum):
    """What transfer_compare resamples for its intervals and paired deltas."""

    STUDY = "study"  # the scored unit (NIH: an image; CheXpert: patientN/studyM; RSNA: a patient)
    PATIENT = "patient"  # all of a patient's test studies together (NIH's test list has ~9 images per patient:
    # resampling them one by one treats correlated images as independent and narrows the intervals)


@dataclasses.dataclass(frozen=True)
class TransferConfig:
    """Params section ``transfer``; the head, optimiser and epoch selection come from ``finetune``."""

    datasets: tuple[str, ...] = ("nih_cxr14",)  # data/transfer/<name>; dvc.yaml's matrix reads this list
    encoders: tuple[str, ...] = ("mae", "multimodal", "random")  # data/models/<name>
    protocols: tuple[Protocol, ...] = (Protocol.LINEAR, Protocol.FINETUNE)
    label_fractions: tuple[float, ...] = (0.01, 0.1, 1.0)  # nested seeded samples of the training studies
    seed: int = 0  # label-fraction sample, head init, batch order (finetune.seed is not used here)
    uncertain: UncertainPolicy = UncertainPolicy.IGNORE  # -1 labels (CheXpert's): ignore | ones | zeros
    blank: BlankPolicy = BlankPolicy.ZEROS  # blank labels: zeros | ignore
    views: tuple[str, ...] = ()  # images.csv views used; () = all (the transfer readers keep frontal images)
    min_test_positives: int = 10  # labels with fewer test positives: reported apart, not in mAUC (per dataset)
    min_train_positives: int = 1  # labels with fewer positive training studies in a fraction: not estimable
    finetune_epochs: int | None = None  # protocol finetune: epochs after the probe; None = finetune.finetune.epochs
    n_bootstrap: int = 1000  # replicates (test studies resampled) for every interval and paired delta
    level: EvalLevel = EvalLevel.STUDY  # unit of mAUC and of the paired deltas in transfer_compare
    bootstrap_unit: BootstrapUnit = BootstrapUnit.PATIENT  # what transfer_compare resamples: patient | study
    reference: str = "mae"  # paired delta = candidate - reference
    candidate: str = "multimodal"
    references: tuple[str, ...] = ("random",)  # baselines: each of reference / candidate minus each of these


def transfer_finetune_config(ft: FinetuneConfig, cfg: TransferConfig) -> FinetuneConfig:
    """Stage three's config with the transfer section's seed, label policies, views, rules and epochs."""
    return dataclasses.replace(
        ft, seed=cfg.seed, uncertain=cfg.uncertain, blank=cfg.blank, views=cfg.views,
        min_test_positives=cfg.min_test_positives, n_bootstrap=cfg.n_bootstrap, label_fraction=1.0,
        finetune=dataclasses.replace(ft.finetune, epochs=cfg.finetune_epochs or ft.finetune.epochs),
    )


def dataset_info(prepared: str | Path, name: str) -> dict[str, Any]:
    """Name, title and provenance from the prepared folder's ``prepare_report.json`` (title: the report's
    ``title``, else its ``dataset``, else ``name``)."""
    path = Path(prepared) / "prepare_report.json"
    report = json.loads(path.read_text()) if path.exists() else {}
    return {"name": name, "title": report.get("title") or report.get("dataset") or name,
            "source": report.get("source"), "demo": report.get("demo")}


def run_transfer(
    ft: FinetuneConfig,
    cfg: TransferConfig,
    dataset: str,
    encoder_dir: str | Path,
    protocol: Protocol | str,
    prepared: str | Path,
    out_dir: str | Path,
) -> dict[str, Any]:
    """One dataset x encoder x protocol at every fraction: ``out_dir/<tag>.json`` (metrics), ``.config.json``,
    ``.npz`` (test predictions) per fraction run, and ``out_dir/summary.json`` (returned)."""
    from cxrpipe.data.manifest import read_label_names
    from cxrpipe.evaluate.probe.data import labelled_splits
    from cxrpipe.evaluate.probe.finetune import run_finetune
    from cxrpipe.io import write_json_atomic

    from cxrpipe.inputs import encoder_name

    protocol, out_dir, prepared = Protocol(protocol), Path(out_dir), Path(prepared)
    name = encoder_name(encoder_dir)  # the encoder's own (config.json), checked by transfer_compare
    out_dir.mkdir(parents=True, exist_ok=True)
    base = transfer_finetune_config(ft, cfg)
    labels = read_label_names(prepared)
    runs: dict[str, Any] = {}
    for f in sorted(set(float(x) for x in cfg.label_fractions)):
        tag = fraction_tag(f)
        splits = labelled_splits(prepared, base.views, base.uncertain, base.blank, f, base.seed)
        train = splits["train"]
        pos = train.positives()  # [L] positive training studies per label
        record: dict[str, Any] = {
            "label_fraction": f, "n_train_studies": train.n_studies, "n_train_images": len(train),
            "n_test_studies": splits["test"].n_studies, "train_positives": dict(zip(labels, pos.tolist())),
            "train_studies_hash": studies_hash(train.study_ids),
        }
        learnable = pos >= cfg.min_train_positives
        if not learnable.any() or len(train) < 2:
            for stale in (f"{tag}.json", f"{tag}.config.json", f"{tag}.npz"):
                (out_dir / stale).unlink(missing_ok=True)
            why = (f"{len(train)} training image(s)" if len(train) < 2
                   else f"no label with >= {cfg.min_train_positives} positive training studies")
            log.warning("%s %s-%s at fraction %g (%d training studies): %s: not estimable, not run", dataset,
                        name, protocol.value, f, train.n_studies, why)
            runs[tag] = {**record, "estimable": False, "mauc": None, "mauc_ci95": [None, None], "mauc5": None,
                         "mauc5_ci95": [None, None], "labels_in_mauc": [], "labels_not_estimable": list(labels)}
            continue
        m = run_finetune(dataclasses.replace(base, label_fraction=f), encoder_dir, protocol, prepared,
                         out_dir / f"{tag}.json", predictions_out=out_dir / f"{tag}.npz", plot_out=None,
                         min_train_positives=cfg.min_train_positives)
        blk = m[cfg.level.value]
        runs[tag] = {
            **record, "estimable": blk["mauc"] is not None, "best_epoch": m["best_epoch"],
            **{k: blk.get(k) for k in ("mauc", "mauc_ci95", "mauc5", "mauc5_ci95", "labels_in_mauc",
                                       "labels_in_mauc5", "labels_low_positive", "labels_not_estimable",
                                       "min_test_positives", "min_train_positives")},
        }
    summary = jsonable({
        "dataset": dataset_info(prepared, dataset), "encoder": name, "protocol": protocol.value,
        "level": cfg.level.value, "seed": cfg.seed, "labels": list(labels), "runs": runs,
    })
    write_json_atomic(out_dir / SUMMARY, summary)
    for tag, r in runs.items():
        log.info("%s %s-%s %s: %d train studies, test mAUC %s %s", dataset, summary["encoder"], protocol.value, tag,
                 r["n_train_studies"], r["mauc"], r["mauc_ci95"])
    return summary
