"""Label efficiency: stage three at several fractions of the labelled training studies, per encoder and probe.

:func:`run_label_efficiency` runs :func:`cxrpipe.evaluate.probe.finetune.run_finetune` for every protocol of
``label_efficiency.protocols`` (``fc`` and the true ``linear`` probe by default; ``finetune`` behind the
switch) once per fraction in ``finetune.label_fractions``, for one encoder. The training studies of a fraction
come from :func:`cxrpipe.evaluate.probe.data.sample_studies`: by study, seeded by ``finetune.seed``, NESTED
(each fraction a prefix of one permutation) and independent of the encoder, so every encoder sees the same
studies at a given fraction and seed; validate (model selection) and test (numbers) are always whole.

The probes train by optimizer STEPS, the same number at every fraction, with lr / weight decay / step chosen
on validate from ``finetune.fc`` / ``finetune.linear``'s grid (:mod:`cxrpipe.evaluate.probe.frozen`): at 5% of
the demo's studies an epoch is one step, so an epoch budget would measure the schedule, not the features.

Small fractions (:func:`run_fraction`, shared with the transfer path): a label with fewer than
``min_train_positives`` positive studies in the sample was never learned, so its test AUROC (an untrained
output's, ~0.5) says nothing about the encoder: it is **not estimable**, left out of mAUC and named. A
fraction where no label can be learned (or with fewer than two training images) is not run and reads null.

:func:`summarize_label_efficiency` then puts the encoders side by side: one plot of test mAUC with its
interval against the fraction (a colour per encoder, a line style per protocol), and per protocol a table of
the paired delta candidate - reference per fraction over the labels estimable for both (the same resampled
test patients; :func:`cxrpipe.evaluate.stats.summaries.paired_columns`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cxrpipe.evaluate.probe.finetune import FinetuneConfig, Protocol
from cxrpipe.evaluate.stats.metrics import EvalLevel, jsonable, load_predictions
from cxrpipe.evaluate.stats.rules import StatsConfig, label_rule_sentence, unit_sentence
from cxrpipe.evaluate.stats.summaries import fmt_ci, fmt_p, paired_columns

log = logging.getLogger(__name__)

SUMMARY = "summary.json"  # per run folder: what the summaries read beside the predictions


@dataclasses.dataclass(frozen=True)
class LabelEfficiencyConfig:
    """Params section ``label_efficiency`` (the fractions are ``finetune.label_fractions``)."""

    encoders: tuple[str, ...] = ("mae", "multimodal")  # data/models/<name>; dvc.yaml's foreach reads this list
    protocols: tuple[Protocol, ...] = (Protocol.FC, Protocol.LINEAR)  # probes run at every fraction
    reference: str = "mae"  # delta = candidate - reference, paired on the same test patients
    candidate: str = "multimodal"
    level: EvalLevel = EvalLevel.STUDY  # unit of the summary's mAUC and delta
    n_bootstrap: int = 1000  # paired replicates
    seed: int = 0  # the resampling stream of the paired delta
    min_train_positives: int = 1  # labels with fewer positive training studies at a fraction: not estimable


def fraction_tag(fraction: float) -> str:
    """A file-name-safe tag: 0.01 -> ``f0.01``."""
    return f"f{fraction:g}"


def studies_hash(study_ids: Sequence[int]) -> str:
    return hashlib.sha256(",".join(str(int(s)) for s in sorted(set(study_ids))).encode()).hexdigest()[:16]


RECORD_KEYS = ("mauc", "mauc_ci95", "mauc5", "mauc5_ci95", "labels_in_mauc", "labels_in_mauc5",
               "labels_low_positive", "labels_not_estimable", "min_test_positives", "min_train_positives",
               "n_patients", "n_studies")


def run_fraction(ft: FinetuneConfig, fraction: float, encoder_dir: str | Path, protocol: Protocol | str,
                 prepared: str | Path, out_dir: Path, min_train_positives: int, level: EvalLevel,
                 stats: StatsConfig = StatsConfig(), who: str | None = None) -> dict[str, Any]:
    """One fraction's run: ``out_dir/<tag>.json`` (metrics), ``.config.json``, ``.npz`` (test predictions);
    returns its record for a summary. Not run (record ``estimable: false``, mAUC null, never 0.5; stale outputs
    removed) when no label has ``min_train_positives`` positive training studies or fewer than two training
    images remain. ``who``: the run's encoder in log lines (default: the folder's name)."""
    from cxrpipe.evaluate.probe.data import labelled_splits
    from cxrpipe.evaluate.probe.finetune import run_finetune

    tag, protocol = fraction_tag(fraction), Protocol(protocol)
    splits = labelled_splits(prepared, ft.views, ft.uncertain, ft.blank, fraction, ft.seed)
    train = splits["train"]
    pos = train.positives()  # [L] positive training studies per label
    record: dict[str, Any] = {
        "label_fraction": fraction, "n_train_studies": train.n_studies, "n_train_images": len(train),
        "n_test_studies": splits["test"].n_studies, "train_positives": dict(zip(train.labels, pos.tolist())),
        "train_studies_hash": studies_hash(train.study_ids),
    }
    if not (pos >= min_train_positives).any() or len(train) < 2:
        for stale in (f"{tag}.json", f"{tag}.config.json", f"{tag}.npz"):
            (out_dir / stale).unlink(missing_ok=True)
        why = (f"{len(train)} training image(s)" if len(train) < 2
               else f"no label with >= {min_train_positives} positive training studies")
        log.warning("%s-%s at fraction %g (%d training studies): %s: not estimable, not run",
                    who or Path(encoder_dir).name, protocol.value, fraction, train.n_studies, why)
        return {**record, "estimable": False, "mauc": None, "mauc_ci95": [None, None], "mauc5": None,
                "mauc5_ci95": [None, None], "labels_in_mauc": [], "labels_not_estimable": list(train.labels)}
    m = run_finetune(dataclasses.replace(ft, label_fraction=fraction), encoder_dir, protocol, prepared,
                     out_dir / f"{tag}.json", predictions_out=out_dir / f"{tag}.npz", plot_out=None,
                     min_train_positives=min_train_positives, stats=stats)
    blk = m[EvalLevel(level).value]
    return {**record, "estimable": blk["mauc"] is not None, **{k: m[k] for k in ("selected", "best_epoch") if k in m},
            **{k: blk.get(k) for k in RECORD_KEYS}}


def run_label_efficiency(
    ft: FinetuneConfig,
    cfg: LabelEfficiencyConfig,
    fractions: Sequence[float],
    encoder_dir: str | Path,
    prepared: str | Path,
    out_dir: str | Path,
    summary_json: str | Path,
    stats: StatsConfig = StatsConfig(),
) -> dict[str, Any]:
    """One encoder at every fraction and protocol: ``out_dir/<protocol>/<fraction>.json`` (+ ``.config.json``,
    ``.npz`` predictions) and a summary ``{"protocols": {protocol: {fraction: record}}}``."""
    from cxrpipe.inputs import encoder_name
    from cxrpipe.io import write_json_atomic, write_metrics_json

    out_dir = Path(out_dir)
    name = encoder_name(encoder_dir)  # the encoder's own (config.json), checked by the summary stage
    runs: dict[str, Any] = {}
    for protocol in (Protocol(p) for p in cfg.protocols):
        (out_dir / protocol.value).mkdir(parents=True, exist_ok=True)
        runs[protocol.value] = {
            fraction_tag(f): run_fraction(ft, f, encoder_dir, protocol, prepared, out_dir / protocol.value,
                                          cfg.min_train_positives, cfg.level, stats, who=name)
            for f in sorted(set(float(x) for x in fractions))}
    summary = jsonable({"encoder": name, "level": cfg.level.value, "seed": ft.seed,
                        "bootstrap_unit": stats.bootstrap_unit.value, "protocols": runs})
    write_metrics_json(summary_json, summary)
    write_json_atomic(out_dir / SUMMARY, summary)  # beside the runs: what the summary stage reads
    return summary


def _deltas(cfg: LabelEfficiencyConfig, per_encoder: dict[str, Any], runs_dir: Path, protocol: str,
            tags: Sequence[str], stats: StatsConfig) -> dict[str, Any]:
    """tag -> the paired delta candidate - reference over the labels both could learn (nulls where none)."""
    a_name, b_name = cfg.reference, cfg.candidate
    out: dict[str, Any] = {}
    if not all(protocol in per_encoder.get(e, {}) for e in (a_name, b_name)):
        return out
    for tag in tags:
        ra, rb = per_encoder[a_name][protocol].get(tag), per_encoder[b_name][protocol].get(tag)
        if ra is None or rb is None:
            continue
        entry: dict[str, Any] = {"label_fraction": ra["label_fraction"]}
        if ra.get("estimable") and rb.get("estimable"):
            pa, pb = (load_predictions(runs_dir / e / protocol / f"{tag}.npz")[0].at_level(cfg.level, stats.bootstrap_unit)
                      for e in (a_name, b_name))
            if not (np.array_equal(pa.study_ids, pb.study_ids) and np.array_equal(pa.targets, pb.targets)):
                raise ValueError(f"{protocol} {tag}: {a_name} and {b_name} were scored on different test sets")
            learned = [j for j, n in enumerate(pa.labels) if ra["train_positives"][n] >= cfg.min_train_positives]
            d = paired_columns(pa, pb, np.array(learned), stats.min_test_positives, cfg.n_bootstrap, cfg.seed)
            entry.update({k: d[k] for k in ("delta_mauc", "delta_ci95", "p_value", "n_bootstrap_valid")},
                         n_labels=len(d["label_idx"]))
        else:
            entry.update(delta_mauc=None, delta_ci95=[None, None], p_value=None, n_bootstrap_valid=0, n_labels=0)
        out[tag] = entry
    return out


def summarize_label_efficiency(
    cfg: LabelEfficiencyConfig,
    fractions: Sequence[float],
    runs_dir: str | Path,
    out_json: str | Path,
    table_md: str | Path,
    plot_png: str | Path,
    stats: StatsConfig = StatsConfig(),
) -> dict[str, Any]:
    """Reads ``runs_dir/<encoder>/summary.json`` and ``runs_dir/<encoder>/<protocol>/<fraction>.npz``;
    writes the paired deltas (JSON), the markdown tables and the plot. Refuses runs whose training studies
    differ between encoders (the comparison would not be controlled)."""
    from cxrpipe.inputs import check_recorded_encoder, read_json
    from cxrpipe.io import write_metrics_json, write_text_atomic

    runs_dir = Path(runs_dir)
    tags = [fraction_tag(f) for f in sorted(set(float(x) for x in fractions))]
    per_encoder = {}
    for enc in cfg.encoders:
        path = runs_dir / enc / SUMMARY
        if path.exists():
            summary = read_json(path, f"label-efficiency runs of {enc}", f"label_efficiency@{enc}")
            check_recorded_encoder(path, summary.get("encoder"), enc, f"label_efficiency@{enc}")
            per_encoder[enc] = summary["protocols"]
        else:
            log.warning("no %s: encoder %s left out", path, enc)
    protocols = [Protocol(p).value for p in cfg.protocols]
    for protocol in protocols:
        for tag in tags:
            hashes = {e: r[protocol][tag]["train_studies_hash"] for e, r in per_encoder.items()
                      if tag in r.get(protocol, {})}
            if len(set(hashes.values())) > 1:
                raise ValueError(f"{protocol} {tag}: the encoders were trained on different studies: {hashes}")
    deltas = {p: _deltas(cfg, per_encoder, runs_dir, p, tags, stats) for p in protocols}
    result = jsonable({"level": cfg.level.value, "reference": cfg.reference, "candidate": cfg.candidate,
                       "bootstrap_unit": stats.bootstrap_unit.value, "n_bootstrap": cfg.n_bootstrap,
                       "min_test_positives": stats.min_test_positives, "encoders": per_encoder, "delta": deltas})
    write_metrics_json(out_json, result)
    write_text_atomic(Path(table_md), _table(result, protocols, tags, cfg))
    _plot(per_encoder, protocols, tags, Path(plot_png), f"label efficiency ({cfg.level.value} level, test)")
    return result


def _table(result: dict[str, Any], protocols: Sequence[str], tags: Sequence[str], cfg: LabelEfficiencyConfig) -> str:
    """One table per protocol: fraction rows, an mAUC column per encoder, the paired delta."""
    encoders = list(result["encoders"])
    first = next((r[p][t] for r in result["encoders"].values() for p in protocols if p in r for t in tags
                  if t in r[p] and r[p][t].get("n_studies")), None)
    n_pat, n_st = (first.get("n_patients"), first["n_studies"]) if first else (None, 0)
    lines = [
        f"# Label efficiency (test mAUC at the {result['level']} level)",
        "",
        "Training studies: a seeded, nested sample per fraction, the same for every encoder; validate and test "
        "whole. Each probe trains the same number of optimizer steps at every fraction, its lr, weight decay and "
        "step chosen on validate (`finetune.fc` / `finetune.linear`). A label with fewer than "
        f"{cfg.min_train_positives} positive training studies at a fraction is **not estimable**: left out of "
        f"mAUC and of the delta (`label_efficiency.min_train_positives`). {label_rule_sentence(result['min_test_positives'])}",
        "",
        f"Intervals: 95% percentile bootstrap, {unit_sentence(result['bootstrap_unit'], result['n_bootstrap'], n_pat, n_st)}; "
        "the delta is paired (the same resamples for both encoders, over the labels both could learn) and its p "
        "comes from the same replicates (interval excludes 0 <=> p < 0.05).",
        "",
    ]
    for protocol in protocols:
        lines += [f"## {protocol}", "",
                  "| fraction | train studies | labels in delta | " + " | ".join(f"{e} mAUC [95% CI]" for e in encoders)
                  + f" | delta {result['candidate']} - {result['reference']} [95% CI] | p |",
                  "|---|---|---|" + "---|" * len(encoders) + "---|---|"]
        for tag in tags:
            recs = [r[protocol][tag] for r in result["encoders"].values() if tag in r.get(protocol, {})]
            if not recs:
                continue
            d = result["delta"].get(protocol, {}).get(tag, {})
            cells = [fmt_ci(r[protocol][tag]["mauc"], r[protocol][tag]["mauc_ci95"])
                     if tag in r.get(protocol, {}) and r[protocol][tag]["mauc"] is not None else "not estimable"
                     for r in result["encoders"].values()]
            lines.append(f"| {recs[0]['label_fraction']:g} | {recs[0]['n_train_studies']} | {d.get('n_labels', 'n/a')} | "
                         + " | ".join(cells) + f" | {fmt_ci(d.get('delta_mauc'), d.get('delta_ci95'), sign=True)} | "
                         + fmt_p(d.get("p_value"), d.get("n_bootstrap_valid")).removeprefix("p = ") + " |")
        for tag in tags:
            rec = next((r[protocol][tag] for r in result["encoders"].values() if tag in r.get(protocol, {})), None)
            if rec and rec.get("labels_not_estimable"):
                lines.append(f"- fraction {rec['label_fraction']:g}: not estimable: " + ", ".join(rec["labels_not_estimable"]))
        lines.append("")
    return "\n".join(lines) + "\n"


def _plot(per_encoder: dict[str, Any], protocols: Sequence[str], tags: Sequence[str], path: Path, title: str) -> None:
    """mAUC with its interval against the fraction: a colour per encoder, a line style per protocol."""
    from cxrpipe.evaluate.stats.plots import _pyplot, _save, run_style

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    lines = [(enc, protocol, runs[protocol]) for enc, runs in per_encoder.items() for protocol in protocols
             if protocol in runs]
    for i, (enc, protocol, runs) in enumerate(lines):
        pts = [runs[t] for t in tags if t in runs and runs[t]["mauc"] is not None]
        if not pts:
            continue
        x = np.array([p["label_fraction"] for p in pts]) * (1 + 0.03 * (i - (len(lines) - 1) / 2))  # dodge
        y = np.array([p["mauc"] for p in pts])
        lo = np.array([p["mauc_ci95"][0] if p["mauc_ci95"][0] is not None else p["mauc"] for p in pts])
        hi = np.array([p["mauc_ci95"][1] if p["mauc_ci95"][1] is not None else p["mauc"] for p in pts])
        colour, style = run_style(f"{enc}-{protocol}")
        ax.errorbar(x, y, yerr=[y - lo, hi - y], marker="o", capsize=3, color=colour, ls=style,
                    label=f"{enc}-{protocol}")
    ax.set_xscale("log")
    fracs = sorted({r["label_fraction"] for _, _, runs in lines for r in runs.values()})
    ax.set_xticks(fracs, [f"{f:g}" for f in fracs])
    ax.minorticks_off()
    ax.axhline(0.5, color="0.7", ls=":", lw=1)
    ax.set(xlabel="fraction of labelled training studies", ylabel="test mAUC (95% CI)", title=title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
