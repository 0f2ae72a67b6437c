"""``cxrpipe results``: every result README.md and docs/ quote, written from the metrics the pipeline wrote.

A page marks each generated block::

    <!-- results:comparison (make results: written from data/metrics, edits are overwritten) -->
    ...generated Markdown...
    <!-- /results -->

:func:`update_pages` rewrites what lies between the markers from ``data/metrics/*.json`` (the committed
reference run); ``check=True`` only lists the blocks that differ, which is what the test in ``make test``
does, so a number typed by hand or left from an older run fails it.

The metrics' layout is known in ONE place, the :class:`Metrics` accessors below: they turn the JSON files into
small records (:class:`Est`, :class:`Delta`, ...) and the block builders only format those. When a stage's
JSON changes (a protocol renamed, a field added), adapt the accessor; a protocol, encoder or dataset is
found in the data, never listed here. A block whose files are missing says so in one line instead of
failing: a page stays renderable before the reference run is committed.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from cxrpipe.evaluate.stats.bootstrap import order_rank
from cxrpipe.evaluate.stats.summaries import fmt_p
from cxrpipe.gpu_bench import GPU_RESULTS
from cxrpipe.gpu_bench import block as gpu_block
from cxrpipe.labels import CHEXPERT_LABELS

MARKER = re.compile(r"(<!-- results:([a-z0-9_]+)\b[^>]*-->\n)(.*?)(<!-- /results -->)", re.S)
DEFAULT_PAGES = ("README.md", "docs/*.md")
# how a protocol key of the metrics is named in a table (an unknown key is shown as it is)
PROTOCOL_NAMES = {"linear": "linear probe", "fc": "FC head (frozen)", "finetune": "finetune (LP-FT)"}
CANDIDATE, REFERENCE, RANDOM, PIXELS, SHUFFLED = "multimodal", "mae", "random", "pixels", "shuffled"
CONTINUED = "continued"  # the two-step flow's control
# committed benchmark outputs a block may read, beside the metrics (benchmarks/results/ of the repository)
BENCH_RESULTS = Path("benchmarks") / "results"
UNITS = {"patient": "patients", "study": "studies", "image": "images"}  # bootstrap_unit -> what is resampled


class ResultsError(ValueError):
    """A page names a block that does not exist, or its markers do not pair up."""


class MissingMetrics(LookupError):
    """A metrics file a block needs is not there (the block then says so instead of failing)."""


@dataclasses.dataclass(frozen=True)
class Est:
    """A value with its 95% interval (None where there is none)."""

    value: float | None
    lo: float | None = None
    hi: float | None = None


@dataclasses.dataclass(frozen=True)
class Delta(Est):
    """A paired difference with its interval and two-sided p."""

    p: float | None = None
    n_valid: int | None = None  # replicates where the delta was defined: p's floor is 2 / n_valid


@dataclasses.dataclass(frozen=True)
class Spread:
    """A value over training seeds: mean, sd (n - 1; None for one seed), min, max."""

    n: int
    mean: float | None
    sd: float | None
    lo: float | None
    hi: float | None


def _est(d: dict | None, key: str = "mauc") -> Est:
    d = d or {}
    lo, hi = (d.get(f"{key}_ci95") or [None, None])[:2]
    return Est(d.get(key), lo, hi)


def _delta(d: dict | None, key: str = "delta_mauc", ci: str = "delta_ci95", p: str = "p_value") -> Delta:
    d = d or {}
    lo, hi = (d.get(ci) or [None, None])[:2]
    return Delta(d.get(key), lo, hi, d.get(p), d.get("n_bootstrap_valid", d.get("n_bootstrap")))


class Metrics:
    """Accessors over a metrics folder (``data/metrics``): the only code that knows the JSON layouts."""

    def __init__(self, folder: str | Path, bench: str | Path | None = None):
        self.folder = Path(folder)
        # data/metrics -> <repository>/benchmarks/results
        self.bench = Path(bench) if bench is not None else self.folder.resolve().parents[1] / BENCH_RESULTS
        self._cache: dict[str, dict] = {}

    def bench_rows(self, name: str) -> list[dict]:
        """A committed benchmark log (``benchmarks/results/<name>``): one JSON object per line."""
        path = self.bench / name
        if not path.is_file():
            raise MissingMetrics(f"{BENCH_RESULTS / name} is missing")
        return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]

    def bench_json(self, name: str) -> dict:
        path = self.bench / name
        if not path.is_file():
            raise MissingMetrics(f"{BENCH_RESULTS / name} is missing")
        return json.loads(path.read_text())

    def read(self, name: str) -> dict:
        """``<name>.json`` with ``<name>.config.json`` (the strings the stage put beside its numbers) merged in."""
        if name not in self._cache:
            path = self.folder / f"{name}.json"
            if not path.is_file():
                raise MissingMetrics(f"{self.folder.name}/{path.name} is missing")  # the same text from any cwd
            cfg = self.folder / f"{name}.config.json"
            data = json.loads(cfg.read_text()) if cfg.is_file() else {}
            data.update(json.loads(path.read_text()))
            self._cache[name] = data
        return self._cache[name]

    # ---- compare (comparison.json)
    def protocols(self) -> list[str]:
        return [k for k, v in self.read("comparison").items() if isinstance(v, dict) and "delta_mauc" in v]

    def mauc(self, protocol: str, encoder: str) -> Est:
        """An encoder's mAUC under a protocol; the references (random, pixels) from the references block."""
        c = self.read("comparison")
        if encoder in c.get(protocol, {}):
            return _est(c[protocol][encoder])
        refs = c.get("references") or {}
        return _est((refs.get(protocol) or {}).get(encoder) or refs.get(encoder))

    def delta(self, protocol: str, candidate: str = CANDIDATE, reference: str = REFERENCE) -> Delta:
        c = self.read("comparison")
        if (candidate, reference) == (CANDIDATE, REFERENCE):
            return _delta(c.get(protocol))
        return _delta(((c.get("references") or {}).get(protocol) or {}).get(f"{candidate}_vs_{reference}"))

    def accuracy(self, protocol: str, encoder: str) -> tuple[float | None, float | None]:
        """(accuracy at 0.5, the all-negative classifier's accuracy on the same entries) of a compared encoder."""
        d = self.read("comparison").get(protocol, {}).get(encoder) or {}
        return d.get("accuracy"), d.get("all_negative_accuracy")

    def test_set(self) -> dict[str, Any]:
        """n_studies, n_images, n_patients (None when not recorded), n_bootstrap, unit, labels_in_mauc."""
        c = self.read("comparison")
        first = c[self.protocols()[0]]
        return {"n_studies": first.get("n_test_studies"), "n_images": first.get("n_test_images"),
                "n_patients": first.get("n_test_patients", first.get("n_patients")),
                "n_bootstrap": first.get("n_bootstrap"), "unit": first.get("bootstrap_unit") or c.get("bootstrap_unit"),
                "labels_in_mauc": list(first.get("labels_in_mauc") or [])}

    def seeds(self) -> list[Any]:
        return list((self.read("comparison").get("seeds") or {}).get("seeds") or [])

    def seed_deltas(self, protocol: str, key: str = "") -> list[tuple[Any, Delta]]:
        """Per seed: multimodal - mae (``key`` "") or the named reference delta (``mae_vs_random``)."""
        rows = ((self.read("comparison").get("seeds") or {}).get(protocol) or {}).get("per_seed") or []
        return [(r["seed"], _delta(r.get(key) if key else r)) for r in rows if not key or key in r]

    def seed_mean(self, protocol: str, key: str = "multimodal_vs_mae") -> Delta | None:
        """The seed-mean delta ``key`` with its interval (compare's ``seed_mean``; None for one seed, or a
        comparison written before compare computed it)."""
        s = ((self.read("comparison").get("seeds") or {}).get(protocol) or {}).get("seed_mean") or {}
        return _delta(s[key]) if key in s else None

    def seed_spread(self, protocol: str, key: str = "delta_mauc") -> Spread | None:
        s = ((self.read("comparison").get("seeds") or {}).get(protocol) or {}).get(key)
        return Spread(s["n"], s["mean"], s.get("sd"), s.get("min"), s.get("max")) if s else None

    # ---- label efficiency (label_efficiency.json: encoders -> protocol -> fraction tag; delta -> protocol -> tag)
    def label_efficiency(self) -> dict[str, Any]:
        """Per protocol (found in the data), a row per fraction: train studies, each encoder's mAUC (absent: no
        run; value None: not estimable at that fraction), the paired delta and the labels it covers."""
        le = self.read("label_efficiency")
        encoders = le.get("encoders") or {}
        protocols: dict[str, list[dict[str, Any]]] = {}
        for p in dict.fromkeys(p for runs in encoders.values() for p in runs):
            recs = {e: runs.get(p) or {} for e, runs in encoders.items()}
            tags = sorted({t for r in recs.values() for t in r},
                          key=lambda t: next(r[t]["label_fraction"] for r in recs.values() if t in r))
            rows = []
            for t in tags:
                first = next(r[t] for r in recs.values() if t in r)
                d = ((le.get("delta") or {}).get(p) or {}).get(t)
                rows.append({"fraction": first["label_fraction"], "n_train": first.get("n_train_studies"),
                             "mauc": {e: _est(r[t]) for e, r in recs.items() if t in r}, "delta": _delta(d),
                             "n_labels": (d or {}).get("n_labels")})
            protocols[p] = rows
        return {"level": le.get("level"), "reference": le.get("reference", REFERENCE),
                "candidate": le.get("candidate", CANDIDATE), "unit": le.get("bootstrap_unit"),
                "n_bootstrap": le.get("n_bootstrap"), "encoders": list(encoders), "protocols": protocols}

    # ---- zero-shot (zeroshot-<encoder>.json)
    def zeroshot(self, encoder: str, dataset: str | None = None) -> dict[str, Any]:
        """The project's own test split, or a transfer dataset's (``zeroshot-<dataset>-<encoder>.json``)."""
        z = self.read(f"zeroshot-{dataset}-{encoder}" if dataset else f"zeroshot-{encoder}")
        per_label = {n: (_est(v, "auroc"), v.get("n_pos")) for n, v in (z.get("per_label") or {}).items()}
        return {"mauc": _est(z), "mauc5": _est(z, "mauc5"), "labels_in_mauc": list(z.get("labels_in_mauc") or []),
                "n_studies": z.get("n_studies"), "n_patients": z.get("n_patients"), "per_label": per_label,
                "dataset": z.get("dataset") or dataset, "split_rule": z.get("split_rule")}

    def zeroshot_datasets(self) -> list[str]:
        """The transfer datasets scored zero-shot (a ``zeroshot-<dataset>-<candidate>.json`` exists), sorted."""
        tail = f"-{CANDIDATE}.json"
        return sorted(p.name[len("zeroshot-"):-len(tail)] for p in self.folder.glob(f"zeroshot-*{tail}"))

    # ---- retrieval (retrieval-<encoder>.json on test; pretrain-<variant>.json: the validate check)
    def retrieval(self, encoder: str) -> dict[str, Any]:
        r = self.read(f"retrieval-{encoder}")
        ways = {w: {int(k.split("@")[1]): (_est(r[w], k), r[w].get(f"chance@{k.split('@')[1]}"))
                    for k in r[w] if re.fullmatch(r"recall@\d+", k)} for w in ("image_to_report", "report_to_image")}
        # label-level retrieval (Hit@k, P@k beside its prior): absent from files written before it existed
        labels = {w: {"n": r[w].get("n_label_queries"), "prior": r[w].get("precision_prior"),
                      "hit": {int(k.split("@")[1]): (_est(r[w], k), r[w].get(f"hit_chance@{k.split('@')[1]}"))
                              for k in r[w] if re.fullmatch(r"hit@\d+", k)},
                      "precision": {int(k.split("@")[1]): _est(r[w], k) for k in r[w] if re.fullmatch(r"precision@\d+", k)}}
                  for w in ("image_to_report", "report_to_image")}
        return {"n_images": r.get("n_images"), "n_texts": r.get("n_texts"), "n_studies": r.get("n_studies"),
                "n_patients": r.get("n_patients"), "labels": labels, **ways}

    def alignment_check(self, variant: str) -> dict[str, Any]:
        r = self.read(f"pretrain-{variant}").get("retrieval") or {}
        ks = sorted(int(k.split("@")[1]) for k in r if re.fullmatch(r"recall@\d+", k))
        return {"n_images": r.get("n_images"), "n_reports": r.get("n_reports"),
                "recall": {k: r[f"recall@{k}"] for k in ks}, "chance": {k: r.get(f"chance@{k}") for k in ks}}

    # ---- transfer (transfer.json + transfer.config.json)
    def transfer(self) -> list[dict[str, Any]]:
        """One record per dataset: title, reference / candidate / references names, rows per protocol x fraction."""
        t = self.read("transfer")
        out = []
        for name, info in (t.get("datasets") or {}).items():
            rows = []
            for protocol, fractions in (t.get(name) or {}).items():
                for tag, f in sorted(fractions.items(), key=lambda kv: kv[1]["label_fraction"]):
                    encs = [k for k, v in f.items() if isinstance(v, dict) and "mauc" in v]
                    rows.append({"protocol": protocol, "fraction": f["label_fraction"], "n_train": f.get("n_train_studies"),
                                 "n_labels": f.get("n_labels_in_mauc"), "mauc": {e: _est(f[e]) for e in encs},
                                 "delta": _delta(f),
                                 "references": {k: _delta(v) for k, v in (f.get("references") or {}).items()}})
            out.append({"dataset": name, "title": info.get("title", name), "reference": t.get("reference", REFERENCE),
                        "candidate": t.get("candidate", CANDIDATE), "unit": t.get("bootstrap_unit"),
                        "n_bootstrap": t.get("n_bootstrap"), "rows": rows})
        return out


# ------------------------------------------------------------------------------------------------ format
# One convention for every generated table: 3 decimals for AUCs, recalls and deltas (deltas signed), p as the
# stages' reports print it (cxrpipe.evaluate.stats.summaries.fmt_p: 3 decimals, more where rounding would carry
# it across 0.05, and "p < 0.002" for 1000 replicates none of which lay beyond 0: the paired bootstrap's floor).


def num(x: float | None, sign: bool = False) -> str:
    return "n/a" if x is None else format(x, "+.3f" if sign else ".3f")


def est(e: Est, sign: bool = False) -> str:
    if e.value is None:
        return "n/a"
    return num(e.value, sign) + ("" if e.lo is None else f" [{num(e.lo, sign)}, {num(e.hi, sign)}]")


def pval(p: float | None, n_valid: int | None = None) -> str:
    return "n/a" if p is None else fmt_p(p, n_valid)


def delta(d: Delta, bold_if_excludes_zero: bool = False) -> str:
    if d.value is None:
        return "n/a"
    cell = est(d, sign=True)
    if bold_if_excludes_zero and d.lo is not None and (d.lo > 0 or d.hi < 0):
        cell = f"**{cell}**"
    return cell + ("" if d.p is None else f", {pval(d.p, d.n_valid)}")


def spread(s: Spread | None) -> str:
    if s is None or s.mean is None:
        return "n/a"
    sd = "one seed" if s.sd is None else f"sd {s.sd:.3f}"
    return f"{num(s.mean, True)} ({sd}; {num(s.lo, True)} to {num(s.hi, True)})"


def frac(x: float) -> str:
    return f"{100 * x:g}%"


def table(header: Iterable[str], rows: Iterable[Iterable[str]]) -> list[str]:
    header = list(header)
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def protocol_name(key: str) -> str:
    return PROTOCOL_NAMES.get(key, key)


# ------------------------------------------------------------------------------------------------ blocks


def _test_line(m: Metrics) -> str:
    t = m.test_set()
    who = f"{t['n_studies']} test studies" + (f" of {t['n_patients']} patients" if t["n_patients"] else "")
    unit = UNITS.get(t["unit"] or "study", t["unit"])
    left_out = [n for n in CHEXPERT_LABELS if n not in t["labels_in_mauc"]]
    return (f"{who}; 95% bootstrap intervals over test {unit} ({t['n_bootstrap']} resamples), every delta paired on "
            f"the same resamples; mAUC over the {len(t['labels_in_mauc'])} labels with enough test positives"
            + (f" ({', '.join(left_out)} reported apart)" if left_out else "") + ".")


def block_comparison(m: Metrics) -> list[str]:
    """The headline table: the seed spread first when seed repeats exist, then seed 0 beside the references."""
    protocols, seeds = m.protocols(), m.seeds()
    lines = [_test_line(m), ""]
    if len(seeds) > 1:
        lines += table(
            ["protocol", f"multimodal - mae, seeds {' / '.join(map(str, seeds))}", "mean (sd; min to max)",
             "mae - random: mean (sd; min to max)"],
            [[protocol_name(p), " / ".join(num(d.value, True) for _, d in m.seed_deltas(p)),
              spread(m.seed_spread(p)), spread(m.seed_spread(p, "mae_vs_random"))] for p in protocols])
        lines += ["", f"Seed {seeds[0]} with its intervals:", ""]
    lines += table(
        ["protocol", "pixels", "random", "mae", "multimodal", "mae - random", "multimodal - mae"],
        [[protocol_name(p), est(m.mauc(p, PIXELS)), est(m.mauc(p, RANDOM)), est(m.mauc(p, REFERENCE)),
          est(m.mauc(p, CANDIDATE)), delta(m.delta(p, REFERENCE, RANDOM)), delta(m.delta(p), True)] for p in protocols])
    if len(seeds) <= 1:
        lines += ["", "One training seed: the intervals cover test-set sampling, not training randomness "
                      "(`dvc exp run -S 'compare.extra_seeds=[1,2]'` adds two seeds)."]
    return lines


def block_references(m: Metrics) -> list[str]:
    return table(["protocol", "multimodal - random", "mae - pixels", "multimodal - pixels"],
                 [[protocol_name(p), delta(m.delta(p, CANDIDATE, RANDOM)), delta(m.delta(p, REFERENCE, PIXELS)),
                   delta(m.delta(p, CANDIDATE, PIXELS))] for p in m.protocols()])


def block_shuffled(m: Metrics) -> list[str]:
    """The control: multimodal against the same pretraining on shuffled reports, beside multimodal - mae."""
    return table(["protocol", "shuffled", "multimodal", "multimodal - shuffled", "multimodal - mae"],
                 [[protocol_name(p), est(m.mauc(p, SHUFFLED)), est(m.mauc(p, CANDIDATE)),
                   delta(m.delta(p, CANDIDATE, SHUFFLED), True), delta(m.delta(p), True)] for p in m.protocols()])


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("reached" if ok else "**not reached**")


def _above(e: Est, floor: float | None) -> bool | None:
    return None if e.lo is None or floor is None else e.lo > floor


def _seed_mean_above_zero(per_seed: list[Delta]) -> bool | None:
    """Whether the seed-mean interval of ``per_seed`` (deltas of one pair, every seed on the same resamples) lies
    above 0, from the seeds' own intervals and p alone (for comparisons written before compare computed the
    mean). With a seed's interval above 0, its p counts its replicates at or below 0: ``p B / 2`` of them. A
    replicate of the mean is at or below 0 only where some seed's is, so at most ``sum(p B / 2)`` are; fewer
    than the interval's rank ``k`` puts the mean interval's low end above 0. A sufficient condition: False
    means "not shown", and None when a seed lacks its interval, p or replicate count."""
    if any(d.lo is None or d.p is None or not d.n_valid for d in per_seed) or len({d.n_valid for d in per_seed}) != 1:
        return None
    n = per_seed[0].n_valid
    return all(d.lo > 0 for d in per_seed) and sum(round(d.p * n / 2) for d in per_seed) < order_rank(n)


def block_targets(m: Metrics) -> list[str]:
    """The alignment targets (docs/alignment.md), each read from the metrics and marked reached or not."""
    rows = _target_rows(m)
    return [_test_line(m), "", *table(["target (test split)", "measured", ""], rows)]


def _target_rows(m: Metrics) -> list[list[str]]:
    """block_targets' rows: [target, measured, verdict]."""
    rows = []
    z = m.zeroshot(CANDIDATE)["mauc"]
    rows.append(["zero-shot mAUC >= 0.65, interval above 0.5", est(z),
                 _verdict(None if z.value is None else z.value >= 0.65 and bool(_above(z, 0.5)))])
    ret = m.retrieval(CANDIDATE)
    r10, chance = ret["image_to_report"].get(10, (Est(None), None))
    rows.append(["image -> report R@10 >= 2x chance, interval above chance", f"{est(r10)}; chance {num(chance)}",
                 _verdict(None if r10.value is None or chance is None else
                          r10.value >= 2 * chance and bool(_above(r10, chance)))])
    lab = ret["labels"]["image_to_report"]
    p10 = lab["precision"].get(10, Est(None))
    rows.append(["image -> report P@10 (label precision) above the label prior, interval above it",
                 f"{est(p10)}; prior {num(lab['prior'])}", _verdict(_above(p10, lab["prior"]))])
    seeds = m.seeds()
    for p in m.protocols():
        per = m.seed_deltas(p, "multimodal_vs_shuffled")
        mean = m.seed_mean(p, "multimodal_vs_shuffled")
        if len(per) > 1 and mean is not None:  # several seeds: the seed mean's interval (the targets' rule)
            rows.append([f"{protocol_name(p)}: multimodal - shuffled > 0, seed-mean interval above 0 "
                         f"({len(per)} seeds)", f"{delta(mean)}; seeds {' / '.join(num(d.value, True) for _, d in per)}",
                         _verdict(bool(_above(mean, 0.0)))])
            continue
        if len(per) > 1:  # a comparison written before compare computed the seed mean: bounded from the seeds
            rows.append([f"{protocol_name(p)}: multimodal - shuffled > 0, seed-mean interval above 0 ({len(per)} "
                         "seeds; bounded from each seed's interval and p)", " / ".join(delta(d) for _, d in per),
                         _verdict(_seed_mean_above_zero([d for _, d in per]))])
            continue
        d = m.delta(p, CANDIDATE, SHUFFLED)
        if d.value is not None:
            rows.append([f"{protocol_name(p)}: multimodal - shuffled > 0, interval above 0 ({len(seeds)} seed(s))",
                         delta(d), _verdict(bool(_above(d, 0.0)))])
    for p in m.protocols():
        per = m.seed_deltas(p)
        rows.append([f"{protocol_name(p)}: multimodal - mae > 0 on every seed ({len(per)})",
                     " / ".join(num(d.value, True) for _, d in per),
                     _verdict(all(d.value is not None and d.value > 0 for _, d in per) if per else None)])
    if "linear" in m.protocols():
        d = m.delta("linear", REFERENCE, RANDOM)
        rows.append(["linear probe: mae - random > 0", delta(d), _verdict(None if d.value is None else d.value > 0)])
    best = max(((p, e, m.mauc(p, e)) for p in m.protocols() for e in (REFERENCE, CANDIDATE)),
               key=lambda t: -1.0 if t[2].value is None else t[2].value)
    px = m.mauc(m.protocols()[0], PIXELS)
    rows.append(["stretch: the best encoder within 0.05 mAUC of pixels",
                 f"{best[1]}, {protocol_name(best[0])}: {num(best[2].value)}; pixels {num(px.value)}",
                 _verdict(None if best[2].value is None or px.value is None else best[2].value >= px.value - 0.05)])
    return rows


def block_targets_by_run(m: Metrics, runs: dict[str, str | Metrics]) -> list[str]:
    """The targets of several single-seed runs side by side (``runs``: column title -> committed run folder, or
    the Metrics of one), each cell the run's measure and verdict; the last column: reached in every run."""
    metrics = {title: run if isinstance(run, Metrics) else _committed_run(m, run) for title, run in runs.items()}
    per = {title: _target_rows(run) for title, run in metrics.items()}
    first = next(iter(per.values()))
    if any([r[0] for r in rows] != [r[0] for r in first] for rows in per.values()):
        raise ResultsError(f"the runs {[r.folder.name for r in metrics.values()]} do not report the same targets")
    rows = [[re.sub(r" \(\d+ seed\(s\)\)| on every seed \(\d+\)", "", target[0]),
             *(f"{run_rows[i][1]} ({run_rows[i][2]})" for run_rows in per.values()),
             "yes" if all(run_rows[i][2] == "reached" for run_rows in per.values()) else "**no**"]
            for i, target in enumerate(first)]
    return [_test_line(next(iter(metrics.values()))), "",
            *table(["target (test split)", *per, f"reached in all {len(per)}"], rows)]


# Committed runs: each one's metrics folder under benchmarks/results/, read like data/metrics by the blocks
# "<run>_comparison", "<run>_targets" and "<run>_shuffled" (RUN_BLOCKS, expanded inside BLOCKS).
SEEDS_RUN = "demo-3seeds"  # the demo's three-seed experiment (`dvc exp run -S 'compare.extra_seeds=[1,2]'`)
PATCH12_RUN = "demo-3seeds-patch12"  # the same with the earlier encoder (patch 12, 64 patches), committed before
# patch 8 became the default: the "before" of the switch
PATCH8_RUN = "demo-3seeds-patch8"  # the same with patch 8 and reports only, committed before the sentence term
# (pretrain.loss.sentence_weight 0.5) became the default: the "before" of that switch
BENCH_RUN = "bench-sentences"  # the bench profile (real report text) with today's defaults: patch 8 and the
# sentence term (pretrain.loss.sentence_weight 0.5)
BENCH_PATCH12_RUN = "bench-patch12"  # the bench profile with the earlier encoder (patch 12), two seeds
# the bench profile with today's defaults again, training seed 1 as the run's own seed (pretrain.seed and
# finetune.seed 1: what --seed 1 overrides in the seed repeats), so that its zero-shot and retrieval are seed 1's
BENCH_SEED1_RUN = "bench-sentences-seed1"
BENCH_SEED2_RUN = "bench-sentences-seed2"  # the same with pretrain.seed and finetune.seed 2
# the bench's three seeds in one compare (benchmarks/joint_seeds.py): seed 0 from a rerun's workspace, seeds 1
# and 2 from the runs above; the seed-mean intervals, and reproduce.json (the rerun's seed 0 against BENCH_RUN)
BENCH_3SEEDS_RUN = "bench-3seeds"
# a fresh clone's `make demo` on another machine (the CPU and package versions in its machine.json, pip-freeze.txt):
# its targets beside the committed reference run's
FRESH_DEMO_RUN = "fresh-demo-zen5"
COMMITTED_RUNS = {"seeds": SEEDS_RUN, "patch12": PATCH12_RUN, "patch8": PATCH8_RUN, "bench": BENCH_RUN,
                  "bench_patch12": BENCH_PATCH12_RUN, "bench_seed1": BENCH_SEED1_RUN, "bench_seed2": BENCH_SEED2_RUN,
                  "bench_3seeds": BENCH_3SEEDS_RUN}
# the bench's single-seed runs of today's defaults
BENCH_SEED_RUNS = {"seed 0": BENCH_RUN, "seed 1": BENCH_SEED1_RUN, "seed 2": BENCH_SEED2_RUN}


def _committed_run(m: Metrics, name: str) -> Metrics:
    """A run's metrics committed under benchmarks/results/<name>/, read like data/metrics."""
    return Metrics(m.bench / name, bench=m.bench)


def _shuffled_over_seeds(s: Metrics) -> list[str]:
    """multimodal - shuffled per seed and over the seeds of a run."""
    rows, means = [], {p: s.seed_mean(p, "multimodal_vs_shuffled") for p in s.protocols()}
    for p in s.protocols():
        per = s.seed_deltas(p, "multimodal_vs_shuffled")
        rows.append([protocol_name(p), " / ".join(delta(d) for _, d in per) or "n/a",
                     spread(s.seed_spread(p, "multimodal_vs_shuffled"))]
                    + ([delta(means[p]) if means[p] is not None else "n/a"] if any(means.values()) else []))
    return table(["protocol", f"multimodal - shuffled, seeds {' / '.join(map(str, s.seeds()))}",
                  "mean (sd; min to max)"] + (["seed mean [95% CI], p"] if any(means.values()) else []), rows)


RUN_BLOCKS: dict[str, Callable[[Metrics], list[str]]] = {
    "comparison": block_comparison, "targets": block_targets, "shuffled": _shuffled_over_seeds}


def _run_block(run: str, block: Callable[[Metrics], list[str]]) -> Callable[[Metrics], list[str]]:
    """``block`` read from the committed run ``run`` instead of ``m``'s own folder."""
    return lambda m: block(_committed_run(m, run))


def block_reproduce(m: Metrics, run: str = BENCH_3SEEDS_RUN) -> list[str]:
    """A rerun against the committed metrics of the same seed (benchmarks/joint_seeds.py's reproduce.json): per
    file, the numbers compared (durations and rates left out), how many differ, the largest difference and the
    first that differ."""
    rep = _committed_run(m, run).read("reproduce")
    rows = [[f"`{name}`", str(r["numbers"]), str(r["differ"]), f"{r['max_abs_diff']:.3g}",
             ", ".join(f"`{p}`" for p in r["first_differences"][:3]) or "none"] for name, r in rep.items()]
    return table(["file", "numbers", "differ", "largest difference", "first that differ"], rows)


TWO_STEP_RUN = "demo-two-step"  # benchmarks/results/<this>/: the demo under pretrain.flow two_step, committed


def block_two_step(m: Metrics) -> list[str]:
    """The two-step flow (mae, then continued with the report / without it) beside joint training (the
    reference run of the same encoder, patch 12, seed 0): each multimodal, the control and the deltas, per protocol, on the same test patients."""
    t, joint = _committed_run(m, TWO_STEP_RUN), _committed_run(m, PATCH12_RUN)  # both ran with patch 12
    rows = [[protocol_name(p), est(joint.mauc(p, CANDIDATE)), est(t.mauc(p, CANDIDATE)), est(t.mauc(p, CONTINUED)),
             est(t.mauc(p, REFERENCE)), delta(t.delta(p, CANDIDATE, CONTINUED), True),
             delta(t.delta(p, CONTINUED, REFERENCE), True), delta(t.delta(p), True)] for p in t.protocols()]
    return [_test_line(t), "", *table(["protocol", "multimodal, joint", "multimodal, two-step", "continued", "mae",
                                       "two-step: multimodal - continued", "continued - mae", "multimodal - mae"],
                                      rows)]


RECIPES_LOG = "recipe_search-demo.jsonl"  # benchmarks/recipe_search.py's log, committed


def _grouped(rows: Iterable[dict], key: Callable[[dict], Any]) -> dict[Any, list[dict]]:
    """A benchmark log's rows grouped by ``key``, groups and rows in log order."""
    groups: dict[Any, list[dict]] = {}
    for r in rows:
        groups.setdefault(key(r), []).append(r)
    return groups


def block_recipes(m: Metrics) -> list[str]:
    """benchmarks/recipe_search.py's validate-only scores per recipe (mean over the seeds run), in log order."""
    groups = _grouped(m.bench_rows(RECIPES_LOG), lambda r: (r["recipe"], r["variant"]))

    def mean(rows: list[dict], get: Callable[[dict], Any]) -> str:
        v = [get(r) for r in rows if get(r) is not None]
        return num(sum(v) / len(v)) if v else "n/a"

    rows = []
    for (name, variant), rs in groups.items():
        over = ", ".join(f"{k} {v}" for k, v in rs[0].get("overrides", {}).items()) or "params as committed then"
        rows.append([name if variant != "reference" else f"_{name}_", variant, str(len(rs)), over,
                     mean(rs, lambda r: r.get("probe")), mean(rs, lambda r: r.get("zeroshot")),
                     mean(rs, lambda r: (r.get("retrieval") or {}).get("R@10")),
                     mean(rs, lambda r: (r.get("retrieval") or {}).get("chance@10")),
                     mean(rs, lambda r: (r.get("retrieval") or {}).get("P@10")),
                     mean(rs, lambda r: (r.get("retrieval") or {}).get("P@10_prior")),
                     mean(rs, lambda r: (r.get("clipped_share") or {}).get("total"))])
    return table(["recipe", "variant", "seeds", "overrides", "probe mAUC", "zero-shot mAUC", "R@10", "chance",
                  "P@10", "prior", "clipped share"], rows)


TEXT_LAYERS = "text-layers"  # benchmarks/results/<this>/: recipe_search rows per embed.layer + each embed's report
BENCH_TEXT_LAYERS = "bench-text-layers"  # the same study on the bench profile (params-bench.yaml)


def block_text_layers(m: Metrics, folder: str = TEXT_LAYERS) -> list[str]:
    """The text target's depth on VALIDATE: the default recipe on each ``embed.layer``'s cache, the same seeds;
    each score as the mean over the seeds, then each seed's; stage one's speed from each embed's report.
    ``folder``: the study's folder under benchmarks/results/ (the demo's, or the bench profile's)."""
    groups = _grouped(m.bench_rows(f"{folder}/recipes.jsonl"), lambda r: int(r["embed_layer"]))
    rows = []
    for layer, rs in groups.items():
        rep = m.bench_json(f"{folder}/embed-layer{layer}.json")
        rows.append([str(layer), f"{rep['tokens_per_second']:.0f}", *_seed_cells(rs)])
    return table(["embed.layer", "stage one tokens/s", *_SEED_HEADER], rows)


_SEED_HEADER = ["seeds", "probe mAUC", "zero-shot mAUC", "R@10", "chance", "P@10", "prior"]


def _seed_cells(rs: list[dict]) -> list[str]:
    """One study row's validate scores over its seeds: each cell the mean, then each seed's in seed order."""
    rs, seeds = _by_seed(rs)

    def cell(get: Callable[[dict], float]) -> str:
        return _mean_then_seeds([get(r) for r in rs])

    return [seeds, cell(lambda r: r["probe"]), cell(lambda r: r["zeroshot"]),
            cell(lambda r: r["retrieval"]["R@10"]), num(rs[0]["retrieval"]["chance@10"]),
            cell(lambda r: r["retrieval"]["P@10"]), num(rs[0]["retrieval"]["P@10_prior"])]


def _by_seed(rs: list[dict]) -> tuple[list[dict], str]:
    """A study row's runs in seed order (the seeds column and every cell in one order), and that column."""
    rs = sorted(rs, key=lambda r: r["seed"])
    return rs, ", ".join(str(r["seed"]) for r in rs)


def _mean_then_seeds(v: list[float]) -> str:
    return f"{num(sum(v) / len(v))} ({' / '.join(num(x) for x in v)})"


PROJECTORS = "projectors"  # benchmarks/results/<this>/recipes.jsonl: recipe_search on benchmarks/recipes/projectors.yaml


def _by_recipe(m: Metrics, log: str) -> list[tuple[str, str, list[dict]]]:
    """A recipe_search log's rows grouped by recipe, in log order: (name, its overrides in words, rows)."""
    groups = _grouped(m.bench_rows(log), lambda r: r["recipe"])
    return [(name, ", ".join(f"{k} {v}" for k, v in rs[0].get("overrides", {}).items()) or "base params", rs)
            for name, rs in groups.items()]


def block_recipe_seeds(m: Metrics, log: str) -> list[str]:
    """A recipe study on VALIDATE (the projectors; the chosen encoder under multimodal): one row per recipe of
    the grid (its overrides of the study's base params), each score the mean over the seeds run, then each seed's."""
    rows = [[name, over, *_seed_cells(rs)] for name, over, rs in _by_recipe(m, log)]
    return table(["recipe", "overrides", *_SEED_HEADER], rows)


ENCODERS = "encoders"  # benchmarks/results/<this>/: recipe_search on encoders.yaml, --variants mae (recipes.jsonl)
# and multimodal (multimodal.jsonl), + pixels.json
BENCH_ENCODERS = "bench-encoders"  # the chosen encoder under multimodal on the bench profile (multimodal.jsonl)


def block_encoders(m: Metrics) -> list[str]:
    """The image-encoder search on VALIDATE: the `mae` variant's own probe per encoder recipe (the mean over the
    seeds, then each seed's) and its mean pretraining time, beside the 32 px pixels reference (recipe_search --pixels)."""
    rows = []
    for name, over, rs in _by_recipe(m, f"{ENCODERS}/recipes.jsonl"):
        rs, seeds = _by_seed(rs)
        rows.append([name, over, seeds, _mean_then_seeds([r["probe"] for r in rs]),
                     f"{sum(r['seconds'] for r in rs) / len(rs):.0f}"])
    px = m.bench_json(f"{ENCODERS}/pixels.json")["pixels32_probe_validate"]
    rows.append(["_pixels_", "logistic regression on 32 px raw pixels", "", num(px), ""])
    return table(["recipe", "overrides", "seeds", "mae probe mAUC", "pretraining s"], rows)


SENTENCES = "sentences"  # benchmarks/results/<this>/<dataset>.jsonl: recipe_search on benchmarks/recipes/sentences.yaml

PROMPTS = "zeroshot-prompts"  # benchmarks/results/<this>/<dataset>.jsonl: benchmarks/zeroshot_prompts.py --log
PROMPT_DATASETS = (("demo", "demo"), ("bench", "bench (real report text)"))


def _prompt_runs(m: Metrics) -> list[tuple[str, dict[str, list[dict]]]]:
    """Each data set's prompt log grouped by prompt set (log order): (data set in words, set -> rows)."""
    return [(words, _grouped(m.bench_rows(f"{PROMPTS}/{key}.jsonl"), lambda r: r["set"]))
            for key, words in PROMPT_DATASETS]


def block_zeroshot_prompts(m: Metrics) -> list[str]:
    """Zero-shot on VALIDATE per prompt set (benchmarks/recipes/prompts.yaml), each data set's mean over its
    seeds, then each seed's."""
    runs = _prompt_runs(m)
    header = ["prompt set", *(f"{words}: {col}" for words, _ in runs for col in ("seeds", "zero-shot mAUC"))]
    cols = [groups for _, groups in runs]
    rows = []
    for name in dict.fromkeys(n for g in cols for n in g):
        row = [name]
        for groups in cols:
            rs, seeds = _by_seed(groups.get(name, []))
            row += [seeds, _mean_then_seeds([r["zeroshot"] for r in rs]) if rs else "not run"]
        rows.append(row)
    return table(header, rows)


def block_zeroshot_prompt_labels(m: Metrics) -> list[str]:
    """Per-label zero-shot AUROC on VALIDATE per prompt set, the mean over the seeds, one table per data set
    (the labels with enough validate positives in every run of that set)."""
    out: list[str] = []
    for words, groups in _prompt_runs(m):
        rows_all = [r for rs in groups.values() for r in rs]
        labels = [n for n in rows_all[0]["per_label"] if all(n in r["per_label"] for r in rows_all)]
        seeds = sorted({r["seed"] for r in rows_all})
        out += [f"{words.capitalize()}, seed{'s' * (len(seeds) > 1)} {', '.join(map(str, seeds))}:", ""]
        out += table(["label", *groups],
                     [[n, *(num(sum(r["per_label"][n] for r in rs) / len(rs)) for rs in groups.values())]
                      for n in labels])
        out.append("")
    return out[:-1]


STAGE_TIMES = "stage-times"  # benchmarks/results/<this>/<run>.json: benchmarks/stage_times.py --out
# the committed timed runs of the demo's `dvc repro`, oldest first: (file stem, column label); the last is the current
STAGE_TIME_RUNS = (("before", "before"), ("after", "after"), ("patch8", "patch 8"), ("sentences", "sentence term"))


def block_stage_times(m: Metrics) -> list[str]:
    """The demo's ``dvc repro`` per stage, the committed timed runs side by side (benchmarks/stage_times.py): wall
    and import seconds of each stage that ran in any of them, then the pipeline's totals."""
    runs = {k: m.bench_json(f"{STAGE_TIMES}/{k}.json") for k, _ in STAGE_TIME_RUNS}
    per = {k: {s["name"]: s for s in r["stages"] if s["status"] == "ran"} for k, r in runs.items()}
    names = list(dict.fromkeys(name for stages in per.values() for name in stages))

    def sec(run: str, name: str, key: str) -> str:
        st = per[run].get(name)
        return "not run" if st is None else f"{st[key]:.1f}"

    rows = [[name, *(sec(k, name, key) for key in ("wall_s", "import_s") for k in runs)] for name in names]
    overhead = " / ".join(f"{r['dvc_overhead_s']:.0f} s" for r in runs.values())
    rows.append([f"**pipeline** (DVC overhead: {overhead})", *(f"**{r['wall_s']:.0f}**" for r in runs.values()),
                 *(f"{r['import_s']:.0f}" for r in runs.values())])
    return table(["stage", *(f"{key} s, {label}" for key in ("wall", "import") for _, label in STAGE_TIME_RUNS)], rows)


def block_demo_time(m: Metrics) -> list[str]:
    """One sentence for the README: how long the demo's ``dvc repro`` took in the latest committed timed run."""
    run = m.bench_json(f"{STAGE_TIMES}/{STAGE_TIME_RUNS[-1][0]}.json")
    return [f"On 2 CPU cores the demo's `dvc repro` took **{run['wall_s'] / 60:.0f} min** ({run['stages_run']} "
            "stages; per stage: [docs/benchmarks.md](docs/benchmarks.md#the-demos-time-committed-runs-side-by-side)), "
            "after the set-up's few minutes."]


SMALL_DEMO_RUN = "demo-small"  # benchmarks/results/<this>/: the demo at the size an 8-minute pipeline allows (its
# params.diff), timed by benchmarks/stage_times.py in a workspace that had run the full demo; its targets


def block_small_demo(m: Metrics) -> list[str]:
    """The smaller demo's time (its stage-times.json; the stages it did not rerun, with their wall in the latest
    committed full run) and its targets beside the committed reference's."""
    run = m.bench_json(f"{SMALL_DEMO_RUN}/stage-times.json")
    full = {s["name"]: s for s in m.bench_json(f"{STAGE_TIMES}/{STAGE_TIME_RUNS[-1][0]}.json")["stages"]}
    skipped = run["stages_skipped"] + run["stages_cached"]
    again = sum(full[n]["wall_s"] for n in skipped if n in full)
    targets = block_targets_by_run(m, {"committed reference": m, "smaller demo": SMALL_DEMO_RUN})
    return [f"Pipeline wall {run['wall_s']:.0f} s for the {run['stages_run']} stages it ran; not rerun (their inputs "
            f"unchanged by the two params): {', '.join(f'`{n}`' for n in skipped)}, {again:.0f} s in the "
            f"`{STAGE_TIME_RUNS[-1][1]}` run above, so about {run['wall_s'] + again:.0f} s from scratch.", "",
            f"Smaller demo: {_test_line(_committed_run(m, SMALL_DEMO_RUN))}", "",
            f"Committed reference: {targets[0]}", *targets[1:]]


TEXT_DIAGNOSIS = "text_diagnosis-demo.json"  # benchmarks/text_diagnosis.py --out, committed


def block_text_diagnosis(m: Metrics) -> list[str]:
    """benchmarks/text_diagnosis.py: what the frozen LM's states hold, at a few depths and at each pooling's best
    zero-shot layer (the full table is in the committed JSON)."""
    d = m.bench_json(TEXT_DIAGNOSIS)
    rows = [r for r in d["rows"] if r["layer"] > 0]
    top = max(r["layer"] for r in rows)
    keep = {1, top // 4, top // 2, 3 * top // 4, top}
    best = {pool: max((r for r in rows if r["pooling"] == pool), key=lambda r: r["zeroshot_centred_validate_mauc"])
            for pool in dict.fromkeys(r["pooling"] for r in rows)}
    shown = [r for r in rows if r["layer"] in keep or r is best[r["pooling"]]]

    def pair_cos(r: dict) -> float:
        v = list(r["pair_cos_centred"].values())
        return sum(v) / len(v)

    return [f"{d['n_train']} train / {d['n_validate']} validate reports, LM at {d['quantization']}; validate only.", "",
            *table(["pooling", "layer", "supervised probe mAUC", "zero-shot mAUC (raw)", "zero-shot mAUC (centred)",
                    "mean cos(positive, negative prompt), centred"],
                   [[r["pooling"], str(r["layer"]) + (" (best zero-shot)" if r is best[r["pooling"]] else ""),
                     num(r["probe_validate_mauc"]), num(r["zeroshot_raw_validate_mauc"]),
                     num(r["zeroshot_centred_validate_mauc"]), num(pair_cos(r))]
                    for r in sorted(shown, key=lambda r: (r["pooling"], r["layer"]))])]


def block_seeds(m: Metrics) -> list[str]:
    rows = []
    for p in m.protocols():
        to_random = dict(m.seed_deltas(p, "mae_vs_random"))
        rows += [[protocol_name(p), str(s), delta(d), delta(to_random[s]) if s in to_random else "n/a"]
                 for s, d in m.seed_deltas(p)]
    return table(["protocol", "seed", "multimodal - mae", "mae - random"], rows)


def block_label_efficiency(m: Metrics) -> list[str]:
    le = m.label_efficiency()
    unit = UNITS.get(le["unit"] or "study", le["unit"])
    head = ["fraction", "train studies", "labels in delta", *(f"{e} mAUC" for e in le["encoders"]),
            f"{le['candidate']} - {le['reference']}"]
    lines = [f"{le['level']} level, test; 95% intervals over test {unit} ({le['n_bootstrap']} resamples), the delta "
             "paired over the labels both encoders could learn (not estimable: too few positive training studies)."]
    for p, rows in le["protocols"].items():
        cells = [[frac(r["fraction"]), str(r["n_train"]), str(r["n_labels"] if r["n_labels"] is not None else "n/a"),
                  *(("not estimable" if r["mauc"][e].value is None else est(r["mauc"][e])) if e in r["mauc"] else "n/a"
                    for e in le["encoders"]), delta(r["delta"])] for r in rows]
        lines += ["", f"{protocol_name(p)}:", "", *table(head, cells)]
    return lines


def block_zeroshot(m: Metrics) -> list[str]:
    z = {e: m.zeroshot(e) for e in (REFERENCE, CANDIDATE)}
    n = len(z[CANDIDATE]["labels_in_mauc"])
    lines = table(["encoder", f"mAUC ({n} labels)", "mAUC-5 (CheXpert competition labels)"],
                  [[e + (" (untrained heads: chance reference)" if e == REFERENCE else ""), est(v["mauc"]),
                    est(v["mauc5"])] for e, v in z.items()])
    labels = list(z[CANDIDATE]["per_label"])
    rows = [[name, str(z[CANDIDATE]["per_label"][name][1]), est(z[REFERENCE]["per_label"].get(name, (Est(None),))[0]),
             est(z[CANDIDATE]["per_label"][name][0])] for name in labels]
    return [*lines, "", *table(["label", "test positives", "mae AUROC", "multimodal AUROC"], rows)]


def block_zeroshot_transfer(m: Metrics) -> list[str]:
    """Zero-shot on the transfer datasets (the field's protocols) beside the project's own test split."""
    rows = []
    for ds in [None, *m.zeroshot_datasets()]:
        z = {e: m.zeroshot(e, ds) for e in (REFERENCE, CANDIDATE)}
        c = z[CANDIDATE]
        name = "the project's own test split (no standard published protocol)" if ds is None else c["dataset"]
        rows.append([name, (c["split_rule"] or "n/a") if ds else "the pipeline's test split",
                     f"{c['n_studies']} studies of {c['n_patients']} patients",
                     f"{len(c['labels_in_mauc'])}: {', '.join(c['labels_in_mauc'])}",
                     est(z[REFERENCE]["mauc"]), est(c["mauc"]), est(c["mauc5"]) if c["mauc5"].value is not None else "n/a"])
    return ["Study level, test; 95% intervals over test patients; mAUC over the labels under the label rule "
            "(`stats.min_test_positives`), mAUC-5 over CheXpert's 5 competition findings where the set has them. "
            f"{REFERENCE}'s untrained heads are the chance reference.", "",
            *table(["dataset", "split", "test", "labels in mAUC", f"{REFERENCE} mAUC", f"{CANDIDATE} mAUC",
                    f"{CANDIDATE} mAUC-5"], rows)]


def block_retrieval(m: Metrics) -> list[str]:
    a = {v: m.alignment_check(v) for v in (REFERENCE, CANDIDATE)}
    ks = list(a[CANDIDATE]["recall"])
    first = a[CANDIDATE]
    lines = [f"Validate (the pretraining check, {first['n_images']} images x {first['n_reports']} reports), image -> "
             "report:", "",
             *table(["", *(f"R@{k}" for k in ks)],
                    [["chance", *(num(first["chance"][k]) for k in ks)],
                     *([f"{v}" + (" (untrained heads)" if v == REFERENCE else ""), *(num(a[v]["recall"].get(k)) for k in ks)]
                       for v in a)])]
    r = {e: m.retrieval(e) for e in (REFERENCE, CANDIDATE)}
    t = r[CANDIDATE]
    ks = sorted(t["image_to_report"])
    lines += ["", f"Test ({t['n_images']} images of {t['n_studies']} studies, {t['n_texts']} distinct report texts):", ""]
    rows = []
    for way, title in (("image_to_report", "image -> report"), ("report_to_image", "report -> image")):
        rows.append(["chance", title, *(num(t[way][k][1]) for k in ks)])
        rows += [[e, title, *(est(r[e][way][k][0]) for k in ks)] for e in r]
    lines += table(["", "direction", *(f"R@{k}" for k in ks)], rows)
    lab = t["labels"]["image_to_report"]
    if not lab["precision"]:
        return lines
    unit = "patients" if t.get("n_patients") else "studies"
    lines += ["", f"Label level (a candidate is relevant when its study shares a positive finding with the query's, "
              f"\"No Finding\" counting as one; {lab['n']} image queries with a finding; 95% intervals over test "
              f"{unit}): Hit@k = a relevant one among the k best, P@k = the share of the k best that are relevant, "
              "beside the share over all candidates (prior).", ""]
    rows = []
    for way, title in (("image_to_report", "image -> report"), ("report_to_image", "report -> image")):
        rows.append(["chance / prior", title, *(num(t["labels"][way]["hit"][k][1]) for k in ks),
                     *(num(t["labels"][way]["prior"]) for _ in ks)])
        rows += [[e, title, *(est(r[e]["labels"][way]["hit"].get(k, (Est(None),))[0]) for k in ks),
                  *(est(r[e]["labels"][way]["precision"].get(k, Est(None))) for k in ks)] for e in r]
    return [*lines, *table(["", "direction", *(f"Hit@{k}" for k in ks), *(f"P@{k}" for k in ks)], rows)]


def block_transfer(m: Metrics) -> list[str]:
    lines: list[str] = []
    for ds in m.transfer():
        encs = list(dict.fromkeys(e for r in ds["rows"] for e in r["mauc"]))
        refs = list(dict.fromkeys(k for r in ds["rows"] for k in r["references"]))
        head = ["protocol", "fraction", "train studies", "labels in mAUC", *encs,
                f"{ds['candidate']} - {ds['reference']}", *(k.replace("_vs_", " - ") for k in refs)]
        rows = [[protocol_name(r["protocol"]), frac(r["fraction"]), str(r["n_train"]), str(r["n_labels"]),
                 *(est(r["mauc"][e]) if e in r["mauc"] else "n/a" for e in encs), delta(r["delta"]),
                 *(delta(r["references"][k]) if k in r["references"] else "n/a" for k in refs)] for r in ds["rows"]]
        unit = UNITS.get(ds["unit"] or "study", ds["unit"])
        lines += [f"{ds['title']}: 95% intervals over test {unit} ({ds['n_bootstrap']} resamples).",
                  "", *table(head, rows), ""]
    return lines[:-1]


def block_summary(m: Metrics) -> list[str]:
    """The README's one-line-each view of the further evaluations."""
    a = {v: m.alignment_check(v) for v in (REFERENCE, CANDIDATE)}
    k = max(a[CANDIDATE]["recall"])
    z = {e: m.zeroshot(e)["mauc"] for e in (REFERENCE, CANDIDATE)}
    le = m.label_efficiency()
    acc = [m.accuracy(p, e) for p in m.protocols() for e in (REFERENCE, CANDIDATE)]
    runs = [a for a, _ in acc if a is not None]
    return [
        f"- accuracy at 0.5: predicting negative everywhere {num(acc[0][1])}, the runs {num(min(runs, default=None))} "
        f"to {num(max(runs, default=None))};",
        f"- validate image -> report R@{k}: multimodal {num(a[CANDIDATE]['recall'][k])}, mae's untrained heads "
        f"{num(a[REFERENCE]['recall'][k])}, chance {num(a[CANDIDATE]['chance'][k])};",
        f"- zero-shot mAUC: multimodal {est(z[CANDIDATE])}, mae (untrained heads) {est(z[REFERENCE])};",
        f"- label efficiency, {le['candidate']} - {le['reference']}: "
        + "; ".join(f"{protocol_name(p)} " + ", ".join(f"{frac(r['fraction'])}: {delta(r['delta'])}" for r in rows)
                    for p, rows in le["protocols"].items()) + ".",
    ]


BLOCKS: dict[str, Callable[[Metrics], list[str]]] = {
    "comparison": block_comparison,
    "references": block_references,
    "seeds": block_seeds,
    "shuffled": block_shuffled,
    "targets": block_targets,
    **{f"{prefix}_{kind}": _run_block(run, block)
       for prefix, run in COMMITTED_RUNS.items() for kind, block in RUN_BLOCKS.items()},
    "two_step": block_two_step,
    "recipes": block_recipes,
    "text_layers": block_text_layers,
    "bench_text_layers": lambda m: block_text_layers(m, BENCH_TEXT_LAYERS),
    "projectors": lambda m: block_recipe_seeds(m, f"{PROJECTORS}/recipes.jsonl"),
    "encoders": block_encoders,
    "encoders_multimodal": lambda m: block_recipe_seeds(m, f"{ENCODERS}/multimodal.jsonl"),
    "bench_encoders": lambda m: block_recipe_seeds(m, f"{BENCH_ENCODERS}/multimodal.jsonl"),
    "sentences": lambda m: block_recipe_seeds(m, f"{SENTENCES}/demo.jsonl"),
    "sentences_shuffled": lambda m: block_recipe_seeds(m, f"{SENTENCES}/demo-shuffled.jsonl"),
    "sentences_bench": lambda m: block_recipe_seeds(m, f"{SENTENCES}/bench.jsonl"),
    "zeroshot_prompts": block_zeroshot_prompts,
    "zeroshot_prompt_labels": block_zeroshot_prompt_labels,
    "stage_times": block_stage_times,
    "demo_time": block_demo_time,
    "text_diagnosis": block_text_diagnosis,
    "label_efficiency": block_label_efficiency,
    "zeroshot": block_zeroshot,
    "retrieval": block_retrieval,
    "zeroshot_transfer": block_zeroshot_transfer,
    "transfer": block_transfer,
    "summary": block_summary,
    "gpu_h200": lambda m: gpu_block(m.bench / GPU_RESULTS.name),
    "bench_targets_by_seed": lambda m: block_targets_by_run(m, BENCH_SEED_RUNS),
    "bench_3seeds_reproduce": block_reproduce,
    "small_demo": block_small_demo,
    "fresh_demo_targets": lambda m: block_targets_by_run(m, {"committed reference": m, "fresh clone": FRESH_DEMO_RUN}),
}


def build_block(name: str, m: Metrics) -> str:
    """The Markdown of block ``name`` (ending with a newline); one line saying what is missing when a metrics
    file it needs is not there."""
    if name not in BLOCKS:
        raise ResultsError(f"unknown results block {name!r}; known: {sorted(BLOCKS)}")
    try:
        return "\n".join(BLOCKS[name](m)) + "\n"
    except MissingMetrics as e:
        return f"_Not in the committed metrics ({e}): run `dvc repro`, then `make results`._\n"


# ------------------------------------------------------------------------------------------------ pages


def render(text: str, m: Metrics) -> str:
    """``text`` with every results block rewritten from ``m``."""
    if text.count("<!-- results:") != text.count("<!-- /results -->"):
        raise ResultsError("a results block has no closing <!-- /results --> (or a closing marker no opening)")
    return MARKER.sub(lambda g: g.group(1) + build_block(g.group(2), m) + g.group(4), text)


def stale_blocks(text: str, m: Metrics) -> list[str]:
    """Names of the blocks of ``text`` whose content is not what ``m`` gives."""
    return [g.group(2) for g in MARKER.finditer(text) if g.group(3) != build_block(g.group(2), m)]


def find_pages(root: str | Path, patterns: Iterable[str] = DEFAULT_PAGES) -> list[Path]:
    root = Path(root)
    return sorted({p for pat in patterns for p in root.glob(pat) if p.is_file()})


def update_pages(pages: Iterable[str | Path], metrics_dir: str | Path, check: bool = False) -> list[str]:
    """Rewrite the results blocks of ``pages`` from ``metrics_dir`` (``check``: write nothing). Returns
    ``"<page>: <block>"`` for every block that was (or, checking, would be) changed."""
    m = Metrics(metrics_dir)
    changed = []
    for page in map(Path, pages):
        text = page.read_text()
        stale = stale_blocks(text, m)
        changed += [f"{page}: {b}" for b in stale]
        if stale and not check:
            page.write_text(render(text, m))
    return changed
