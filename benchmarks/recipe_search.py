"""Choose the pretraining recipe on VALIDATE (issue 19, part 3): every recipe, every seed, the same budget.

A recipe is a name and overrides of the ``pretrain`` section (dotted keys) in a YAML grid file::

    base: {}
    infonce: {loss.kind: infonce}
    last_token: {pool.text: last, loss.kind: infonce}

For each (recipe, seed) this trains the recipe's variants (``--variants``, default ``multimodal``; the
two-step flow's step 2 starts from a ``mae`` trained once per seed and step-1 settings, reused across
recipes), then scores the exported encoder on the VALIDATE split only (test is never read):

* ``probe``: logistic regression on the frozen pooled features (train -> validate, one C chosen by
  3-fold cross-validation on TRAIN), image-level mAUC over the labels with >= 5 validate positives; the
  ``pixels`` row is the same probe on 32 px raw pixels (the reference the encoder should reach);
* ``zeroshot``: each label's (positive, negative) prompt pair (the prompt cache of ``zeroshot_prompts``),
  image-level mAUC;
* ``retrieval``: image -> report over the validate studies' distinct reports: exact-pair R@1/5/10 with its
  chance, and label precision P@10 (the share of the top 10 reports whose study shares a positive finding
  with the query's, "No Finding" counting as one) beside its prior (the same share over all reports);
* the pretraining's own train-probe retrieval (fit vs generalisation) and clipped share.

It computes with the kernels of the params' ``cpu.isa``, as the pipeline's stages do; each row records them
(``kernels``) and the numeric stack's versions (``versions``).

Each run appends one JSON line to ``--log``; ``--summary`` prints the mean (sd) per recipe and variant.

    python benchmarks/recipe_search.py --grid benchmarks/recipes/demo.yaml --seeds 0 1 2
    python benchmarks/recipe_search.py --summary data/sweep/recipes.jsonl
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import logging
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import yaml

KS = (1, 5, 10)


def _set(d: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    for k in keys[:-1]:
        d = d.setdefault(k, {})
    d[keys[-1]] = value


def _key(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


# ------------------------------------------------------------------------------------------- scoring


MIN_POSITIVES = 5  # validate positives (and negatives) a label needs to count in a validate mAUC


def label_aucs(y: np.ndarray, s: np.ndarray, m: np.ndarray, names: list[str] | None = None,
               min_pos: int = MIN_POSITIVES) -> dict[Any, float]:
    """AUROC of every label with >= ``min_pos`` positives and negatives among its scored rows, keyed by its
    name in ``names`` (default: its column)."""
    from sklearn.metrics import roc_auc_score

    out = {}
    for j in range(y.shape[1]):
        ok = m[:, j]
        yy = y[ok, j]
        if yy.sum() >= min_pos and (1 - yy).sum() >= min_pos:
            out[names[j] if names else j] = float(roc_auc_score(yy, s[ok, j]))
    return out


def _mauc(y: np.ndarray, s: np.ndarray, m: np.ndarray, min_pos: int = MIN_POSITIVES) -> float:
    return float(np.mean(list(label_aucs(y, s, m, min_pos=min_pos).values())))


def _probe(xtr, ytr, mtr, xva, yva, mva) -> float:
    """Per-label logistic regression (C by 3-fold CV on train), validate mAUC."""
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.preprocessing import StandardScaler

    sc = StandardScaler().fit(xtr)
    xtr, xva = sc.transform(xtr), sc.transform(xva)
    s = np.zeros(yva.shape)
    for j in range(ytr.shape[1]):
        ok = mtr[:, j]
        yy = ytr[ok, j]
        if yy.sum() < 3 or (1 - yy).sum() < 3:
            continue
        clf = LogisticRegressionCV(Cs=[0.001, 0.01, 0.1, 1.0], cv=3, max_iter=3000, scoring="roc_auc").fit(xtr[ok], yy)
        s[:, j] = clf.decision_function(xva)
    return _mauc(yva, s, mva)


def _features(model_dir: Path, cache, rows) -> np.ndarray:
    import torch

    from cxrpipe.encoder import load_encoder, normalize_uint8

    enc, cfg = load_encoder(model_dir)
    enc.eval()
    size = cfg["kwargs"]["img_size"]
    out = []
    with torch.inference_mode():
        for a in range(0, len(rows), 256):
            x = torch.from_numpy(np.stack([np.asarray(cache[int(r)]) for r in rows[a : a + 256]]))
            out.append(enc(normalize_uint8(x, float(cfg["pixel_mean"]), float(cfg["pixel_std"]), (size, size))).numpy())
    return np.concatenate(out)


def _pixels(cache, rows, size: int = 32) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.stack([np.asarray(cache[int(r)]) for r in rows])).float()[:, None] / 255
    return F.interpolate(x, size=(size, size), mode="area").reshape(len(rows), -1).numpy()


def _retrieval(scores: np.ndarray, img_text: np.ndarray, img_labels: np.ndarray, text_labels: np.ndarray) -> dict:
    """scores ``[N, T]`` over distinct texts; img_text ``[N]`` the true text column; labels: positives (bool)."""
    order = np.argsort(-scores, axis=1)
    rank = (order == img_text[:, None]).argmax(axis=1)
    out = {f"R@{k}": float((rank < k).mean()) for k in KS}
    out.update({f"chance@{k}": min(1.0, k / scores.shape[1]) for k in KS})
    relevant = (img_labels.astype(int) @ text_labels.T.astype(int)) > 0  # [N, T] shares a positive finding
    top = np.take_along_axis(relevant, order[:, :10], axis=1)
    out["P@10"] = float(top.mean())
    out["P@10_prior"] = float(relevant.mean())
    return out


def evaluate_validate(model_dir: Path, prepared: Path, text_cache: Path, prompt_cache: Path | None,
                      prompts: dict | None, split_cache: dict) -> dict[str, Any]:
    """Probe, zero-shot and retrieval of one exported variant on VALIDATE (train only to fit the probe)."""
    from cxrpipe.data.image_cache import ImageCache
    from cxrpipe.evaluate.alignment.scorer import load_aligned, score_matrix
    from cxrpipe.evaluate.alignment.zeroshot import pair_probabilities
    from cxrpipe.labels import CHEXPERT_LABELS
    from cxrpipe.text.cache import TextCache

    cache = ImageCache(prepared / "images.h5")
    tr, va = split_cache["train"], split_cache["validate"]
    out: dict[str, Any] = {}
    f_tr, f_va = _features(model_dir, cache, tr.rows), _features(model_dir, cache, va.rows)
    out["probe"] = _probe(f_tr, tr.targets, tr.mask, f_va, va.targets, va.mask)
    model = load_aligned(model_dir)
    if prompt_cache is not None:
        pc = TextCache(prompt_cache)
        n = 2 * len(CHEXPERT_LABELS)
        probs = pair_probabilities(score_matrix(model, cache, va.rows, pc, [pc.row_of(i) for i in range(n)]))
        out["zeroshot"] = _mauc(va.targets, probs, va.mask)
    text = TextCache(text_cache)
    rows_of = {}
    for sid in va.study_ids:
        rows_of.setdefault(text.row_of(int(sid)), int(sid))
    cols = sorted(rows_of)
    col_of = {r: k for k, r in enumerate(cols)}
    scores = score_matrix(model, cache, va.rows, text, cols)
    pos = (va.targets > 0.5) & va.mask
    study_pos = {}
    for sid, p in zip(va.study_ids, pos):
        study_pos[int(sid)] = p
    text_labels = np.stack([study_pos[rows_of[r]] for r in cols])
    out["retrieval"] = _retrieval(scores, np.array([col_of[text.row_of(int(s))] for s in va.study_ids]), pos, text_labels)
    return out


# --------------------------------------------------------------------------------------------- runs


def train(raw: dict, pre: dict, variant: str, seed: int, work: Path, prepared: Path, text_cache: Path,
          init_from: Path | None = None, sentence_cache: Path | None = None) -> tuple[Path, dict]:
    """Train one variant into ``work/<hash>`` (reused when it exists with the same settings); the sentence
    cache is read only by a recipe with ``loss.sentence_weight`` > 0."""
    from cxrpipe.config import build, section
    from cxrpipe.data.manifest import read_studies
    from cxrpipe.data.prepare import DataConfig
    from cxrpipe.pretrain.train import PretrainConfig, run_pretrain
    from cxrpipe.text.embed import EmbedConfig, expected_fingerprint
    from cxrpipe.text.sentences import sentence_source

    pre = dict(copy.deepcopy(pre), seed=seed)
    folder = work / f"{variant}-{_key([pre, variant, str(init_from)])}"
    metrics = folder / "metrics.json"
    if metrics.exists():
        return folder, json.loads(metrics.read_text())
    cfg = build(PretrainConfig, pre, where="pretrain")
    expect = expected_fingerprint(section(raw, "embed", EmbedConfig), [s.text for s in read_studies(prepared)],
                                  section(raw, "data", DataConfig).sections, strict_identity=False)
    t0 = time.time()
    sentences = sentence_source(raw, prepared, sentence_cache) if cfg.loss.sentence_weight > 0 else None
    m = run_pretrain(cfg, variant, prepared, text_cache, folder / "model", expect=expect,
                     metrics_path=folder / "pretrain.json", plots_dir=folder / "plots", init_from=init_from,
                     sentences=sentences)
    m["wall_seconds"] = round(time.time() - t0, 1)
    metrics.write_text(json.dumps(m))
    return folder, m


def run_grid(args) -> None:
    from cxrpipe.config import load_params
    from cxrpipe.cpu import kernels_in_use
    from cxrpipe.evaluate.probe.data import labelled_splits
    from cxrpipe.labels import BlankPolicy, UncertainPolicy
    from cxrpipe.versions import package_versions

    raw = load_params(args.params)
    grid = yaml.safe_load(args.grid.read_text())
    splits = labelled_splits(args.prepared, ["AP", "PA"], UncertainPolicy.IGNORE, BlankPolicy.ZEROS)
    args.log.parent.mkdir(parents=True, exist_ok=True)
    stack = {"versions": package_versions(), "kernels": kernels_in_use()}  # the same for every row of this run
    done = set()
    if args.log.exists():
        done = {(r["recipe"], r["seed"], r["variant"]) for r in map(json.loads, args.log.read_text().splitlines())}
    for seed in args.seeds:
        for name, overrides in grid.items():
            if args.only and name not in args.only:
                continue
            pre = copy.deepcopy(raw["pretrain"])
            for k, v in (overrides or {}).items():
                _set(pre, k, v)
            init = None
            if pre.get("flow") == "two_step":  # step 1: the mae of these step-1 settings and seed, once
                step1 = {k: v for k, v in pre.items() if k not in ("align", "loss", "pool", "flow")}
                step1 = {**copy.deepcopy(raw["pretrain"]), **step1, "flow": "two_step"}
                folder, _ = train(raw, step1, "mae", seed, args.work, args.prepared, args.text_cache)
                init = folder / "model"
            for variant in args.variants:
                if (name, seed, variant) in done:
                    continue
                folder, m = train(raw, pre, variant, seed, args.work, args.prepared, args.text_cache, init,
                                  args.sentence_cache)
                ev = evaluate_validate(folder / "model", args.prepared, args.text_cache, args.prompt_cache,
                                       raw.get("zeroshot", {}).get("prompts"), splits)
                row = {"recipe": name, "seed": seed, "variant": variant, "overrides": overrides,
                       "embed_layer": raw["embed"]["layer"], **ev,
                       "train_probe_R@10": m.get("retrieval_train", {}).get("recall@10"),
                       "validate_R@10_pretrain": m.get("retrieval", {}).get("recall@10"),
                       "clipped_share": m.get("clipped_share"), "seconds": m.get("wall_seconds"),
                       **stack}
                with args.log.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                print(json.dumps({k: row[k] for k in ("recipe", "seed", "variant", "probe")} |
                                 {"zeroshot": row.get("zeroshot"), "R@10": row["retrieval"]["R@10"],
                                  "P@10": row["retrieval"]["P@10"], "s": row["seconds"]}), flush=True)


def pixels_reference(args) -> None:
    from cxrpipe.data.image_cache import ImageCache
    from cxrpipe.evaluate.probe.data import labelled_splits
    from cxrpipe.labels import BlankPolicy, UncertainPolicy

    s = labelled_splits(args.prepared, ["AP", "PA"], UncertainPolicy.IGNORE, BlankPolicy.ZEROS)
    cache = ImageCache(args.prepared / "images.h5")
    tr, va = s["train"], s["validate"]
    print(json.dumps({"pixels32_probe_validate": _probe(_pixels(cache, tr.rows), tr.targets, tr.mask,
                                                         _pixels(cache, va.rows), va.targets, va.mask)}))


def summary(path: Path) -> None:
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["recipe"], r["variant"]), []).append(r)
    cols = ("probe", "zeroshot", "R@10", "P@10", "train_probe_R@10", "seconds")
    print("| recipe | variant | seeds | " + " | ".join(cols) + " |")
    print("|---|---|---|" + "---|" * len(cols))
    for (name, variant), rs in groups.items():
        cells = []
        for c in cols:
            v = [r["retrieval"][c] if c in ("R@10", "P@10") else r.get(c) for r in rs]
            v = [x for x in v if x is not None]
            cells.append(f"{np.mean(v):.3f} ({np.std(v):.3f})" if v else "")
        print(f"| {name} | {variant} | {len(rs)} | " + " | ".join(cells) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--prepared", type=Path, default=Path("data/prepared"))
    ap.add_argument("--text-cache", type=Path, default=Path("data/cache/text.h5"))
    ap.add_argument("--prompt-cache", type=Path, default=Path("data/cache/prompts.h5"))
    ap.add_argument("--sentence-cache", type=Path, default=Path("data/cache/sentences.h5"),
                    help="`cxrpipe embed-sentences`'s cache, for recipes with loss.sentence_weight > 0")
    ap.add_argument("--grid", type=Path)
    ap.add_argument("--only", nargs="*", default=None, help="recipes of the grid to run (default all)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--variants", nargs="+", default=["multimodal"])
    ap.add_argument("--work", type=Path, default=Path("data/sweep/runs"))
    ap.add_argument("--log", type=Path, default=Path("data/sweep/recipes.jsonl"))
    ap.add_argument("--summary", type=Path, help="print the table of a log and exit")
    ap.add_argument("--pixels", action="store_true", help="print the pixels reference and exit")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    warnings.filterwarnings("ignore", category=FutureWarning)  # scikit-learn's LogisticRegressionCV notices
    if args.summary:
        return summary(args.summary)
    from cxrpipe.cpu import apply_params_cpu_isa

    apply_params_cpu_isa(args.params)  # the kernels the pipeline's stages use (cpu.isa), before torch loads
    if args.pixels:
        return pixels_reference(args)
    if args.prompt_cache is not None and not args.prompt_cache.exists():
        args.prompt_cache = None
    run_grid(args)


if __name__ == "__main__":
    main()
