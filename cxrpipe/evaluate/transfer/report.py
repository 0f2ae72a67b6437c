"""``transfer_compare``: the transfer runs side by side, paired delta candidate - reference per dataset,
protocol and label fraction, with the reference encoders (``random``) beside them.

Reads ``<runs>/<dataset>/<encoder>-<protocol>/summary.json`` and ``<tag>.npz`` (written by
:func:`cxrpipe.evaluate.transfer.run.run_transfer`) and writes

* ``transfer.json`` (DVC metrics, numbers only): ``{dataset: {protocol: {tag: {"label_fraction",
  "n_train_studies", "n_test_studies", "n_labels_in_mauc", <encoder>: {"mauc", "mauc_ci95", "mauc5",
  "mauc5_ci95"}, "delta_mauc", "delta_ci95", "p_value", ["delta_mauc5", "delta5_ci95", "p_value5"],
  "references": {"<encoder>_vs_<reference>": {"delta_mauc", "delta_ci95", "p_value"}}}}}}``; null where not
  estimable;
* ``transfer.config.json`` beside it: the names (title, label set, labels in each mAUC, labels not
  estimable), the level and the encoders;
* ``transfer.md``: one table per dataset and protocol.

Every mAUC and delta of one (dataset, protocol, fraction) comes from the SAME resampled test patients
(``stats.bootstrap_unit: patient``, the patients the predictions recorded, or for older runs the prepared
folder's images.csv; or studies) (:func:`cxrpipe.evaluate.stats.summaries.paired_columns`,
``transfer.n_bootstrap`` / ``transfer.seed``) and averages the same labels: those with >=
``stats.min_test_positives`` test positives and >= ``transfer.min_train_positives`` positive training studies
(the sample is the same for every encoder: checked by its hash).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np

from cxrpipe.evaluate.probe.finetune import Protocol
from cxrpipe.evaluate.probe.label_efficiency import SUMMARY, fraction_tag
from cxrpipe.evaluate.stats.metrics import LevelData, Predictions, competition_labels_of, jsonable, load_predictions
from cxrpipe.evaluate.stats.rules import BootstrapUnit, StatsConfig, counts
from cxrpipe.evaluate.stats.summaries import paired_columns
from cxrpipe.evaluate.transfer.run import TransferConfig
from cxrpipe.inputs import check_recorded_encoder, read_json

log = logging.getLogger(__name__)


def _title(name: str, fallback: str) -> str:
    """The registry's title of a dataset (``NIH ChestX-ray14``), else what the run recorded."""
    from cxrpipe.data import registry

    try:
        return registry.get(name).title
    except KeyError:
        return fallback


def _load(runs_dir: Path, dataset: str, protocol: str, encoders: tuple[str, ...]) -> dict[str, dict]:
    """encoder -> its summary.json, for the runs found."""
    out = {}
    for enc in encoders:
        path = runs_dir / dataset / f"{enc}-{protocol}" / SUMMARY
        if path.exists():
            stage = f"transfer@{dataset}-{enc}-{protocol}"
            out[enc] = read_json(path, f"transfer runs of {enc}", stage)
            check_recorded_encoder(path, out[enc].get("encoder"), enc, stage)  # not another encoder's runs
        else:
            log.warning("no %s: %s left out of %s %s", path, enc, dataset, protocol)
    return out


def _same_test_set(a: LevelData, b: LevelData, what: str) -> None:
    if not (a.labels == b.labels and np.array_equal(a.study_ids, b.study_ids)
            and np.array_equal(a.targets, b.targets) and np.array_equal(a.mask, b.mask)):
        raise ValueError(f"{what}: the runs were scored on different test studies or labels; a paired delta "
                         "needs the same test set")


def _level(pred: Predictions, cfg: TransferConfig, unit: BootstrapUnit,
           subject_of: dict[int, int] | None) -> LevelData:
    """The scored units of one run, grouped by ``unit``; predictions written before they recorded the patients
    take them from the prepared folder (``subject_of``: study id -> subject id)."""
    if pred.subject_ids is None and subject_of is not None:
        missing = sorted({int(s) for s in pred.study_ids} - set(subject_of))
        if missing:
            raise ValueError(f"{len(missing)} test studies have no patient in images.csv (e.g. {missing[:3]})")
        pred = dataclasses.replace(pred, subject_ids=np.array([subject_of[int(s)] for s in pred.study_ids]))
    return pred.at_level(cfg.level, unit)


def _subjects(prepared: Path) -> dict[int, int]:
    """study id -> subject id (the patient) of a prepared folder."""
    from cxrpipe.data.manifest import read_images

    return {r.study_id: r.subject_id for r in read_images(prepared)}


def _fraction(cfg: TransferConfig, runs_dir: Path, dataset: str, protocol: str, tag: str,
              summaries: dict[str, dict], subject_of: dict[int, int] | None,
              stats: StatsConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """(numbers, names) of one dataset x protocol x fraction; ``subject_of``: the patients of older runs."""
    recs = {e: s["runs"][tag] for e, s in summaries.items() if tag in s["runs"]}
    hashes = {r["train_studies_hash"] for r in recs.values()}
    if len(hashes) > 1:
        raise ValueError(f"{dataset} {protocol} {tag}: the encoders were trained on different studies")
    first = next(iter(recs.values()))
    nums: dict[str, Any] = {k: first[k] for k in ("label_fraction", "n_train_studies", "n_test_studies")}
    names: dict[str, Any] = {"labels_in_mauc": [], "labels_not_estimable": first.get("labels_not_estimable") or []}
    run = {e: r for e, r in recs.items() if r.get("estimable")}
    preds = {e: _level(load_predictions(runs_dir / dataset / f"{e}-{protocol}" / f"{tag}.npz", labels=None)[0], cfg,
                       stats.bootstrap_unit, subject_of) for e in run}
    labels = tuple(next(iter(summaries.values()))["labels"])
    c5 = [labels.index(n) for n in competition_labels_of(labels)]  # CheXpert's set only: else no mAUC-5 keys
    for e in recs:
        nums[e] = {"mauc": None, "mauc_ci95": [None, None],
                   **({"mauc5": None, "mauc5_ci95": [None, None]} if c5 else {})}
    null = {"delta_mauc": None, "delta_ci95": [None, None], "p_value": None}  # not estimable: null, never 0.5
    nums.update(null)
    if c5:
        nums.update(delta_mauc5=None, delta5_ci95=[None, None], p_value5=None)
    nums["references"] = {f"{e}_vs_{r}": dict(null) for r in cfg.references for e in (cfg.reference, cfg.candidate)
                          if r in recs and e in recs}
    if not preds:
        nums["n_labels_in_mauc"] = 0
        return nums, names
    base = next(iter(preds.values()))
    for e, p in preds.items():
        _same_test_set(base, p, f"{dataset} {protocol} {tag} {e}")
    nums.update({f"n_test_{k[2:]}": v for k, v in counts(base.study_ids, base.subject_ids).items()})
    if base.labels != labels:
        raise ValueError(f"{dataset} {protocol} {tag}: predictions hold labels {base.labels}, the runs {labels}")
    learned = np.array([first["train_positives"][n] >= (first.get("min_train_positives") or 0) for n in labels])
    cols = np.flatnonzero(learned)
    min_pos = stats.min_test_positives
    cols5 = np.array([j for j in c5 if learned[j]], dtype=np.int64)
    pairs = [(cfg.reference, cfg.candidate)] + [(r, e) for r in cfg.references for e in (cfg.reference, cfg.candidate)]
    for a, b in pairs:
        if a not in preds or b not in preds:
            continue
        d = paired_columns(preds[a], preds[b], cols, min_pos, cfg.n_bootstrap, cfg.seed)
        for enc, side in ((a, "a"), (b, "b")):  # every encoder's mAUC from the same replicates
            nums[enc].update(mauc=d[f"mauc_{side}"], mauc_ci95=d[f"mauc_{side}_ci95"])
        names["labels_in_mauc"] = [labels[j] for j in d["label_idx"]]
        delta = {k: d[k] for k in ("delta_mauc", "delta_ci95", "p_value", "n_bootstrap_valid")}
        d5 = paired_columns(preds[a], preds[b], cols5, min_pos, cfg.n_bootstrap, cfg.seed) if c5 else None
        for enc, side in ((a, "a"), (b, "b")):
            if d5 is not None:
                nums[enc].update(mauc5=d5[f"mauc_{side}"], mauc5_ci95=d5[f"mauc_{side}_ci95"])
        if (a, b) == (cfg.reference, cfg.candidate):
            nums.update(delta)
            if d5 is not None:
                nums.update(delta_mauc5=d5["delta_mauc"], delta5_ci95=d5["delta_ci95"], p_value5=d5["p_value"],
                            n_bootstrap_valid5=d5["n_bootstrap_valid"])
                names["labels_in_mauc5"] = [labels[j] for j in d5["label_idx"]]
        else:
            nums["references"][f"{b}_vs_{a}"] = delta
    for e, p in preds.items():  # an encoder in no pair (its partner's run missing): its own mAUC, same rules
        if nums[e]["mauc"] is None:
            d = paired_columns(p, p, cols, min_pos, cfg.n_bootstrap, cfg.seed)
            nums[e].update(mauc=d["mauc_a"], mauc_ci95=d["mauc_a_ci95"])
            names["labels_in_mauc"] = names["labels_in_mauc"] or [labels[j] for j in d["label_idx"]]
    nums["n_labels_in_mauc"] = len(names["labels_in_mauc"])
    return nums, names


def run_transfer_compare(
    cfg: TransferConfig, runs_dir: str | Path, out_json: str | Path, report_md: str | Path,
    prepared_root: str | Path | None = None, stats: StatsConfig = StatsConfig(),
) -> dict[str, Any]:
    """All datasets x protocols x fractions found under ``runs_dir``; writes the JSON pair and the markdown.

    ``prepared_root``: the folder of the prepared datasets (``data/transfer``), read for the test studies'
    patients when ``stats.bootstrap_unit`` is ``patient`` and a run's predictions did not record them."""
    from cxrpipe.evaluate.transfer.markdown import transfer_markdown
    from cxrpipe.io import write_json_atomic, write_text_atomic

    runs_dir, out_json = Path(runs_dir), Path(out_json)
    tags = [fraction_tag(f) for f in sorted(set(float(x) for x in cfg.label_fractions))]
    # only the runs transfer.encoders lists: a folder left by an encoder dropped from the list is stale
    encoders = tuple(e for e in dict.fromkeys((cfg.reference, cfg.candidate, *cfg.references, *cfg.encoders))
                     if e in cfg.encoders)
    result: dict[str, Any] = {}
    config: dict[str, Any] = {"level": cfg.level.value, "reference": cfg.reference, "candidate": cfg.candidate,
                              "references": list(cfg.references), "n_bootstrap": cfg.n_bootstrap, "datasets": {},
                              "bootstrap_unit": stats.bootstrap_unit.value,
                              "min_test_positives": stats.min_test_positives}
    patients = stats.bootstrap_unit is BootstrapUnit.PATIENT
    for dataset in cfg.datasets:
        folder = None if prepared_root is None else Path(prepared_root) / dataset
        subject_of = _subjects(folder) if patients and folder is not None and folder.exists() else None
        for protocol in (Protocol(p) for p in cfg.protocols):
            summaries = _load(runs_dir, dataset, protocol.value, encoders)
            if not summaries:
                continue
            first = next(iter(summaries.values()))
            info = {**first["dataset"], "title": _title(dataset, first["dataset"]["title"])}
            ds = config["datasets"].setdefault(dataset, {**info, "labels": first["labels"],
                                                         "competition_labels": list(competition_labels_of(first["labels"])),
                                                         "protocols": {}})
            for tag in tags:
                if not any(tag in s["runs"] for s in summaries.values()):
                    continue
                nums, names = _fraction(cfg, runs_dir, dataset, protocol.value, tag, summaries, subject_of, stats)
                result.setdefault(dataset, {}).setdefault(protocol.value, {})[tag] = nums
                ds["protocols"].setdefault(protocol.value, {})[tag] = names
    if not result:
        raise FileNotFoundError(f"no transfer runs of {list(cfg.datasets)} under {runs_dir}: they are made by the "
                                "`transfer` stage: run `dvc repro transfer`")
    result, config = jsonable(result), jsonable(config)
    write_json_atomic(out_json, result)
    write_json_atomic(out_json.with_name(f"{out_json.stem}.config.json"), config)
    write_text_atomic(Path(report_md), transfer_markdown(result, config, cfg))
    return result
