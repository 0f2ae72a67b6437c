"""DVC stage `compare`: multimodal vs mae per protocol, paired bootstrap on the same test patients."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def main(
    params: Annotated[Path, typer.Option(help="params.yaml; reads the `compare` and `stats` sections")] = Path("params.yaml"),
    metrics: Annotated[Path, typer.Option(help="folder of <encoder>-<protocol>.json metrics")] = Path("data/metrics"),
    predictions: Annotated[Path, typer.Option(help="folder of <encoder>-<protocol>.npz test predictions")] = Path(
        "data/predictions"
    ),
    out: Annotated[Path, typer.Option(help="comparison JSON")] = Path("data/metrics/comparison.json"),
    report: Annotated[Path, typer.Option(help="markdown report")] = Path("data/reports/comparison.md"),
    plots: Annotated[Path, typer.Option(help="folder for the ROC PNGs, one per label")] = Path("data/plots/roc"),
) -> None:
    """Delta mAUC (multimodal - mae) per protocol with a paired bootstrap 95% interval and p-value; writes
    comparison.json, the markdown report (published numbers quoted for reference) and ROC curves per label."""
    from cxrpipe.config import load_params, section
    from cxrpipe.evaluate.compare import CompareConfig, run_compare
    from cxrpipe.evaluate.stats.rules import StatsConfig
    from cxrpipe.log import setup_logging, stage_errors

    setup_logging()
    with stage_errors("compare", also=(FileNotFoundError, ValueError)):  # no runs; runs that cannot be paired
        raw = load_params(params)
        cfg, stats = section(raw, "compare", CompareConfig), section(raw, "stats", StatsConfig)
        run_compare(cfg, metrics, out, predictions_dir=predictions, report_md=report, plots_dir=plots, stats=stats)


if __name__ == "__main__":
    typer.run(main)
