"""DVC stage `label_efficiency`: one encoder, its probes at every fraction of `finetune.label_fractions`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def main(
    params: Annotated[Path, typer.Option(help="params.yaml; reads `finetune`, `label_efficiency`, `stats`")] = Path("params.yaml"),
    encoder: Annotated[Path, typer.Option(help="exported encoder folder")] = Path("data/models/mae"),
    prepared: Annotated[Path, typer.Option(help="prepared folder (manifest + images.h5)")] = Path("data/prepared"),
    runs: Annotated[Path, typer.Option(help="folder of the per-fraction metrics, configs and predictions")] = Path(
        "data/label-efficiency/mae"
    ),
    out: Annotated[Path, typer.Option(help="summary metrics JSON")] = Path("data/metrics/label-efficiency-mae.json"),
) -> None:
    """Nested, seeded samples of the labelled training studies (the same for every encoder); validate and
    test whole; the protocols of `label_efficiency.protocols` (fc and linear; finetune behind the switch)."""
    from cxrpipe.config import load_params, section
    from cxrpipe.evaluate.probe.finetune import FinetuneConfig
    from cxrpipe.evaluate.probe.label_efficiency import LabelEfficiencyConfig, run_label_efficiency
    from cxrpipe.evaluate.stats.rules import StatsConfig
    from cxrpipe.log import setup_logging

    setup_logging()
    raw = load_params(params)
    ft = section(raw, "finetune", FinetuneConfig)
    run_label_efficiency(ft, section(raw, "label_efficiency", LabelEfficiencyConfig), ft.label_fractions,
                         encoder, prepared, runs, out, stats=section(raw, "stats", StatsConfig))


if __name__ == "__main__":
    typer.run(main)
