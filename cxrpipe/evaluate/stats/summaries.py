"""``compare``'s further sections: the references (``random``, ``pixels``) and the training-seed repeats.

Every delta here is paired exactly as compare's main delta: :func:`cxrpipe.evaluate.stats.bootstrap.paired_bootstrap_mauc`
with ``compare``'s ``n_bootstrap`` and ``seed`` and ``stats.bootstrap_unit``, so every comparison of one test set
resamples the very same patients in every replicate. The markdown cells of every report are formatted here
(:func:`fmt_ci`, :func:`fmt_p`): one convention, three decimals for mAUC, deltas and p.

* references, per protocol: ``random`` (the pretraining encoder at its init, probed by that protocol) and
  ``pixels`` (logistic regression on raw pixels; protocol-independent, shown beside both) with their mAUC and
  95% interval, and the paired deltas ``mae - random``, ``multimodal - random``, ``mae - pixels``,
  ``multimodal - pixels``.
* seeds, per protocol: for each training seed (the default run, then ``compare.extra_seeds``) the paired
  ``multimodal - mae`` delta with interval and p (and ``mae - random`` where that seed's random run exists),
  and over seeds the mean delta, its standard deviation (n - 1) and its min-max. The per-seed intervals
  cover test sampling; the spread over seeds covers training randomness, which they do not. With two seeds
  or more, ``seed_mean``: each pair's seed-mean delta with the interval of that mean (every seed's replicate
  ``b`` is the same resampled test set, so the mean is taken replicate by replicate).
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable

import numpy as np

from cxrpipe.evaluate.stats.bootstrap import paired_bootstrap_mauc, seed_mean_delta
from cxrpipe.evaluate.stats.metrics import EvalLevel, LevelData, Predictions
from cxrpipe.evaluate.stats.rules import BootstrapUnit

log = logging.getLogger(__name__)

RANDOM, PIXELS, SHUFFLED, CONTINUED = "random", "pixels", "shuffled", "continued"
ENCODER_NAMES = ("mae", "multimodal")  # the compared pair, reference first (compare.ENCODERS)
# (name in comparison.json, candidate, reference): delta = candidate - reference
REFERENCE_DELTAS = (
    ("mae_vs_random", "mae", RANDOM),
    ("multimodal_vs_random", "multimodal", RANDOM),
    ("mae_vs_pixels", "mae", PIXELS),
    ("multimodal_vs_pixels", "multimodal", PIXELS),
    # the control: the same pretraining with each image paired with another study's report (issue 19)
    ("multimodal_vs_shuffled", "multimodal", SHUFFLED),
    # the two-step flow's controls (pretrain.flow two_step): mae continued for the same steps without the text,
    # and what the continuation alone gained over the frozen mae (the seed report's literal baseline)
    ("multimodal_vs_continued", "multimodal", CONTINUED),
    ("continued_vs_mae", CONTINUED, "mae"),
)

Paired = Callable[[Predictions, Predictions], Any]  # (reference a, candidate b) -> PairedDelta of b - a


def paired_runner(level: EvalLevel, n_bootstrap: int, seed: int, min_positives: int = 0,
                  unit: BootstrapUnit | str = BootstrapUnit.STUDY) -> Paired:
    """``f(a, b)`` -> the paired bootstrap of ``mAUC(b) - mAUC(a)`` at ``level`` (a and b: same test set),
    resampling ``unit``; labels with fewer than ``min_positives`` test positives are left out, as in compare's
    main delta."""

    def run(a: Predictions, b: Predictions) -> Any:
        la, lb = a.at_level(level, unit), b.at_level(level, unit)
        return paired_bootstrap_mauc(la.targets, la.mask, la.probs, lb.probs, la.groups, n_bootstrap, seed,
                                     min_positives=min_positives)

    return run


def paired_columns(a: LevelData, b: LevelData, cols: np.ndarray, min_positives: int, n_bootstrap: int,
                   seed: int) -> dict[str, Any]:
    """The paired delta ``b - a`` over the label columns ``cols`` (each side's mAUC from the same replicates);
    nulls when no label there has both classes and ``min_positives`` test positives. ``label_idx``: the labels
    averaged, as indices of the full label set."""
    cols = np.asarray(cols, dtype=np.int64)
    try:
        if cols.size == 0:
            raise ValueError("no label columns")
        d = paired_bootstrap_mauc(a.targets[:, cols], a.mask[:, cols], a.probs[:, cols], b.probs[:, cols], a.groups,
                                  n_bootstrap, seed, min_positives=min_positives)
    except ValueError:  # no label with both classes and enough test positives
        return {"delta_mauc": None, "delta_ci95": [None, None], "p_value": None, "n_bootstrap_valid": 0,
                "mauc_a": None, "mauc_b": None, "mauc_a_ci95": [None, None], "mauc_b_ci95": [None, None],
                "label_idx": []}
    return {**delta_entry(d), "mauc_a": d.mauc_a, "mauc_b": d.mauc_b, "mauc_a_ci95": list(d.mauc_a_ci95),
            "mauc_b_ci95": list(d.mauc_b_ci95), "label_idx": [int(cols[k]) for k in d.label_idx]}


SEED_MEAN_MAIN = "multimodal_vs_mae"  # the key of compare's main delta in a seed summary's "seed_mean"


def seed_mean_entry(deltas: list[Any]) -> dict[str, Any]:
    """:func:`~cxrpipe.evaluate.stats.bootstrap.seed_mean_delta` of one pair's per-seed deltas, as stored."""
    m = seed_mean_delta(deltas)
    return {**delta_entry(m), "n_seeds": m.n_seeds}


def delta_entry(d: Any) -> dict[str, Any]:
    """A :class:`~cxrpipe.evaluate.stats.bootstrap.PairedDelta` (or ``SeedMeanDelta``) as the reports store it."""
    return {"delta_mauc": d.delta, "delta_ci95": list(d.ci95), "p_value": d.p_value, "n_bootstrap_valid": d.n_valid}


def references_summary(
    preds: dict[str, Predictions], protocols: tuple[str, ...], paired: Paired
) -> dict[str, Any]:
    """``{"pixels": {mauc, ci}, "<protocol>": {"random": {..}, "pixels": {..}, "mae_vs_random": {delta..}, ..}}``.

    ``preds``: run name (``mae-fc``, ``random-finetune``, ``pixels``, ...) -> test predictions; pairs
    whose runs are missing are left out. Empty dict when neither reference ran.
    """
    out: dict[str, Any] = {}
    for protocol in protocols:
        runs = {e: preds.get(f"{e}-{protocol}") for e in (*ENCODER_NAMES, RANDOM, SHUFFLED, CONTINUED)}
        runs[PIXELS] = preds.get(PIXELS)
        block: dict[str, Any] = {}
        for key, cand, ref in REFERENCE_DELTAS:
            a, b = runs[ref], runs[cand]
            if a is None or b is None:
                continue
            d = paired(a, b)
            if ref not in ENCODER_NAMES:  # the reference's own score (mae's and multimodal's are compare's)
                block.setdefault(ref, {"mauc": d.mauc_a, "mauc_ci95": list(d.mauc_a_ci95)})
            block[key] = delta_entry(d)
            log.info("%s: %s - %s %+.4f [%+.4f, %+.4f], p = %.3f", protocol, cand, ref, d.delta, *d.ci95, d.p_value)
        if block:
            out[protocol] = block
    pixels = next((b[PIXELS] for b in out.values() if PIXELS in b), None)
    if pixels is not None:
        out = {PIXELS: pixels, **out}
    return out


def spread(values: list[float]) -> dict[str, Any]:
    """Mean, standard deviation (n - 1; None for one value), min and max of per-seed values."""
    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], dtype=np.float64)
    if v.size == 0:
        return {"n": 0, "mean": None, "sd": None, "min": None, "max": None}
    return {
        "n": int(v.size),
        "mean": float(v.mean()),
        "sd": float(v.std(ddof=1)) if v.size > 1 else None,
        "min": float(v.min()),
        "max": float(v.max()),
    }


def seeds_summary(
    seeds: list[tuple[Any, str]], preds: dict[str, Predictions], protocols: tuple[str, ...], paired: Paired
) -> dict[str, Any]:
    """Per protocol: each seed's paired deltas, and their spread over seeds.

    ``seeds``: (seed label, run-name suffix) in order, e.g. ``[(0, ""), (1, "-seed1")]``: seed ``k``'s runs are
    ``mae-<protocol><suffix>``, ``multimodal-<protocol><suffix>``, ``random-<protocol><suffix>``. A seed
    missing the mae or multimodal run of a protocol is left out of that protocol (warned).
    """
    out: dict[str, Any] = {"seeds": [s for s, _ in seeds]}
    for protocol in protocols:
        per_seed = []
        drawn: dict[str, list[Any]] = {}  # pair -> each seed's PairedDelta, for the seed-mean intervals
        for label, suffix in seeds:
            mae, mm, rnd, shf, cont = (preds.get(f"{e}-{protocol}{suffix}")
                                       for e in (*ENCODER_NAMES, RANDOM, SHUFFLED, CONTINUED))
            if mae is None or mm is None:
                log.warning("seed %s: no mae/multimodal %s runs; left out of the seed summary", label, protocol)
                continue
            d = paired(mae, mm)
            drawn.setdefault(SEED_MEAN_MAIN, []).append(d)
            row: dict[str, Any] = {"seed": label, "mae": {"mauc": d.mauc_a}, "multimodal": {"mauc": d.mauc_b},
                                   **delta_entry(d)}
            for key, ref, a, b in (("mae_vs_random", RANDOM, rnd, mae), ("multimodal_vs_shuffled", SHUFFLED, shf, mm),
                                   ("multimodal_vs_continued", CONTINUED, cont, mm)):
                if a is not None:
                    c = paired(a, b)
                    drawn.setdefault(key, []).append(c)
                    row[ref] = {"mauc": c.mauc_a}
                    row[key] = delta_entry(c)
            per_seed.append(row)
        if not per_seed:
            continue
        block: dict[str, Any] = {
            "per_seed": per_seed,
            "delta_mauc": spread([r["delta_mauc"] for r in per_seed]),
            "mae": spread([r["mae"]["mauc"] for r in per_seed]),
            "multimodal": spread([r["multimodal"]["mauc"] for r in per_seed]),
        }
        if all("mae_vs_random" in r for r in per_seed):
            block["mae_vs_random"] = spread([r["mae_vs_random"]["delta_mauc"] for r in per_seed])
            block[RANDOM] = spread([r[RANDOM]["mauc"] for r in per_seed])
        if all("multimodal_vs_shuffled" in r for r in per_seed):
            block["multimodal_vs_shuffled"] = spread([r["multimodal_vs_shuffled"]["delta_mauc"] for r in per_seed])
            block[SHUFFLED] = spread([r[SHUFFLED]["mauc"] for r in per_seed])
        if all("multimodal_vs_continued" in r for r in per_seed):
            block["multimodal_vs_continued"] = spread([r["multimodal_vs_continued"]["delta_mauc"] for r in per_seed])
            block[CONTINUED] = spread([r[CONTINUED]["mauc"] for r in per_seed])
        if len(per_seed) > 1:  # the seed-mean interval of every pair that every seed has
            block["seed_mean"] = {key: seed_mean_entry(ds) for key, ds in drawn.items() if len(ds) == len(per_seed)}
        out[protocol] = block
    return out


# ---------------------------------------------------------------- markdown


ALPHA = 0.05  # the level every "interval excludes 0" / "p < 0.05" reading uses (95% intervals)


def _fmt_num(x: float, digits: int, sign: bool) -> str:
    """``+0.038``; with ``sign`` a value that rounds to zero keeps its sign (``+0.000``, ``-0.000``) and only an
    exact 0 prints unsigned, so an interval's printed ends say on which side of 0 they lie."""
    if sign and x == 0:
        return format(0.0, f".{digits}f")
    return format(x, f"+.{digits}f" if sign else f".{digits}f")


def fmt_ci(x: float | None, ci: list | None, digits: int = 3, sign: bool = False) -> str:
    """``0.657 [0.610, 0.700]`` for the markdown reports (``sign``: ``+0.038 [+0.006, +0.071]``); ``n/a`` for
    None, the value alone when there is no interval."""
    if x is None:
        return "n/a"
    if not ci or ci[0] is None:
        return _fmt_num(x, digits, sign)
    return f"{_fmt_num(x, digits, sign)} [{_fmt_num(ci[0], digits, sign)}, {_fmt_num(ci[1], digits, sign)}]"


def fmt_p(p: float | None, n_valid: int | None, digits: int = 3) -> str:
    """``p = 0.046``; ``p < 0.002`` when no replicate lay beyond 0 (the floor of the paired bootstrap's p,
    ``2 / n_valid``: :func:`cxrpipe.evaluate.stats.bootstrap.bootstrap_p`); ``p = n/a`` for None. Digits are
    added where rounding would carry p across 0.05, so "p < 0.05" reads the same printed as computed."""
    if p is None:
        return "p = n/a"
    if p == 0:
        return f"p < {2 / n_valid:.2g}" if n_valid else "p < 1/B"
    while digits < 8 and (float(f"{p:.{digits}f}") < ALPHA) != (p < ALPHA):
        digits += 1
    return f"p = {p:.{digits}f}"


def delta_cell(d: dict[str, Any] | None) -> str:
    """``+0.012 [-0.004, +0.029], p = 0.123``."""
    if not d or d.get("delta_mauc") is None:
        return "n/a"
    return f"{fmt_ci(d['delta_mauc'], d.get('delta_ci95'), sign=True)}, {fmt_p(d.get('p_value'), d.get('n_bootstrap_valid'))}"


def references_markdown(result: dict[str, Any]) -> list[str]:
    """The side-by-side table: pixels, random, mae, multimodal, and the paired deltas that matter."""
    refs = result.get("references") or {}
    protocols = [p for p in refs if p != PIXELS]
    if not protocols:
        return []
    lines = [
        "## Against the references: did pretraining learn anything?",
        "",
        "`random`: the very encoder pretraining starts from (same architecture, init and seed), never trained, "
        "evaluated by the same protocol. `pixels`: logistic regression on standardised raw pixels (C chosen on "
        "`validate`), protocol-independent. An encoder that does not beat both has learned nothing a linear "
        "model could not read off the image. All deltas are paired on the same resampled test patients.",
        "",
        "| protocol | pixels | random | mae | multimodal | mae - random [95% CI], p | multimodal - mae [95% CI], p |",
        "|---|---|---|---|---|---|---|",
    ]
    for protocol in protocols:
        r, main = refs[protocol], result.get(protocol, {})
        cell = lambda k: fmt_ci(r[k]["mauc"], r[k]["mauc_ci95"]) if k in r else "n/a"  # noqa: E731
        enc = lambda k: fmt_ci(main[k]["mauc"], main[k]["mauc_ci95"]) if k in main else "n/a"  # noqa: E731
        mm = main if "delta_mauc" in main else None
        lines.append(
            f"| {protocol} | {cell(PIXELS)} | {cell(RANDOM)} | {enc('mae')} | {enc('multimodal')} | "
            f"{delta_cell(r.get('mae_vs_random'))} | {delta_cell(mm)} |"
        )
    lines += ["", "| protocol | multimodal - random | mae - pixels | multimodal - pixels |", "|---|---|---|---|"]
    for protocol in protocols:
        r = refs[protocol]
        lines.append(
            f"| {protocol} | {delta_cell(r.get('multimodal_vs_random'))} | {delta_cell(r.get('mae_vs_pixels'))} "
            f"| {delta_cell(r.get('multimodal_vs_pixels'))} |"
        )
    if any(SHUFFLED in refs[p] for p in protocols):
        lines += ["", "### The shuffled-report control", "",
                  "`shuffled`: pretraining identical to `multimodal` except that each training image is paired with "
                  "another study's report (a fixed, seeded derangement). multimodal - shuffled is the effect of the "
                  "report's content; multimodal - mae mixes it with the effect of having a second loss at all.", "",
                  "| protocol | shuffled | multimodal - shuffled [95% CI], p |", "|---|---|---|"]
        for protocol in protocols:
            r = refs[protocol]
            cell = fmt_ci(r[SHUFFLED]["mauc"], r[SHUFFLED]["mauc_ci95"]) if SHUFFLED in r else "n/a"
            lines.append(f"| {protocol} | {cell} | {delta_cell(r.get('multimodal_vs_shuffled'))} |")
    if any(CONTINUED in refs[p] for p in protocols):
        lines += ["", "### The two-step flow's control", "",
                  "`pretrain.flow: two_step`: `mae` is pretrained first; `multimodal` continues it with the report, "
                  "`continued` for the same steps without it. multimodal - continued is the effect of the text in "
                  "the continuation; continued - mae what the extra steps alone gave the frozen MAE.", "",
                  "| protocol | continued | multimodal - continued [95% CI], p | continued - mae [95% CI], p |",
                  "|---|---|---|---|"]
        for protocol in protocols:
            r = refs[protocol]
            cell = fmt_ci(r[CONTINUED]["mauc"], r[CONTINUED]["mauc_ci95"]) if CONTINUED in r else "n/a"
            lines.append(f"| {protocol} | {cell} | {delta_cell(r.get('multimodal_vs_continued'))} "
                         f"| {delta_cell(r.get('continued_vs_mae'))} |")
    return lines + [""]


def _spread_cell(s: dict[str, Any] | None, digits: int = 3) -> str:
    if not s or s["mean"] is None:
        return "n/a"
    sd = "n/a (one seed)" if s["sd"] is None else f"{s['sd']:.{digits}f}"
    return f"{s['mean']:+.{digits}f} (sd {sd}; min-max {s['min']:+.{digits}f} to {s['max']:+.{digits}f})"


def seeds_markdown(result: dict[str, Any]) -> list[str]:
    """Per-seed deltas and their spread over training seeds."""
    seeds = result.get("seeds") or {}
    protocols = [p for p in seeds if p != "seeds"]
    if not protocols:
        return []
    n = len(seeds["seeds"])
    lines = [
        "## Training seeds",
        "",
        f"{n} training seed(s): {', '.join(str(s) for s in seeds['seeds'])} (pretraining and fine-tuning both "
        "reseeded). Each row's interval covers test-set sampling for that seed; the spread over seeds is "
        "training randomness, which those intervals do not cover."
        + (" One seed only: run `dvc exp run -S 'compare.extra_seeds=[1,2]'` for three." if n < 2 else ""),
        "",
        "| protocol | seed | mae | multimodal | multimodal - mae [95% CI], p | random | mae - random [95% CI], p |",
        "|---|---|---|---|---|---|---|",
    ]
    for protocol in protocols:
        for r in seeds[protocol]["per_seed"]:
            rnd = f"{r[RANDOM]['mauc']:.3f}" if RANDOM in r else "n/a"
            lines.append(
                f"| {protocol} | {r['seed']} | {r['mae']['mauc']:.3f} | {r['multimodal']['mauc']:.3f} | "
                f"{delta_cell(r)} | {rnd} | {delta_cell(r.get('mae_vs_random'))} |"
            )
    lines += ["", "| protocol | multimodal - mae over seeds: mean (sd; min-max) | mae - random over seeds | "
              "multimodal - shuffled over seeds |", "|---|---|---|---|"]
    for protocol in protocols:
        b = seeds[protocol]
        lines.append(f"| {protocol} | {_spread_cell(b['delta_mauc'])} | {_spread_cell(b.get('mae_vs_random'))} | "
                     f"{_spread_cell(b.get('multimodal_vs_shuffled'))} |")
    if any("seed_mean" in seeds[p] for p in protocols):
        lines += ["", "The seed mean with its interval: each replicate (the same resampled test patients for every "
                  "seed) averaged over the seeds, so the interval covers test sampling of the mean over these "
                  "seeds (not the spread a new seed would add).", "",
                  "| protocol | multimodal - mae, seed mean [95% CI], p | mae - random | multimodal - shuffled |",
                  "|---|---|---|---|"]
        for protocol in protocols:
            m = seeds[protocol].get("seed_mean") or {}
            lines.append(f"| {protocol} | {delta_cell(m.get(SEED_MEAN_MAIN))} | {delta_cell(m.get('mae_vs_random'))} | "
                         f"{delta_cell(m.get('multimodal_vs_shuffled'))} |")
    return lines + [""]
