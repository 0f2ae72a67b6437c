"""DVC stage `label_efficiency`: one encoder, its probes at every fraction of `finetune.label_fractions`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def main(
    params: Annotated[Path, typer.Option(help="params.yaml; reads `finetune`, `label_efficiency`, `stats`")] = Path("params.yaml"),
    encoder: Annotated[Path, typer.Option(help="exported encoder folder")] = Path("data/models/mae"),
    prepared: Annotated[Path, typer.Option(help="prepared folder (manifest + images.h5)")] = Path("data/prepared"),
    runs: Annotated[
        Optional[Path], typer.Option(help="folder of the per-fraction metrics, configs and predictions; default "
                                          "data/label-efficiency/<encoder> (the name in its config.json)")
    ] = None,
    out: Annotated[
        Optional[Path], typer.Option(help="summary metrics JSON; default data/metrics/label-efficiency-<encoder>.json")
    ] = None,
) -> None:
    """Nested, seeded samples of the labelled training studies (the same for every encoder); validate and
    test whole; the protocols of `label_efficiency.protocols` (fc and linear; finetune behind the switch)."""
    from cxrpipe.config import load_params, section
    from cxrpipe.evaluate.probe.finetune import FinetuneConfig
    from cxrpipe.evaluate.probe.label_efficiency import LabelEfficiencyConfig, run_label_efficiency
    from cxrpipe.evaluate.stats.rules import StatsConfig
    from cxrpipe.inputs import require_encoder, require_prepared
    from cxrpipe.log import setup_logging, stage_errors

    setup_logging()
    with stage_errors("label_efficiency"):
        raw = load_params(params)
        ft = section(raw, "finetune", FinetuneConfig)
        cfg = section(raw, "label_efficiency", LabelEfficiencyConfig)
        stats = section(raw, "stats", StatsConfig)
        require_prepared(prepared)
        name = require_encoder(encoder)
        run_label_efficiency(ft, cfg, ft.label_fractions, encoder, prepared, runs or Path("data/label-efficiency") / name,
                             out or Path("data/metrics") / f"label-efficiency-{name}.json", stats=stats)


if __name__ == "__main__":
    typer.run(main)
