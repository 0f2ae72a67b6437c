"""``data/reports/transfer.md``: the transfer results as tables a reviewer reads (one per dataset x protocol)."""

from __future__ import annotations

from typing import Any

from cxrpipe.evaluate.stats.rules import unit_sentence
from cxrpipe.evaluate.stats.summaries import fmt_ci, fmt_p
from cxrpipe.evaluate.transfer.run import TransferConfig


HEADER = [
    "# Transfer: the encoders on external labelled datasets",
    "",
    "Each encoder (exported by `pretrain`, or the untrained `random` reference) gets the stage-three protocols "
    "on each dataset's own labels and splits: `fc` (frozen encoder, FC head), `linear` (frozen encoder, BatchNorm + "
    "one linear layer) and `finetune` (LP-FT: the fc probe, then all weights). Training studies: a seeded, nested "
    "sample per label fraction, the same for every encoder; validate (step / epoch selection) and test whole.",
    "",
    "Intervals: 95% percentile bootstrap over test **{unit}s** ({n} resamples; a patient's studies are drawn "
    "together when the unit is the patient); every number of a row comes from the same resamples, so the deltas "
    "are **paired**. p: twice the share of replicated deltas on the far side of 0, from the same replicates as the "
    "interval (interval excludes 0 <=> p < 0.05). mAUC averages the labels with >= {min_test} test positives (the "
    "low-positive "
    "rule, per dataset) of which the fraction's training sample holds >= {min_train} positive studies; a label "
    "never seen positive in training is **not estimable** (its AUROC would be an untrained output's), and a "
    "fraction with no such label reads n/a, never 0.5. The intervals cover test-set sampling only: one training "
    "seed, one label-fraction sample (`transfer.seed`).",
    "",
]


def _table(rows: dict[str, Any], names: dict[str, Any], cfg: TransferConfig, encoders: list[str],
           key: str = "mauc") -> list[str]:
    """One markdown table: fraction rows, an mAUC column per encoder, the paired deltas."""
    ref, cand = cfg.reference, cfg.candidate
    d = "delta_mauc" if key == "mauc" else "delta_mauc5"
    dci, dp = ("delta_ci95", "p_value") if key == "mauc" else ("delta5_ci95", "p_value5")
    refs = [f"{e}_vs_{r}" for r in cfg.references for e in (ref, cand)] if key == "mauc" else []
    head = (["fraction", "train studies", "labels in mAUC"] + [f"{e} [95% CI]" for e in encoders]
            + [f"{cand} - {ref} [95% CI]", "p"] + [f"{r.replace('_vs_', ' - ')} [95% CI]" for r in refs])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for tag, r in rows.items():
        n_labels = len(names.get(tag, {}).get("labels_in_mauc5" if key != "mauc" else "labels_in_mauc", []))
        cells = [f"{r['label_fraction']:g}", str(r["n_train_studies"]),
                 str(n_labels) if n_labels else "none: not estimable"]
        cells += [fmt_ci(r[e][key], r[e][f"{key}_ci95"]) if e in r else "not run" for e in encoders]
        n_valid = r.get("n_bootstrap_valid" if key == "mauc" else "n_bootstrap_valid5")
        cells += [fmt_ci(r.get(d), r.get(dci), sign=True), fmt_p(r.get(dp), n_valid).removeprefix("p = ")]
        cells += [fmt_ci(r.get("references", {}).get(x, {}).get("delta_mauc"),
                      r.get("references", {}).get(x, {}).get("delta_ci95"), sign=True) for x in refs]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def transfer_markdown(result: dict[str, Any], config: dict[str, Any], cfg: TransferConfig) -> str:
    lines = [h.format(n=cfg.n_bootstrap, min_test=config.get("min_test_positives", 0),
                      min_train=cfg.min_train_positives, unit=config.get("bootstrap_unit", "study")) for h in HEADER]
    encoders = list(dict.fromkeys((cfg.reference, cfg.candidate, *cfg.references)))
    for dataset, protocols in result.items():
        ds = config["datasets"][dataset]
        what = " (the **synthetic demo** tree, not real radiographs)" if ds.get("demo") else ""
        lines += [f"## {ds['title']} (`{dataset}`){what}", "",
                  f"Labels ({len(ds['labels'])}): {', '.join(ds['labels'])}. Scored at the {config['level']} level.", ""]
        for protocol, rows in protocols.items():
            names = ds["protocols"][protocol]
            first = next(iter(rows.values()))
            counted = next((r for r in rows.values() if r.get("n_test_patients") is not None), first)
            lines += [f"### {protocol} ({counted.get('n_test_patients', '?')} test patients, "
                      f"{first['n_test_studies']} test studies)", "",
                      "Resampled: " + unit_sentence(config.get("bootstrap_unit", "study"), cfg.n_bootstrap,
                                                    counted.get("n_test_patients"), first["n_test_studies"]) + ".", "",
                      *_table(rows, names, cfg, [e for e in encoders if any(e in r for r in rows.values())]), ""]
            if ds.get("competition_labels"):
                lines += ["5-label CheXpert competition mAUC (" + ", ".join(ds["competition_labels"])
                          + "), paired the same way:", "",
                          *_table(rows, names, cfg, [e for e in encoders if any(e in r for r in rows.values())],
                                  key="mauc5"), ""]
            for tag, n in names.items():  # which labels each mAUC averages, not only how many
                if n.get("labels_in_mauc"):
                    lines.append(f"- {protocol}, fraction {rows[tag]['label_fraction']:g}: mAUC over "
                                 + ", ".join(n["labels_in_mauc"])
                                 + (f"; mAUC-5 over {', '.join(n['labels_in_mauc5'])}" if n.get("labels_in_mauc5") else ""))
                if n.get("labels_not_estimable") and rows[tag].get("n_labels_in_mauc"):
                    few = ("no positive training study" if cfg.min_train_positives <= 1
                           else f"fewer than {cfg.min_train_positives} positive training studies")
                    lines.append(f"- {protocol}, fraction {rows[tag]['label_fraction']:g}: not estimable ({few}): "
                                 + ", ".join(n["labels_not_estimable"]))
            lines.append("")
    lines += [
        "Reading: a delta whose interval lies above 0 says the candidate's features transfer better on that "
        "dataset at that fraction; an encoder that does not beat `random` learned nothing there that a probe "
        "(or LP-FT) could use. Small fractions have wide intervals and few labels: read them together with the "
        "labels-in-mAUC column.",
    ]
    return "\n".join(lines) + "\n"
