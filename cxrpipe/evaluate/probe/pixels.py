"""The ``pixels`` reference: logistic regression (scikit-learn) on downsampled raw pixels.

Why: an encoder whose linear probe does not beat a linear model on the raw pixels has learned nothing a
linear model could not read off the image itself. The reference sees exactly what the encoders' runs see:
the same labelled frontal images per split (:func:`cxrpipe.evaluate.probe.data.labelled_splits` with
``finetune``'s views, uncertain/blank policies, label fraction and seed), the same metrics and bootstrap
(:func:`cxrpipe.evaluate.stats.metrics.evaluate`) and the same predictions format, so ``compare`` pairs it with
any run on the same resampled test studies.

Features: uint8 images -> [0, 1] -> ``size x size`` (antialiased bilinear, the encoders' resize path
:func:`cxrpipe.encoder.to_unit_float`) -> flattened ``[N, size^2]`` -> standardised with the train split's
mean and std per pixel. One L2-regularised logistic regression per label on that label's valid training
entries (a label with one class in train predicts its training rate); the inverse regularisation ``C`` is
one value for all labels, chosen from ``c_grid`` by validate mAUC at ``finetune.select_level`` (as the
encoders' runs choose their step or epoch). It does not depend on a protocol: ``compare`` shows it beside every
protocol.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from cxrpipe.config import save_config, to_dict
from cxrpipe.evaluate.probe.data import LabelledImages, labelled_splits, split_counts
from cxrpipe.evaluate.stats.metrics import Predictions, evaluate, jsonable, macro_auroc, save_predictions
from cxrpipe.evaluate.stats.rules import StatsConfig
from cxrpipe.io import write_metrics_json

log = logging.getLogger(__name__)

PIXELS = "pixels"  # the run's name: metrics <name>.json, predictions <name>.npz, "encoder" in both


@dataclasses.dataclass(frozen=True)
class PixelsConfig:
    """Params section ``pixels``."""

    size: int = 32  # images downsampled to size x size before the regression (32 px: 1024 features)
    c_grid: tuple[float, ...] = (0.001, 0.01, 0.1, 1.0)  # inverse L2 strengths tried; the best on validate wins
    max_iter: int = 2000  # lbfgs iterations per fit


def pixel_features(prepared: str | Path, images: LabelledImages, size: int, batch: int = 512) -> np.ndarray:
    """Rows of ``images`` -> float32 ``[N, size * size]`` in [0, 1] (the encoders' resize path)."""
    import torch

    from cxrpipe.data.image_cache import ImageCache
    from cxrpipe.encoder import to_unit_float

    cache = ImageCache(Path(prepared) / "images.h5")
    out = []
    try:
        for start in range(0, len(images), batch):
            rows = images.rows[start:start + batch]
            x = torch.from_numpy(np.stack([np.asarray(cache[int(r)]) for r in rows]))  # uint8 [B, S, S]
            out.append(to_unit_float(x, (size, size)).reshape(len(rows), -1).numpy())  # [B, size^2]
    finally:
        cache.close()
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, size * size), np.float32)


def fit_predict(
    train_x: np.ndarray, train: LabelledImages, xs: list[np.ndarray], c: float, max_iter: int
) -> list[np.ndarray]:
    """One logistic regression per label at inverse strength ``c`` -> probabilities ``[N_k, 14]`` for each ``xs[k]``.

    On one BLAS thread: lbfgs on a problem this small (images x 1024 pixels) spends more time waking BLAS threads
    than they save (6x slower with two threads on 2 cores, docs/benchmarks.md), and with one thread the fit no
    longer depends on the machine's core count (a threaded BLAS sums in another order on another machine).
    """
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    outs = [np.zeros((x.shape[0], train.targets.shape[1]), np.float32) for x in xs]
    with threadpool_limits(limits=1, user_api="blas"):
        for j in range(train.targets.shape[1]):
            m = train.mask[:, j]
            y = train.targets[m, j] > 0.5
            if y.size == 0 or y.all() or not y.any():  # nothing to separate: the training rate (0.5 if none)
                rate = float(y.mean()) if y.size else 0.5
                for o in outs:
                    o[:, j] = rate
                continue
            clf = LogisticRegression(C=c, max_iter=max_iter)  # lbfgs, L2: deterministic
            clf.fit(train_x[m], y)
            for o, x in zip(outs, xs):
                o[:, j] = clf.predict_proba(x)[:, 1]
    return outs


def run_pixels(
    cfg: PixelsConfig,
    ft: Any,  # cxrpipe.evaluate.probe.finetune.FinetuneConfig: splits, policies, level, bootstrap
    prepared: str | Path,
    out_json: str | Path,
    predictions_out: str | Path | None = None,
    stats: StatsConfig = StatsConfig(),
) -> dict[str, Any]:
    """Fit on train, choose ``C`` on validate, score test (intervals and label rule: ``stats``); writes the
    metrics JSON (``<stem>.config.json`` beside it) and the test predictions (default
    ``<out_json dir>/../predictions/<stem>.npz``)."""
    from sklearn.preprocessing import StandardScaler

    from cxrpipe.evaluate.probe.finetune import _dataset_info

    t0 = time.time()
    prepared, out_json = Path(prepared), Path(out_json)
    if predictions_out is None:
        predictions_out = out_json.parent.parent / "predictions" / f"{out_json.stem}.npz"
    if not cfg.c_grid:
        raise ValueError("pixels.c_grid is empty: give at least one C")
    splits = labelled_splits(prepared, ft.views, ft.uncertain, ft.blank, ft.label_fraction, ft.seed)
    raw = {k: pixel_features(prepared, v, cfg.size) for k, v in splits.items()}
    scaler = StandardScaler().fit(raw["train"])
    x = {k: scaler.transform(v) for k, v in raw.items()}  # [N, size^2] each, train-standardised

    def preds(split: str, probs: np.ndarray) -> Predictions:
        d = splits[split]
        return Predictions(d.image_ids, d.study_ids, probs, d.targets, d.mask, d.labels, d.subject_ids)

    history, best = [], None
    for c in cfg.c_grid:
        val_p, test_p = fit_predict(x["train"], splits["train"], [x["validate"], x["test"]], c, cfg.max_iter)
        lv = preds("validate", val_p).at_level(ft.select_level)
        mauc, _ = macro_auroc(lv.targets, lv.probs, lv.mask)
        history.append({"c": c, "validate_mauc": mauc})
        log.info("pixels: C = %g, validate mAUC (%s) %.4f", c, ft.select_level.value, mauc)
        score = -math.inf if math.isnan(mauc) else round(mauc, 12)  # a tie keeps the smaller C (listed first)
        if best is None or score > best[0]:
            best = (score, c, val_p, test_p)
    assert best is not None
    _, c, val_p, test_p = best
    test_pred = preds("test", test_p)
    result = jsonable({
        "encoder": PIXELS,
        "protocol": "reference",
        "select_level": ft.select_level.value,
        "c": c,
        "validate_mauc": next(h["validate_mauc"] for h in history if h["c"] == c),
        "size": cfg.size,
        "label_fraction": ft.label_fraction,
        **split_counts(splits),
        **evaluate(test_pred, preds("validate", val_p), ft.n_bootstrap, ft.seed, stats.min_test_positives,
                   unit=stats.bootstrap_unit),
        "dataset": _dataset_info(prepared),
        "history": history,
    })
    # numbers only in the metrics file; provenance (dataset) and the names go to the config beside it
    save_config({"pixels": to_dict(cfg), "finetune": to_dict(ft), "stats": to_dict(stats), "prepared": str(prepared),
                 "dataset": result["dataset"]}, out_json.with_name(f"{out_json.stem}.config.json"))
    for level in ("image", "study"):
        result[level].pop("bootstrap_unit", None)  # a string: in the config beside
    write_metrics_json(out_json, {k: v for k, v in result.items() if k != "dataset"})
    save_predictions(test_pred, predictions_out, encoder=PIXELS, protocol="reference")
    s = result[ft.select_level.value]
    log.info("pixels (C = %g): test mAUC (%s) %s %s; %.1f s", c, ft.select_level.value, s["mauc"], s["mauc_ci95"],
             time.time() - t0)
    return result

