"""DVC stage `label_efficiency_summary`: mAUC vs label fraction per encoder, paired delta per fraction."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def main(
    params: Annotated[Path, typer.Option(help="params.yaml; reads `label_efficiency`, `finetune.label_fractions`, `stats`")] = Path(
        "params.yaml"
    ),
    runs: Annotated[Path, typer.Option(help="folder of <encoder>/summary.json + <protocol>/<fraction>.npz predictions")] = Path(
        "data/label-efficiency"
    ),
    out: Annotated[Path, typer.Option(help="summary JSON")] = Path("data/metrics/label_efficiency.json"),
    report: Annotated[Path, typer.Option(help="markdown table")] = Path("data/reports/label_efficiency.md"),
    plot: Annotated[Path, typer.Option(help="PNG: mAUC with interval vs fraction")] = Path(
        "data/plots/label_efficiency.png"
    ),
) -> None:
    """One plot (mAUC + 95% CI against the fraction, a colour per encoder, a line style per protocol) and a
    table per protocol (paired delta candidate - reference per fraction)."""
    from cxrpipe.config import load_params, section
    from cxrpipe.evaluate.probe.finetune import FinetuneConfig
    from cxrpipe.evaluate.probe.label_efficiency import LabelEfficiencyConfig, summarize_label_efficiency
    from cxrpipe.evaluate.stats.rules import StatsConfig
    from cxrpipe.io import missing_input
    from cxrpipe.log import setup_logging, stage_errors

    setup_logging()
    with stage_errors("label_efficiency_summary", also=(ValueError,)):  # runs that cannot be paired
        raw = load_params(params)
        cfg = section(raw, "label_efficiency", LabelEfficiencyConfig)
        fractions = section(raw, "finetune", FinetuneConfig).label_fractions
        stats = section(raw, "stats", StatsConfig)
        if not any((runs / e / "summary.json").is_file() for e in cfg.encoders):
            raise missing_input(runs / cfg.encoders[0] / "summary.json", "label-efficiency runs of "
                                f"{', '.join(cfg.encoders)}", f"label_efficiency@{cfg.encoders[0]}")
        summarize_label_efficiency(cfg, fractions, runs, out, report, plot, stats=stats)


if __name__ == "__main__":
    typer.run(main)
