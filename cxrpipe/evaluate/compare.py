"""``compare``: did the text help? multimodal vs mae per protocol, paired on the same test patients.

Reads ``<metrics>/<encoder>-<protocol>.json`` and ``<predictions>/<encoder>-<protocol>.npz`` (written by
:func:`cxrpipe.evaluate.probe.finetune.run_finetune`) and writes:

* ``comparison.json``  ``{"<protocol>": {"mae": {"mauc": .}, "multimodal": {"mauc": .}, "delta_mauc": .,
  "delta_ci95": [lo, hi], "p_value": .}}`` (the DESIGN.md schema) plus, beside those keys, intervals,
  accuracies, counts and the level;
* ``comparison.md``    the tables a reviewer reads, with the report's published numbers quoted for
  reference and marked "different dataset" unless the test set is the real MIMIC-CXR;
* ROC curves per label as PNG (``<plots>/<label>.png``).

The delta is ``multimodal - mae``; its interval and p-value come from
:func:`cxrpipe.evaluate.stats.bootstrap.paired_bootstrap_mauc` (the SAME resampled patients for both encoders,
``stats.bootstrap_unit``; interval and p from the same replicates, so "interval excludes 0" <=> "p < 0.05").
Every mean over labels follows ``stats.min_test_positives`` (the 5-label delta too).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from cxrpipe.evaluate.stats.bootstrap import paired_bootstrap_mauc
from cxrpipe.evaluate.stats.caveats import caveat_section
from cxrpipe.evaluate.stats.metrics import EvalLevel, Predictions, jsonable
from cxrpipe.evaluate.stats.rules import StatsConfig, counts, label_rule_sentence, unit_sentence
from cxrpipe.evaluate.stats.summaries import (
    CONTINUED,
    ENCODER_NAMES,
    PIXELS,
    RANDOM,
    SHUFFLED,
    fmt_ci,
    fmt_p,
    paired_columns,
    paired_runner,
    references_markdown,
    references_summary,
    seeds_markdown,
    seeds_summary,
)
from cxrpipe.inputs import load_run_predictions, read_json, run_stage
from cxrpipe.io import write_json_atomic, write_text_atomic
from cxrpipe.labels import CHEXPERT_LABELS, COMPETITION_LABELS

log = logging.getLogger(__name__)

ENCODERS = ENCODER_NAMES  # reference first: delta = multimodal - mae
PROTOCOLS = ("fc", "linear", "finetune")  # fc: the report's FC head; linear: the field's linear probe
MIMIC_SOURCES = ("mimic-cxr-jpg", "mimic-cxr")

# "Multi-Modal Integration In Medical Imaging", MIMIC-CXR, frozen encoder + FC head, no intervals given.
PUBLISHED = {"mae": {"mauc": 0.6801, "accuracy": 0.8512}, "multimodal": {"mauc": 0.7235, "accuracy": 0.8765}}


@dataclasses.dataclass(frozen=True)
class CompareConfig:
    n_bootstrap: int = 1000  # paired replicates (test patients resampled, the same for both encoders)
    seed: int = 0  # the resampling stream
    level: EvalLevel = EvalLevel.STUDY  # unit scored: study (mean over its images) | image
    extra_seeds: tuple[int, ...] = ()  # training-seed repeats beside the default run: runs <name>-seed<k>


def _check_same_test_set(a: Predictions, b: Predictions, what: str) -> None:
    """A paired comparison needs the same images with the same targets and masks, in the same order."""
    same = (
        np.array_equal(a.image_ids, b.image_ids)
        and np.array_equal(a.study_ids, b.study_ids)
        and np.array_equal(a.targets, b.targets)
        and np.array_equal(a.mask, b.mask)
    )
    if not same:
        raise ValueError(
            f"{what}: the runs compared were scored on different test images or labels (different prepared "
            "data, views or label policies?); a paired comparison needs the same test set"
        )


def _load_runs(
    metrics_dir: Path, predictions_dir: Path, names: list[str] | None = None
) -> dict[str, tuple[dict, Predictions]]:
    """Run name -> (metrics, test predictions) of the runs found (default: the encoders x protocols)."""
    if names is None:
        names = [f"{encoder}-{protocol}" for protocol in PROTOCOLS for encoder in ENCODERS]
    runs = {}
    for name in names:
        mpath, ppath = metrics_dir / f"{name}.json", predictions_dir / f"{name}.npz"
        if mpath.exists() and ppath.exists():
            m = read_json(mpath, f"metrics of {name}", run_stage(name))
            cpath = metrics_dir / f"{name}.config.json"  # provenance lives beside the numbers
            if "dataset" not in m and cpath.exists():
                m["dataset"] = read_json(cpath, f"config of {name}", run_stage(name)).get("dataset", {})
            runs[name] = (m, load_run_predictions(ppath, name)[0])  # refused if another encoder made it
        else:
            log.warning("%s: no %s", name, mpath if not mpath.exists() else ppath)
    return runs


def _default_seed(metrics_dir: Path) -> Any:
    """The default run's training seed (its encoder's pretraining seed), from the finetune config saved."""
    for protocol in PROTOCOLS:
        path = metrics_dir / f"mae-{protocol}.config.json"
        if path.exists():
            seed = json.loads(path.read_text()).get("encoder_seed")
            if seed is not None:
                return seed
    return "default"


def _seed_predictions(predictions_dir: Path, seeds: tuple[int, ...]) -> dict[str, Predictions]:
    """The seed repeats' test predictions: ``<encoder>-<protocol>-seed<k>`` for the encoders, ``random`` and
    ``shuffled``."""
    out = {}
    for k in seeds:
        for protocol in PROTOCOLS:
            for encoder in (*ENCODERS, RANDOM, SHUFFLED, CONTINUED):
                name = f"{encoder}-{protocol}-seed{k}"
                path = predictions_dir / f"{name}.npz"
                if path.exists():
                    out[name] = load_run_predictions(path, name)[0]
                elif encoder != CONTINUED:  # the two-step flow's control: only where it ran
                    log.warning("seed %d: no %s", k, path)
    return out


def _main_delta(protocol: str, runs: dict[str, tuple[dict, Predictions]], cfg: CompareConfig,
                stats: StatsConfig) -> dict[str, Any]:
    """One protocol's multimodal - mae: mAUC of each, the paired delta, the 5-label delta, accuracies, counts."""
    level = EvalLevel(cfg.level)
    names = [f"{e}-{protocol}" for e in ENCODERS]
    (ma, pa), (mb, pb) = runs[names[0]], runs[names[1]]
    _check_same_test_set(pa, pb, protocol)
    a, b = pa.at_level(level, stats.bootstrap_unit), pb.at_level(level, stats.bootstrap_unit)
    paired = paired_bootstrap_mauc(a.targets, a.mask, a.probs, b.probs, a.groups, cfg.n_bootstrap, cfg.seed,
                                   min_positives=stats.min_test_positives)

    def side(m: dict, mauc: float, ci: tuple[float, float]) -> dict[str, Any]:
        blk = m[level.value]
        return {
            "mauc": mauc,
            "mauc_ci95": list(ci),
            "accuracy": blk["accuracy"],
            "all_negative_accuracy": blk["all_negative_accuracy"],
            "macro_f1": blk["macro_f1"],
            "mean_auprc": blk["mean_auprc"],
        }

    c5 = [CHEXPERT_LABELS.index(n) for n in COMPETITION_LABELS]  # the same label rule, paired the same way
    d5 = paired_columns(a, b, np.array(c5), stats.min_test_positives, cfg.n_bootstrap, cfg.seed)
    out = {
        ENCODERS[0]: {**side(ma, paired.mauc_a, paired.mauc_a_ci95), "mauc5": d5["mauc_a"],
                      "mauc5_ci95": d5["mauc_a_ci95"]},
        ENCODERS[1]: {**side(mb, paired.mauc_b, paired.mauc_b_ci95), "mauc5": d5["mauc_b"],
                      "mauc5_ci95": d5["mauc_b_ci95"]},
        "delta_mauc": paired.delta,
        "delta_ci95": list(paired.ci95),
        "p_value": paired.p_value,
        "n_bootstrap": paired.n_bootstrap,
        "n_bootstrap_valid": paired.n_valid,
        "bootstrap_unit": stats.bootstrap_unit.value,  # what the replicates resampled (patient / study)
        "n_test_images": int(len(pa.image_ids)),
        **{f"n_test_{k[2:]}": v for k, v in counts(a.study_ids, a.subject_ids).items()},  # patients, studies
        "labels_in_mauc": [CHEXPERT_LABELS[j] for j in paired.label_idx],
        "delta_mauc5": d5["delta_mauc"], "delta5_ci95": d5["delta_ci95"], "p_value5": d5["p_value"],
        "n_bootstrap_valid5": d5["n_bootstrap_valid"],
        "labels_in_mauc5": [CHEXPERT_LABELS[j] for j in d5["label_idx"]],
    }
    log.info("%s: mae %.4f, multimodal %.4f, delta %+.4f [%+.4f, %+.4f], p = %.3f (%s level, %d resamples of %ss)",
             protocol, paired.mauc_a, paired.mauc_b, paired.delta, *paired.ci95, paired.p_value, level.value,
             cfg.n_bootstrap, stats.bootstrap_unit.value)
    return out


def run_compare(
    cfg: CompareConfig,
    metrics_dir: str | Path,
    out_json: str | Path,
    predictions_dir: str | Path | None = None,
    report_md: str | Path | None = None,
    plots_dir: str | Path | None = None,
    stats: StatsConfig = StatsConfig(),
) -> dict[str, Any]:
    """Paired comparison per protocol found (both encoders present); writes JSON, markdown and ROC PNGs.

    ``predictions_dir`` defaults to ``<metrics_dir>/../predictions``; ``stats``: the resampled unit and the label
    rule. Raises FileNotFoundError when no protocol has both runs.
    """
    from cxrpipe.evaluate.stats.plots import plot_roc_per_label

    metrics_dir, out_json = Path(metrics_dir), Path(out_json)
    predictions_dir = Path(predictions_dir) if predictions_dir else metrics_dir.parent / "predictions"
    level = EvalLevel(cfg.level)
    references = [f"{ref}-{protocol}" for ref in (RANDOM, SHUFFLED) for protocol in PROTOCOLS] + [PIXELS]
    optional = [f"{CONTINUED}-{protocol}" for protocol in PROTOCOLS]  # the two-step flow's control, when it ran
    runs = _load_runs(metrics_dir, predictions_dir, [f"{e}-{p}" for p in PROTOCOLS for e in ENCODERS] + references
                      + [n for n in optional if (predictions_dir / f"{n}.npz").exists()])
    result: dict[str, Any] = {}
    for protocol in PROTOCOLS:
        if all(f"{e}-{protocol}" in runs for e in ENCODERS):
            result[protocol] = _main_delta(protocol, runs, cfg, stats)
    if not result:
        raise FileNotFoundError(
            f"no protocol has both mae and multimodal runs in {metrics_dir} (+ predictions in {predictions_dir}): "
            "they are made by the `finetune` stage: run `dvc repro finetune`"
        )
    # further sections, each from the test predictions, paired on the same resampled patients
    preds = {name: pred for name, (_, pred) in runs.items()}
    seed_preds = _seed_predictions(predictions_dir, tuple(cfg.extra_seeds))
    base = next(iter(preds.values()))
    for name, pred in {**preds, **seed_preds}.items():
        _check_same_test_set(base, pred, name)
    paired = paired_runner(level, cfg.n_bootstrap, cfg.seed, stats.min_test_positives, stats.bootstrap_unit)
    protocols = tuple(p for p in PROTOCOLS if p in result)
    references_block = references_summary(preds, protocols, paired)
    if references_block:
        result["references"] = references_block
    seeds = [(_default_seed(metrics_dir), "")] + [(k, f"-seed{k}") for k in cfg.extra_seeds]
    result["seeds"] = seeds_summary(seeds, {**preds, **seed_preds}, protocols, paired)
    result = jsonable(result)
    write_json_atomic(out_json, result)
    if plots_dir is not None:
        roc_runs = {}
        for name, (_, pred) in runs.items():
            lv = pred.at_level(level)
            roc_runs[name] = (lv.targets, lv.probs, lv.mask)
        plot_roc_per_label(roc_runs, plots_dir, title_suffix=f" ({level.value} level, test)",
                           min_positives=stats.min_test_positives)
    if report_md is not None:
        write_text_atomic(Path(report_md), comparison_markdown(result, {n: m for n, (m, _) in runs.items()}, cfg,
                                                               plots_dir, stats))
    return result


# ---------------------------------------------------------------- markdown


def _f(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _verdict(lo: float | None, hi: float | None) -> str:
    if lo is None or hi is None:
        return "undefined"
    if lo > 0:
        return "multimodal better (interval above 0)"
    if hi < 0:
        return "multimodal worse (interval below 0)"
    return "no detectable difference (interval contains 0)"


def _dataset_line(metrics: dict[str, dict]) -> tuple[str, bool]:
    """(description of the test data, whether it is the report's dataset: real MIMIC-CXR, not the demo)."""
    ds = next(iter(metrics.values())).get("dataset", {}) or {}
    source, demo = ds.get("source"), ds.get("demo")
    same = source in MIMIC_SOURCES and demo is False
    what = f"source `{source}`" if source else "source unknown"
    if demo:
        what += ", the embedded **synthetic demo** (not real radiographs)"
    return what, same


PROTOCOL_NAMES = {
    "fc": "fc: frozen encoder, fully connected head (the report's baseline)",
    "linear": "linear: frozen encoder, BatchNorm + one linear layer (MAE's / MGCA's linear probe)",
    "finetune": "finetune: all weights (LP-FT from the fc probe)",
}


def method_paragraph(n_bootstrap: int, stats: StatsConfig, n_patients: int | None, n_studies: int) -> str:
    """How every interval and p of comparison.md is computed (the unit, the counts, the p / interval link)."""
    return (
        f"Intervals: 95% percentile bootstrap, {unit_sentence(stats.bootstrap_unit, n_bootstrap, n_patients, n_studies)}. "
        "Every delta is **paired**: both runs are scored on the same resampled test set in every replicate. "
        "Interval and p come from the same replicates: the interval is the 2.5th-97.5th percentile of the "
        "replicated deltas (order statistics), and p is twice the share of replicates on the far side of 0, "
        f"so **the interval excludes 0 exactly when p < 0.05**; p has a resolution of 2/B, and `p < {2 / n_bootstrap:.2g}` "
        "means no replicate crossed 0. A printed end of `+0.000` or `-0.000` lies on that side of 0. "
        f"{label_rule_sentence(stats.min_test_positives)} The intervals cover test-set sampling only, not the "
        "spread between training seeds (see \"Training seeds\" below; `compare.extra_seeds` adds repeats)."
    )


def comparison_markdown(
    result: dict[str, Any], metrics: dict[str, dict], cfg: CompareConfig, plots_dir: str | Path | None,
    stats: StatsConfig = StatsConfig(),
) -> str:
    """The reviewer-facing report: summary, accuracy beside all-negative, per-label AUROC, published numbers."""
    level = EvalLevel(cfg.level).value
    protocols = {p: result[p] for p in PROTOCOLS if p in result}
    first = next(iter(protocols.values()))
    dataset, same = _dataset_line(metrics)
    n_pat = first.get("n_test_patients")
    lines = [
        "# Did the text help? multimodal vs mae",
        "",
        f"Test set: {'?' if n_pat is None else n_pat} patients, {first['n_test_studies']} studies "
        f"({first['n_test_images']} images), {dataset}. Scored at the **{level} level**"
        + (" (mean probability over a study's images)" if level == "study" else "")
        + ". Model selection on `validate`, numbers on `test`. Protocols: "
        + "; ".join(PROTOCOL_NAMES.get(p, p) for p in protocols) + ".",
        "",
        method_paragraph(cfg.n_bootstrap, stats, n_pat, first["n_test_studies"]),
        "",
        *caveat_section(result, metrics, level),
        *_mauc_markdown(protocols, first["labels_in_mauc"], stats.min_test_positives),
        *references_markdown(result),
        *seeds_markdown(result),
        *_accuracy_markdown(metrics, level),
        *_per_label_markdown(metrics, level),
        *_published_markdown(result, dataset, same),
    ]
    if plots_dir is not None:
        lines += ["", f"ROC curves per label: `{Path(plots_dir)}/<label>.png` (a colour per encoder, a line style "
                  "per protocol)."]
    return "\n".join(lines) + "\n"


def _mauc_markdown(protocols: dict[str, dict], kept: list[str], min_positives: int) -> list[str]:
    """The mAUC and 5-label mAUC tables, multimodal vs mae per protocol, and which labels are in the mean."""
    lines = [
        "## mAUC",
        "",
        "| protocol | mae mAUC [95% CI] | multimodal mAUC [95% CI] | delta mAUC [95% CI] | p | reading |",
        "|---|---|---|---|---|---|",
    ]
    for protocol, r in protocols.items():
        lo, hi = r["delta_ci95"]
        lines.append(
            f"| {protocol} | {fmt_ci(r['mae']['mauc'], r['mae']['mauc_ci95'])} | "
            f"{fmt_ci(r['multimodal']['mauc'], r['multimodal']['mauc_ci95'])} | "
            f"{fmt_ci(r['delta_mauc'], r['delta_ci95'], sign=True)} | "
            f"{fmt_p(r['p_value'], r.get('n_bootstrap_valid'))} | {_verdict(lo, hi)} |"
        )
    five = next(iter(protocols.values())).get("labels_in_mauc5") or []
    lines += [
        "",
        "5-label CheXpert competition mAUC (Atelectasis, Cardiomegaly, Consolidation, Edema, Pleural Effusion; "
        "what CheXpert, GLoRIA and MGCA report), paired the same way and under the same label rule"
        + (f" (here: {', '.join(five)})" if five else " (here: none qualifies)") + ":",
        "",
        "| protocol | mae mAUC-5 [95% CI] | multimodal mAUC-5 [95% CI] | delta mAUC-5 [95% CI] | p |",
        "|---|---|---|---|---|",
    ]
    for protocol, r in protocols.items():
        lines.append(
            f"| {protocol} | {fmt_ci(r['mae'].get('mauc5'), r['mae'].get('mauc5_ci95'))} | "
            f"{fmt_ci(r['multimodal'].get('mauc5'), r['multimodal'].get('mauc5_ci95'))} | "
            f"{fmt_ci(r.get('delta_mauc5'), r.get('delta5_ci95'), sign=True)} | "
            f"{fmt_p(r.get('p_value5'), r.get('n_bootstrap_valid5'))} |"
        )
    left = [n for n in CHEXPERT_LABELS if n not in kept]
    return lines + [
        "",
        f"mAUC is the macro mean over the {len(kept)} labels with both classes among the valid test entries"
        f" and at least {min_positives} test positives (`stats.min_test_positives`)"
        + (f"; left out (one class only, or too few positives: see Caveats): {', '.join(left)}." if left else "."),
        "",
    ]


def _accuracy_markdown(metrics: dict[str, dict], level: str) -> list[str]:
    lines = [
        "## Accuracy beside the all-negative classifier",
        "",
        "Accuracy at 0.5 over every valid (unit, label) entry; the all-negative accuracy predicts 0 on exactly "
        "the same entries. F1 uses per-label thresholds tuned on `validate`.",
        "",
        "| run | accuracy [95% CI] | all-negative accuracy | macro F1 [95% CI] | mean AUPRC [95% CI] |",
        "|---|---|---|---|---|",
    ]
    for name, m in metrics.items():
        b = m[level]
        lines.append(
            f"| {name} | {fmt_ci(b['accuracy'], b['accuracy_ci95'])} | {_f(b['all_negative_accuracy'])} | "
            f"{fmt_ci(b['macro_f1'], b['macro_f1_ci95'])} | {fmt_ci(b['mean_auprc'], b['mean_auprc_ci95'])} |"
        )
    return lines


def _per_label_markdown(metrics: dict[str, dict], level: str) -> list[str]:
    names = list(metrics)
    lines = [
        "",
        f"## Per-label AUROC [95% CI] (test, {level} level)",
        "",
        "| label | positives / valid | " + " | ".join(names) + " |",
        "|---|---|" + "---|" * len(names),
    ]
    per_label = {name: {pl["label"]: pl for pl in metrics[name][level]["per_label"]} for name in names}
    for label in CHEXPERT_LABELS:
        cells = []
        for name in names:
            pl = per_label[name][label]
            cells.append(fmt_ci(pl["auroc"], pl["auroc_ci95"]) + (" †" if pl.get("low_positive") else "")
                         if pl["in_mauc"] or pl.get("low_positive") else "n/a (one class)")
        pl0 = per_label[names[0]][label]
        lines.append(f"| {label} | {pl0['n_pos']} / {pl0['n_pos'] + pl0['n_neg']} | " + " | ".join(cells) + " |")
    if any(pl.get("low_positive") for pl in per_label[names[0]].values()):
        lines += ["", "† too few test positives (`stats.min_test_positives`): reported apart, not in mAUC."]
    return lines


def _published_markdown(result: dict[str, Any], dataset: str, same: bool) -> list[str]:
    """The report's numbers beside this run's fc probes, with whether the datasets are comparable."""
    lines = [
        "",
        "## The report's published numbers, for reference only",
        "",
        "| | mAUC | accuracy | all-negative accuracy |",
        "|---|---|---|---|",
        f"| report: MAE baseline (frozen encoder, FC head), MIMIC-CXR | {PUBLISHED['mae']['mauc']:.4f} | "
        f"{PUBLISHED['mae']['accuracy']:.4f} | ~0.87 (not reported) |",
        f"| report: multimodal, MIMIC-CXR | {PUBLISHED['multimodal']['mauc']:.4f} | "
        f"{PUBLISHED['multimodal']['accuracy']:.4f} | ~0.87 (not reported) |",
    ]
    if "fc" in result:  # the report's protocol: a frozen encoder with FC layers on top
        r = result["fc"]
        for enc in ("mae", "multimodal"):
            lines.append(
                f"| this run: {enc}-fc | {fmt_ci(r[enc]['mauc'], r[enc]['mauc_ci95'])} | "
                f"{_f(r[enc]['accuracy'])} | {_f(r[enc]['all_negative_accuracy'])} |"
            )
    lines += [""]
    if same:
        lines.append(
            "Same dataset family (MIMIC-CXR), but the report does not state its split, label policy or "
            "views, so its numbers are quoted, not reproduced."
        )
    else:
        lines.append(
            f"**Different dataset**: the report's numbers are on MIMIC-CXR; this run is on {dataset}. "
            "They are quoted for reference and are not comparable with the numbers above."
        )
    return lines + [
        "The report gave no intervals and no test, and its accuracies are at or below what predicting "
        "\"negative\" for every label scores on MIMIC-CXR (~0.87, mean positive rate 12.8%).",
    ]


