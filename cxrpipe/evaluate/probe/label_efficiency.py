"""Label efficiency: stage three at several fractions of the labelled training studies, per encoder.

:func:`run_label_efficiency` runs :func:`cxrpipe.evaluate.probe.finetune.run_finetune` (protocol
``label_efficiency.protocol``: ``linear`` by default, ``finetune`` behind the switch) once per fraction in
``finetune.label_fractions`` for one encoder. The training studies of a fraction come from
:func:`cxrpipe.evaluate.probe.data.sample_studies`: by study, seeded by ``finetune.seed``, NESTED (each fraction a
prefix of one permutation) and independent of the encoder, so every encoder sees the same studies at a given
fraction and seed; validate (model selection) and test (numbers) are always whole.

:func:`summarize_label_efficiency` then puts the encoders side by side: one plot of test mAUC with its
interval against the fraction, one line per encoder, and a table of the paired delta multimodal - mae per
fraction (the same resampled test studies for both; :func:`cxrpipe.evaluate.stats.bootstrap.paired_bootstrap_mauc`).
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
from cxrpipe.evaluate.stats.summaries import fmt_ci

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class LabelEfficiencyConfig:
    """Params section ``label_efficiency`` (the fractions are ``finetune.label_fractions``)."""

    encoders: tuple[str, ...] = ("mae", "multimodal")  # data/models/<name>; dvc.yaml's foreach reads this list
    protocol: Protocol = Protocol.LINEAR  # linear (cheap) | finetune (all weights: minutes per fraction)
    reference: str = "mae"  # delta = candidate - reference, paired on the same test studies
    candidate: str = "multimodal"
    level: EvalLevel = EvalLevel.STUDY  # unit of the summary's mAUC and delta
    n_bootstrap: int = 1000  # paired replicates
    seed: int = 0  # the resampling stream of the paired delta


def fraction_tag(fraction: float) -> str:
    """A file-name-safe tag: 0.01 -> ``f0.01``."""
    return f"f{fraction:g}"


def studies_hash(study_ids: Sequence[int]) -> str:
    return hashlib.sha256(",".join(str(int(s)) for s in sorted(set(study_ids))).encode()).hexdigest()[:16]


def run_label_efficiency(
    ft: FinetuneConfig,
    cfg: LabelEfficiencyConfig,
    fractions: Sequence[float],
    encoder_dir: str | Path,
    prepared: str | Path,
    out_dir: str | Path,
    summary_json: str | Path,
) -> dict[str, Any]:
    """One encoder at every fraction: ``out_dir/<fraction>.json`` (+ ``.config.json``, ``.npz`` predictions)
    and a summary ``{fraction: {mauc, mauc_ci95, mauc5, n_train_studies, train_studies_hash}}``."""
    from cxrpipe.evaluate.probe.data import labelled_splits
    from cxrpipe.evaluate.probe.finetune import run_finetune
    from cxrpipe.io import write_json_atomic, write_metrics_json

    from cxrpipe.inputs import encoder_name

    out_dir = Path(out_dir)
    name = encoder_name(encoder_dir)  # the encoder's own (config.json), checked by the summary stage
    runs: dict[str, Any] = {}
    for f in sorted(set(float(x) for x in fractions)):
        fcfg = dataclasses.replace(ft, label_fraction=f)
        tag = fraction_tag(f)
        m = run_finetune(fcfg, encoder_dir, cfg.protocol, prepared, out_dir / f"{tag}.json",
                         predictions_out=out_dir / f"{tag}.npz", plot_out=None)
        train = labelled_splits(prepared, ft.views, ft.uncertain, ft.blank, f, ft.seed)["train"]
        blk = m[cfg.level.value]
        runs[tag] = {
            "label_fraction": f,
            "mauc": blk["mauc"],
            "mauc_ci95": blk["mauc_ci95"],
            "mauc5": blk.get("mauc5"),
            "mauc5_ci95": blk.get("mauc5_ci95"),
            "n_train_studies": m["n_train_studies"],
            "n_train_images": m["n_train_images"],
            "best_epoch": m["best_epoch"],
            "min_test_positives": int(blk.get("min_test_positives") or 0),
            "train_studies_hash": studies_hash(train.study_ids),
        }
    summary = jsonable({"encoder": name, "protocol": Protocol(cfg.protocol).value, "level": cfg.level.value,
                        "seed": ft.seed, "runs": runs})
    write_metrics_json(summary_json, summary)
    write_json_atomic(out_dir / "summary.json", summary)  # beside the runs: what the summary stage reads
    return summary


def summarize_label_efficiency(
    cfg: LabelEfficiencyConfig,
    fractions: Sequence[float],
    runs_dir: str | Path,
    out_json: str | Path,
    table_md: str | Path,
    plot_png: str | Path,
) -> dict[str, Any]:
    """Reads ``runs_dir/<encoder>/<fraction>.npz`` and ``runs_dir/<encoder>/summary.json``;
    writes the paired deltas (JSON), the markdown table and the plot. Refuses runs whose training studies
    differ between encoders (the comparison would not be controlled)."""
    from cxrpipe.evaluate.stats.bootstrap import paired_bootstrap_mauc
    from cxrpipe.inputs import check_recorded_encoder, read_json
    from cxrpipe.io import write_metrics_json, write_text_atomic

    runs_dir = Path(runs_dir)
    tags = [fraction_tag(f) for f in sorted(set(float(x) for x in fractions))]
    per_encoder = {}
    for enc in cfg.encoders:
        path = runs_dir / enc / "summary.json"
        if path.exists():
            summary = read_json(path, f"label-efficiency runs of {enc}", f"label_efficiency@{enc}")
            check_recorded_encoder(path, summary.get("encoder"), enc, f"label_efficiency@{enc}")
            per_encoder[enc] = summary["runs"]
        else:
            log.warning("no %s: encoder %s left out", path, enc)
    for tag in tags:
        hashes = {e: r[tag]["train_studies_hash"] for e, r in per_encoder.items() if tag in r}
        if len(set(hashes.values())) > 1:
            raise ValueError(f"{tag}: the encoders were trained on different studies: {hashes}")
    deltas = {}
    a_name, b_name = cfg.reference, cfg.candidate
    if a_name in per_encoder and b_name in per_encoder:
        for tag in tags:
            pa = load_predictions(runs_dir / a_name / f"{tag}.npz")[0].at_level(cfg.level)
            pb = load_predictions(runs_dir / b_name / f"{tag}.npz")[0].at_level(cfg.level)
            if not (np.array_equal(pa.study_ids, pb.study_ids) and np.array_equal(pa.targets, pb.targets)):
                raise ValueError(f"{tag}: {a_name} and {b_name} were scored on different test sets")
            # the same low-positive rule as the runs' own mAUC (finetune.min_test_positives)
            min_pos = int(per_encoder[a_name][tag].get("min_test_positives") or 0)
            d = paired_bootstrap_mauc(pa.targets, pa.mask, pa.probs, pb.probs, pa.groups, cfg.n_bootstrap, cfg.seed,
                                      min_positives=min_pos)
            deltas[tag] = {"label_fraction": per_encoder[a_name][tag]["label_fraction"], "delta_mauc": d.delta,
                           "delta_ci95": list(d.ci95), "p_value": d.p_value}
    result = jsonable({"protocol": Protocol(cfg.protocol).value, "level": cfg.level.value,
                       "reference": a_name, "candidate": b_name, "encoders": per_encoder, "delta": deltas})
    write_metrics_json(out_json, result)
    write_text_atomic(Path(table_md), _table(result, tags))
    _plot(per_encoder, tags, Path(plot_png), f"label efficiency ({result['protocol']}, {cfg.level.value} level, test)")
    return result


def _table(result: dict[str, Any], tags: Sequence[str]) -> str:
    enc = list(result["encoders"])
    lines = [
        f"# Label efficiency ({result['protocol']} protocol, test mAUC at the {result['level']} level)",
        "",
        "Training studies: a seeded, nested sample per fraction, the same for every encoder; validate and test "
        "whole. Intervals: 95% bootstrap over test studies; the delta is paired (same resampled studies).",
        "",
        "| fraction | train studies | " + " | ".join(f"{e} mAUC [95% CI]" for e in enc)
        + f" | delta {result['candidate']} - {result['reference']} [95% CI] | p |",
        "|---|---|" + "---|" * len(enc) + "---|---|",
    ]
    for tag in tags:
        first = next((r[tag] for r in result["encoders"].values() if tag in r), None)
        if first is None:
            continue
        d = result["delta"].get(tag, {})
        cells = [fmt_ci(r[tag]["mauc"], r[tag]["mauc_ci95"]) if tag in r else "n/a" for r in result["encoders"].values()]
        lines.append(f"| {first['label_fraction']:g} | {first['n_train_studies']} | " + " | ".join(cells)
                     + f" | {fmt_ci(d.get('delta_mauc'), d.get('delta_ci95'), 4)} | "
                     + (f"{d['p_value']:.4f}" if d.get("p_value") is not None else "n/a") + " |")
    return "\n".join(lines) + "\n"


def _plot(per_encoder: dict[str, Any], tags: Sequence[str], path: Path, title: str) -> None:
    from cxrpipe.evaluate.stats.plots import _pyplot, _save

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for i, (enc, runs) in enumerate(per_encoder.items()):
        pts = [runs[t] for t in tags if t in runs and runs[t]["mauc"] is not None]
        x = np.array([p["label_fraction"] for p in pts]) * (1 + 0.03 * (i - (len(per_encoder) - 1) / 2))  # dodge
        y = np.array([p["mauc"] for p in pts])
        lo = np.array([p["mauc_ci95"][0] if p["mauc_ci95"][0] is not None else p["mauc"] for p in pts])
        hi = np.array([p["mauc_ci95"][1] if p["mauc_ci95"][1] is not None else p["mauc"] for p in pts])
        ax.errorbar(x, y, yerr=[y - lo, hi - y], marker="o", capsize=3, label=enc)
    ax.set_xscale("log")
    fracs = sorted({p["label_fraction"] for runs in per_encoder.values() for p in runs.values()})
    ax.set_xticks(fracs, [f"{f:g}" for f in fracs])
    ax.minorticks_off()
    ax.axhline(0.5, color="0.7", ls=":", lw=1)
    ax.set(xlabel="fraction of labelled training studies", ylabel="test mAUC (95% CI)", title=title)
    ax.legend()
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
