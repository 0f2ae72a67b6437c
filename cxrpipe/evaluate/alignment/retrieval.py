"""Retrieval on the test split, both directions, with bootstrap intervals and chance levels.

* image -> report: each test image queries the distinct test report texts; a hit at k when its own text is
  among the k best. Identical report texts are ONE candidate (the text cache stores them once).
* report -> image: each distinct test report text queries the test images; a hit at k when ANY image whose
  study has that text (a study's several images, or the images of studies with the identical text) is
  among the k best.

Scores are the training loss's (:func:`cxrpipe.evaluate.alignment.scorer.score_matrix`); rank = number of
candidates scoring strictly higher than the best positive (ties count in the query's favour). Chance level
of a query with ``m`` positives among ``C`` candidates: ``1 - C(C - m, k) / C(C, k)``, averaged over queries.
Intervals: 95% percentile bootstrap over test patients (``stats.bootstrap_unit``; or studies). Image -> report
queries are grouped by their patient; report -> image queries (distinct texts) by the patients whose studies
have them: texts that share a patient are drawn together (connected components, :func:`text_groups`; a text
several patients share joins their groups). The ``mae`` variant's heads were never trained, so its recall is the
measured chance reference.

Label-level retrieval (the "MIMIC 5x200" reading, where exact-pair recall understates template-like reports): a
candidate is *relevant* to a query when their studies share a positive finding (label value 1.0; "No Finding"
counts as a finding; a text's findings are the union over the test studies that have it). Reported per direction,
over the queries with at least one positive finding:

* ``hit@k``: share of queries with a relevant candidate among the k best, beside ``hit_chance@k`` (the chance
  formula above with ``m`` = the query's relevant candidates);
* ``precision@k`` (P@K): mean share of the k best that are relevant (ranked by score, ties in candidate order),
  beside ``precision_prior``: the same share over ALL candidates, the P@K a random ranking expects.

Both get the same patient-level intervals as recall.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cxrpipe.evaluate.stats import bootstrap
from cxrpipe.evaluate.stats.metrics import jsonable
from cxrpipe.evaluate.stats.rules import BootstrapUnit, StatsConfig

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RetrievalConfig:
    """Params section ``retrieval``."""

    encoders: tuple[str, ...] = ("mae", "multimodal")  # data/models/<name> (dvc.yaml's foreach reads this list)
    ks: tuple[int, ...] = (1, 5, 10)  # recall@k
    views: tuple[str, ...] = ("AP", "PA")  # test images used
    n_bootstrap: int = 1000  # replicates (test patients resampled: stats.bootstrap_unit)
    seed: int = 0  # the resampling stream
    batch_size: int = 128  # images (and texts) per forward
    device: str = "auto"  # auto | cpu | cuda


def hits_at_k(scores: np.ndarray, positive: np.ndarray, ks: Sequence[int]) -> np.ndarray:
    """scores ``[Q, C]`` (higher = better), positive ``[Q, C]`` bool (at least one per row) -> hits ``[Q, K]``."""
    if not positive.any(axis=1).all():
        raise ValueError("every query needs at least one positive candidate")
    best = np.where(positive, scores, -np.inf).max(axis=1)  # [Q] the best-scoring positive
    rank = (scores > best[:, None]).sum(axis=1)  # [Q], 0 = first
    return rank[:, None] < np.asarray(ks)[None, :]


def chance_at_k(n_positive: np.ndarray, n_candidates: int, ks: Sequence[int]) -> np.ndarray:
    """Expected recall@k of a random ranking: mean over queries of ``1 - C(C - m, k) / C(C, k)`` -> ``[K]``."""
    out = []
    for k in ks:
        k = min(k, n_candidates)
        p = [1.0 - math.comb(n_candidates - int(m), k) / math.comb(n_candidates, k) for m in n_positive]
        out.append(float(np.mean(p)))
    return np.array(out)


def recall_summary(hits: np.ndarray, groups: np.ndarray, chance: np.ndarray, ks: Sequence[int],
                   n_bootstrap: int, seed: int) -> dict[str, Any]:
    """recall@k with bootstrap intervals (``groups [Q]``: each query's resampled unit) beside chance."""
    h = hits.astype(np.float64)
    reps = []
    for w in bootstrap.resample_weights(groups, n_bootstrap, seed):
        reps.append((w @ h) / w.sum(axis=1, keepdims=True))  # [b, K]
    r = np.concatenate(reps)
    out: dict[str, Any] = {"n_queries": int(h.shape[0])}
    for i, k in enumerate(ks):
        out[f"recall@{k}"] = float(h[:, i].mean())
        out[f"recall@{k}_ci95"] = list(bootstrap.percentile_ci(r[:, i]))
        out[f"chance@{k}"] = float(chance[i])
    return out


def relevant_matrix(query_findings: np.ndarray, candidate_findings: np.ndarray) -> np.ndarray:
    """Findings ``[Q, L]`` and ``[C, L]`` (bool positives) -> relevant ``[Q, C]``: the two share a finding."""
    return (query_findings.astype(np.int64) @ candidate_findings.T.astype(np.int64)) > 0


def label_precision(scores: np.ndarray, relevant: np.ndarray, ks: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """scores / relevant ``[Q, C]`` -> (hit ``[Q, K]`` bool: a relevant one among the k best, precision ``[Q, K]``:
    share of the k best that are relevant; k beyond C counts the C candidates)."""
    order = np.argsort(-scores, axis=1, kind="stable")  # [Q, C] best first
    ranked = np.take_along_axis(relevant, order, axis=1).astype(np.float64)  # [Q, C]
    top = np.cumsum(ranked, axis=1)  # [Q, C] relevant among the first j + 1
    idx = [min(k, scores.shape[1]) - 1 for k in ks]
    return top[:, idx] > 0, top[:, idx] / (np.asarray(idx) + 1)[None, :]


def label_summary(scores: np.ndarray, relevant: np.ndarray, groups: np.ndarray, ks: Sequence[int],
                  n_bootstrap: int, seed: int) -> dict[str, Any]:
    """Hit@k and P@k with intervals over ``groups [Q]``, beside their chance and prior, on the queries with a
    positive finding (``relevant [Q, C]`` rows of a query without one are all False and dropped)."""
    keep = relevant.any(axis=1)  # [Q]
    if not keep.any():
        return {"n_label_queries": 0}
    s, rel, g = scores[keep], relevant[keep], bootstrap.group_index(groups[keep])[1]
    hit, prec = label_precision(s, rel, ks)
    n_rel = rel.sum(axis=1)
    hit_part = recall_summary(hit, g, chance_at_k(n_rel, s.shape[1], ks), ks, n_bootstrap, seed)
    prec_part = recall_summary(prec, g, np.zeros(len(ks)), ks, n_bootstrap, seed)  # its "chance": the prior
    out: dict[str, Any] = {"n_label_queries": int(keep.sum()), "precision_prior": float(rel.mean(axis=1).mean())}
    for k in ks:
        out[f"hit@{k}"], out[f"hit@{k}_ci95"] = hit_part[f"recall@{k}"], hit_part[f"recall@{k}_ci95"]
        out[f"hit_chance@{k}"] = hit_part[f"chance@{k}"]
        out[f"precision@{k}"], out[f"precision@{k}_ci95"] = prec_part[f"recall@{k}"], prec_part[f"recall@{k}_ci95"]
    return out


def text_groups(image_text: np.ndarray, image_group: np.ndarray, n_texts: int) -> np.ndarray:
    """Each text's resampled group ``[M]`` (0..G-1): texts whose images share a group (a patient) are one group,
    transitively (union-find over ``image_text [N]`` / ``image_group [N]``)."""
    parent = np.arange(n_texts)

    def find(t: int) -> int:
        while parent[t] != t:
            parent[t] = parent[parent[t]]
            t = parent[t]
        return t

    first: dict[int, int] = {}  # group -> a text of it
    for t, g in zip(image_text.tolist(), image_group.tolist()):
        root, other = find(t), find(first.setdefault(g, t))
        parent[max(root, other)] = min(root, other)
    return bootstrap.group_index(np.array([find(t) for t in range(n_texts)]))[1]


def retrieval_both_ways(scores: np.ndarray, image_text: np.ndarray, image_study: np.ndarray,
                        ks: Sequence[int], n_bootstrap: int, seed: int, image_subject: np.ndarray | None = None,
                        unit: BootstrapUnit | str = BootstrapUnit.STUDY,
                        image_findings: np.ndarray | None = None) -> dict[str, Any]:
    """scores ``[N images, M texts]``; ``image_text [N]`` each image's text column (duplicates share one);
    ``image_study [N]`` / ``image_subject [N]`` each image's study and patient; ``unit``: what is resampled;
    ``image_findings [N, L]`` (bool, optional) each image's study's positive findings: adds Hit@k / P@k
    -> ``{"image_to_report": ..., "report_to_image": ...}`` (each with ``n_groups``, the resampled groups)."""
    n, m = scores.shape
    positive = np.zeros((n, m), dtype=bool)
    positive[np.arange(n), image_text] = True  # [N, M]
    groups = bootstrap.unit_groups(image_study, image_subject, unit)  # [N]
    i2r = recall_summary(hits_at_k(scores, positive, ks), groups, chance_at_k(np.ones(n), m, ks),
                         ks, n_bootstrap, seed)
    if not positive.any(axis=0).all():
        raise ValueError("a text column has no image")
    t_groups = text_groups(image_text, groups, m)
    r2i = recall_summary(hits_at_k(scores.T, positive.T, ks), t_groups, chance_at_k(positive.sum(0), n, ks),
                         ks, n_bootstrap, seed)
    if image_findings is not None:
        text_findings = (positive.T.astype(np.int64) @ image_findings.astype(np.int64)) > 0  # [M, L] union
        i2r.update(label_summary(scores, relevant_matrix(image_findings, text_findings), groups, ks, n_bootstrap, seed))
        r2i.update(label_summary(scores.T, relevant_matrix(text_findings, image_findings), t_groups, ks,
                                 n_bootstrap, seed))
    return {"image_to_report": {**i2r, "n_candidates": m, "n_groups": int(groups.max()) + 1},
            "report_to_image": {**r2i, "n_candidates": n, "n_groups": int(t_groups.max()) + 1}}


def run_retrieval(cfg: RetrievalConfig, model_dir: str | Path, prepared: str | Path, text_cache: str | Path,
                  expect: Any, out_json: str | Path, stats: StatsConfig = StatsConfig()) -> dict[str, Any]:
    """Both directions on the test split's frontal images whose study has a report in the text cache; the
    intervals resample ``stats.bootstrap_unit``."""
    import torch

    from cxrpipe.data.image_cache import ImageCache
    from cxrpipe.data.manifest import read_images, read_label_names, read_studies
    from cxrpipe.evaluate.alignment.scorer import load_aligned, score_matrix
    from cxrpipe.io import write_metrics_json
    from cxrpipe.text.cache import TextCache

    t0 = time.time()
    prepared = Path(prepared)
    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    text = TextCache(text_cache, expect=expect)
    views = {v.upper() for v in cfg.views}
    images = [r for r in read_images(prepared) if r.split == "test" and (not views or r.view.upper() in views)
              and r.study_id in text]
    if not images:
        raise ValueError(f"{prepared}: no test images with a report in {text_cache}")
    text_rows = sorted({text.row_of(r.study_id) for r in images})
    column = {t: j for j, t in enumerate(text_rows)}
    findings = {st.study_id: np.asarray(st.labels) == 1.0 if st.has_labels else np.zeros(len(st.labels), bool)
                for st in read_studies(prepared)}  # study -> [L] positive findings
    model = load_aligned(model_dir, device)
    scores = score_matrix(model, ImageCache(prepared / "images.h5"), [r.row for r in images], text, text_rows,
                          cfg.batch_size)
    result = retrieval_both_ways(scores, np.array([column[text.row_of(r.study_id)] for r in images]),
                                 np.array([r.study_id for r in images]), cfg.ks, cfg.n_bootstrap, cfg.seed,
                                 np.array([r.subject_id for r in images]), stats.bootstrap_unit,
                                 np.stack([findings[r.study_id] for r in images]))
    variant = str(model.encoder_config.get("variant") or Path(model_dir).name)
    result = jsonable({"encoder": variant, "split": "test", "n_images": len(images), "n_texts": len(text_rows),
                       "n_patients": len({r.subject_id for r in images}), "n_studies": len({r.study_id for r in images}),
                       "bootstrap_unit": stats.bootstrap_unit.value, "pool_kind": model.heads.pool_kind,
                       "finding_labels": list(read_label_names(prepared)),
                       **result, "seconds": round(time.time() - t0, 1)})
    write_metrics_json(out_json, result)
    for way in ("image_to_report", "report_to_image"):
        r = result[way]
        log.info("%s %s: %s", variant, way, ", ".join(
            f"R@{k} {r[f'recall@{k}']:.3f} (chance {r[f'chance@{k}']:.3f})" for k in cfg.ks))
        if r.get("n_label_queries"):
            log.info("%s %s: %s (prior %.3f)", variant, way, ", ".join(
                f"Hit@{k} {r[f'hit@{k}']:.3f}, P@{k} {r[f'precision@{k}']:.3f}" for k in cfg.ks), r["precision_prior"])
    return result
