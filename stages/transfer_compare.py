"""DVC stage `transfer_compare`: paired delta candidate - reference per dataset, protocol and label fraction."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def main(
    params: Annotated[Path, typer.Option(help="params.yaml; reads `transfer` and `stats`")] = Path("params.yaml"),
    runs: Annotated[Path, typer.Option(help="folder of <dataset>/<encoder>-<protocol>/ transfer runs")] = Path(
        "data/transfer-runs"
    ),
    out: Annotated[Path, typer.Option(help="metrics JSON (numbers); names go to <stem>.config.json")] = Path(
        "data/metrics/transfer.json"
    ),
    report: Annotated[Path, typer.Option(help="markdown tables")] = Path("data/reports/transfer.md"),
    prepared: Annotated[
        Path, typer.Option(help="folder of the prepared datasets <dataset>/ (the test patients of runs whose "
                                "predictions did not record them, for stats.bootstrap_unit: patient)")
    ] = Path("data/transfer"),
) -> None:
    """Every encoder's test mAUC per dataset x protocol x fraction, the paired delta multimodal - mae and the
    deltas against the references (random), all on the same resampled test patients (or studies)."""
    from cxrpipe.config import load_params, section
    from cxrpipe.evaluate.stats.rules import StatsConfig
    from cxrpipe.evaluate.transfer.run import TransferConfig
    from cxrpipe.evaluate.transfer.report import run_transfer_compare
    from cxrpipe.log import setup_logging, stage_errors

    setup_logging()
    with stage_errors("transfer_compare", also=(FileNotFoundError, ValueError)):  # no runs; unpairable runs
        raw = load_params(params)
        run_transfer_compare(section(raw, "transfer", TransferConfig), runs, out, report, prepared,
                             stats=section(raw, "stats", StatsConfig))


if __name__ == "__main__":
    typer.run(main)
