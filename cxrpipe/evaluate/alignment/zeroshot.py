"""Zero-shot classification through the frozen LLM (CheXzero's protocol), no labels used to fit anything.

For each of the 14 labels a positive and a negative prompt sentence (params ``zeroshot.prompts``) are
embedded once by stage one's code path (:mod:`cxrpipe.text.prompts`: same LLM, quantization, layer and
``embed.prompt`` suffix as the reports), pooled and projected by the exported text side, and compared with
each test image by the training loss's score (:mod:`cxrpipe.evaluate.alignment.scorer`). The label's probability
is the softmax over the (positive, negative) pair of scores, ``p = exp(s+) / (exp(s+) + exp(s-))``; a
study's probability is the mean over its images. Labels are read only to score: per-label AUROC, mAUC and the
5-label competition mAUC over the labels with both classes and ``stats.min_test_positives`` test positives (the
label rule of every report; the others are reported apart, ``low_positive``), all with bootstrap intervals over
test patients (``stats.bootstrap_unit``).

The ``mae`` variant's heads were never trained: its numbers are the chance reference (~0.5).

The same machinery scores a transfer dataset (``data/transfer/<name>``, written by ``transfer_prepare``) on its
own test split and its own label names (:func:`cxrpipe.data.manifest.read_label_names`): NIH ChestX-ray14's
official test list (14 findings, NIH's names: their prompts are ``zeroshot.extra_prompts``), CheXpert's
``valid.csv`` (the 5 competition findings: ``mauc5``). A label is looked up in ``prompts``, then in
``extra_prompts``; a dataset label with neither is a one-line error naming the param.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cxrpipe.evaluate.stats import bootstrap
from cxrpipe.evaluate.stats.metrics import EvalLevel, LevelData, Predictions, competition_columns, jsonable
from cxrpipe.evaluate.stats.rules import StatsConfig, counts
from cxrpipe.labels import CHEXPERT_LABELS, BlankPolicy, UncertainPolicy

log = logging.getLogger(__name__)

# In the style of the cleaned reports ("Findings: ..."); one (positive, negative) pair per label.
DEFAULT_PROMPTS: dict[str, tuple[str, str]] = {
    "Atelectasis": ("Findings: There is atelectasis.", "Findings: There is no atelectasis."),
    "Cardiomegaly": ("Findings: The heart is enlarged.", "Findings: Heart size is normal."),
    "Consolidation": ("Findings: There is a focal consolidation.", "Findings: No focal consolidation."),
    "Edema": ("Findings: There is pulmonary edema.", "Findings: No pulmonary edema."),
    "Enlarged Cardiomediastinum": ("Findings: The mediastinum is widened.", "Findings: Mediastinal contours are normal."),
    "Fracture": ("Findings: There is a rib fracture.", "Findings: No acute fracture."),
    "Lung Lesion": ("Findings: There is a pulmonary nodule.", "Findings: No pulmonary nodule or mass."),
    "Lung Opacity": ("Findings: There is an airspace opacity.", "Findings: There is no focal airspace opacity."),
    "No Finding": ("Findings: The lungs are clear. No acute cardiopulmonary process.",
                   "Findings: There is an acute cardiopulmonary abnormality."),
    "Pleural Effusion": ("Findings: There is a pleural effusion.", "Findings: No pleural effusion."),
    "Pleural Other": ("Findings: There is pleural thickening.", "Findings: No pleural thickening."),
    "Pneumonia": ("Findings: There is pneumonia.", "Findings: No signs of pneumonia."),
    "Pneumothorax": ("Findings: There is a pneumothorax.", "Findings: No pneumothorax."),
    "Support Devices": ("Findings: Support devices are in place.", "Findings: No tubes or lines."),
}

# Transfer datasets' label names that are not CheXpert's (NIH ChestX-ray14's spelling), same style.
DEFAULT_EXTRA_PROMPTS: dict[str, tuple[str, str]] = {
    "Effusion": ("Findings: There is a pleural effusion.", "Findings: No pleural effusion."),
    "Emphysema": ("Findings: The lungs are hyperinflated with emphysema.", "Findings: No emphysema."),
    "Fibrosis": ("Findings: There is pulmonary fibrosis.", "Findings: No pulmonary fibrosis."),
    "Hernia": ("Findings: There is a hiatal hernia.", "Findings: No hiatal hernia."),
    "Infiltration": ("Findings: There is a pulmonary infiltrate.", "Findings: No pulmonary infiltrate."),
    "Mass": ("Findings: There is a lung mass.", "Findings: No lung mass."),
    "Nodule": ("Findings: There is a pulmonary nodule.", "Findings: No pulmonary nodule."),
    "Pleural_Thickening": ("Findings: There is pleural thickening.", "Findings: No pleural thickening."),
}


@dataclasses.dataclass(frozen=True)
class ZeroShotConfig:
    """Params section ``zeroshot``."""

    encoders: tuple[str, ...] = ("mae", "multimodal")  # data/models/<name> (dvc.yaml's foreach reads this list)
    prompts: dict[str, tuple[str, str]] = dataclasses.field(default_factory=lambda: dict(DEFAULT_PROMPTS))
    # transfer datasets' label names beyond CheXpert's 14 (NIH's): label -> [positive, negative]
    extra_prompts: dict[str, tuple[str, str]] = dataclasses.field(default_factory=lambda: dict(DEFAULT_EXTRA_PROMPTS))
    level: EvalLevel = EvalLevel.STUDY  # unit scored: study (mean over its images) | image
    views: tuple[str, ...] = ("AP", "PA")  # test images used
    uncertain: UncertainPolicy = UncertainPolicy.IGNORE  # for SCORING only (as stage three scores)
    blank: BlankPolicy = BlankPolicy.ZEROS
    n_bootstrap: int = 1000  # replicates (test patients resampled: stats.bootstrap_unit)
    seed: int = 0  # the resampling stream
    batch_size: int = 128  # images (and texts) per forward
    device: str = "auto"  # auto | cpu | cuda

    def __post_init__(self) -> None:
        from cxrpipe.config import ConfigError

        missing = [n for n in CHEXPERT_LABELS if n not in self.prompts]
        unknown = [n for n in self.prompts if n not in CHEXPERT_LABELS]
        if missing or unknown:
            raise ConfigError(f"params 'zeroshot.prompts': unknown label name(s) {unknown}, missing {missing}; "
                              f"one [positive, negative] pair for each of {list(CHEXPERT_LABELS)}")
        twice = [n for n in self.extra_prompts if n in CHEXPERT_LABELS]
        if twice:
            raise ConfigError(f"params 'zeroshot.extra_prompts': {twice} are CheXpert labels; set them in zeroshot.prompts")
        for key, pairs in (("prompts", self.prompts), ("extra_prompts", self.extra_prompts)):
            bad = [n for n, pair in pairs.items() if len(pair) != 2 or any(not str(t).strip() for t in pair)]
            if bad:
                raise ConfigError(f"params 'zeroshot.{key}': {bad} need a non-empty [positive, negative] pair")


def prompt_labels(cfg: ZeroShotConfig) -> list[str]:
    """Every label with a prompt pair, in the prompt cache's order: CHEXPERT_LABELS, then ``extra_prompts``."""
    return [*CHEXPERT_LABELS, *cfg.extra_prompts]


def prompt_texts(cfg: ZeroShotConfig) -> list[str]:
    """``[pos_0, neg_0, pos_1, neg_1, ...]`` in :func:`prompt_labels` order: text ``2j`` / ``2j + 1`` of label ``j``
    (as written in params; :func:`cxrpipe.text.prompts.clean_prompts` cleans them as reports are)."""
    pairs = {**cfg.prompts, **cfg.extra_prompts}
    return [t for n in prompt_labels(cfg) for t in pairs[n]]


def prompt_ids(cfg: ZeroShotConfig, labels: Sequence[str], where: str | Path) -> list[int]:
    """The prompt cache ids ``[2 L]`` (pos, neg per label) of a dataset's ``labels``; ValueError naming the
    param when a label has no prompt pair."""
    order = prompt_labels(cfg)
    missing = [n for n in labels if n not in order]
    if missing:
        raise ValueError(f"{where}: label(s) {missing} have no prompt pair; add them to params "
                         "'zeroshot.extra_prompts' as label: [positive, negative]")
    return [2 * order.index(n) + k for n in labels for k in (0, 1)]


def pair_probabilities(scores: np.ndarray) -> np.ndarray:
    """Scores ``[N, 2 L]`` (columns pos_0, neg_0, pos_1, ...) -> softmax of each (pos, neg) pair ``[N, L]``."""
    s = scores.reshape(scores.shape[0], -1, 2)
    return 1.0 / (1.0 + np.exp(s[:, :, 1] - s[:, :, 0]))


def auroc_summary(data: LevelData, n_bootstrap: int, seed: int, labels: Sequence[str] = CHEXPERT_LABELS,
                  min_positives: int = 0) -> dict[str, Any]:
    """Per-label AUROC, mAUC and 5-label mAUC with bootstrap 95% intervals over ``data.groups`` (patients or
    studies). The means average the labels with both classes and >= ``min_positives`` test positives; a label
    with both classes and fewer positives keeps its AUROC and interval, marked ``low_positive``."""
    from cxrpipe.evaluate.stats.metrics import auroc_per_label, macro_auroc

    y, p, m = data.targets, data.probs, data.mask
    mauc, kept = macro_auroc(y, p, m, min_positives)
    auc_all = auroc_per_label(y, p, m)
    idx = np.flatnonzero(~np.isnan(auc_all))  # every label with an AUROC gets an interval
    reps = np.concatenate([bootstrap.auroc_matrix(y, p, m, idx, w)
                           for w in bootstrap.resample_weights(data.groups, n_bootstrap, seed)])  # [B, K]
    kept_cols = np.searchsorted(idx, kept)
    c5 = competition_columns(kept, labels)  # positions within kept (empty unless the 5 are among labels)
    ci = bootstrap.percentile_ci
    per_label = {}
    for j, name in enumerate(labels):
        k = int(np.searchsorted(idx, j))
        has_auc = k < idx.size and idx[k] == j
        per_label[name] = {
            "auroc": float(auc_all[j]) if has_auc else None,
            "auroc_ci95": list(ci(reps[:, k])) if has_auc else None,
            "in_mauc": bool(j in set(kept.tolist())),
            "low_positive": bool(has_auc and j not in set(kept.tolist())),
            "n_pos": int(((y[:, j] > 0.5) & m[:, j]).sum()),
            "n_neg": int(((y[:, j] <= 0.5) & m[:, j]).sum()),
        }
    return jsonable({
        "mauc": mauc,
        "mauc_ci95": list(ci(bootstrap.nanmean_rows(reps[:, kept_cols]))),
        "mauc5": float(auc_all[kept][c5].mean()) if c5.size else None,
        "mauc5_ci95": list(ci(bootstrap.nanmean_rows(reps[:, kept_cols[c5]]))) if c5.size else None,
        "labels_in_mauc": [labels[j] for j in kept],
        "labels_in_mauc5": [labels[j] for j in kept[c5]],
        "labels_low_positive": [n for n, e in per_label.items() if e["low_positive"]],
        "min_test_positives": int(min_positives),
        "n": int(y.shape[0]),
        **counts(data.study_ids, data.subject_ids),  # n_patients, n_studies
        "n_bootstrap": int(n_bootstrap),
        "per_label": per_label,
    })


def run_zeroshot(
    cfg: ZeroShotConfig,
    model_dir: str | Path,
    prepared: str | Path,
    prompt_cache: str | Path,
    expect: Any,
    out_json: str | Path,
    stats: StatsConfig = StatsConfig(),
) -> dict[str, Any]:
    """Score every test image of ``prepared`` against the prompts with the model in ``model_dir``.

    ``expect``: the prompt cache's :class:`~cxrpipe.text.cache.Fingerprint` the params imply (None = unchecked);
    ``stats``: the resampled unit and the label rule.
    """
    import torch

    from cxrpipe.data.image_cache import ImageCache
    from cxrpipe.data.manifest import read_label_names
    from cxrpipe.evaluate.alignment.scorer import load_aligned, score_matrix
    from cxrpipe.evaluate.probe.data import labelled_splits
    from cxrpipe.io import write_metrics_json
    from cxrpipe.text.cache import TextCache

    t0 = time.time()
    prepared = Path(prepared)
    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    texts = TextCache(prompt_cache, expect=expect, stage="zeroshot_prompts")
    labels = read_label_names(prepared)
    ids = prompt_ids(cfg, labels, prepared)
    test = labelled_splits(prepared, cfg.views, cfg.uncertain, cfg.blank)["test"]
    model = load_aligned(model_dir, device)
    scores = score_matrix(model, ImageCache(prepared / "images.h5"), test.rows, texts,
                          [texts.row_of(i) for i in ids], cfg.batch_size)  # [N, 2 L]
    probs = pair_probabilities(scores)  # [N, L]
    pred = Predictions(test.image_ids, test.study_ids, probs, test.targets, test.mask, subject_ids=test.subject_ids)
    summary = auroc_summary(pred.at_level(cfg.level, stats.bootstrap_unit), cfg.n_bootstrap, cfg.seed, labels,
                            min_positives=stats.min_test_positives)
    report = prepared / "prepare_report.json"  # what prepare / transfer_prepare wrote: dataset and split rule
    info = json.loads(report.read_text()) if report.exists() else {}
    variant = str(model.encoder_config.get("variant") or Path(model_dir).name)
    result = {
        "encoder": variant,
        "protocol": "zeroshot",
        "level": EvalLevel(cfg.level).value,
        "bootstrap_unit": stats.bootstrap_unit.value,
        "pool_kind": model.heads.pool_kind,
        **summary,
        "dataset": info.get("title") or info.get("dataset") or prepared.name,
        "split_rule": info.get("split"),
        "prompts": {n: list({**cfg.prompts, **cfg.extra_prompts}[n]) for n in labels},
        "seconds": round(time.time() - t0, 1),
    }
    write_metrics_json(out_json, result)
    log.info("zero-shot %s: mAUC %s %s, mAUC-5 %s %s (%s level, %s patients, %d studies)", variant, summary["mauc"],
             summary["mauc_ci95"], summary["mauc5"], summary["mauc5_ci95"], result["level"], summary["n_patients"],
             summary["n_studies"])
    return result
