"""DVC stage `transfer`: one encoder on one external dataset, one protocol, at every transfer label fraction."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def main(
    params: Annotated[Path, typer.Option(help="params.yaml; reads `transfer`, `stats` and `finetune` (head, optimiser)")] = Path(
        "params.yaml"
    ),
    dataset: Annotated[str, typer.Option(help="dataset name (nih_cxr14, chexpert, rsna_pneumonia)")] = "nih_cxr14",
    encoder: Annotated[Path, typer.Option(help="exported encoder folder")] = Path("data/models/mae"),
    protocol: Annotated[str, typer.Option(help="fc | linear | finetune (LP-FT)")] = "fc",
    prepared: Annotated[
        Optional[Path], typer.Option(help="the dataset's prepared folder; default data/transfer/<dataset>")
    ] = None,
    out: Annotated[
        Optional[Path],
        typer.Option(help="run folder (per-fraction metrics, configs, predictions, summary.json); "
                          "default data/transfer-runs/<dataset>/<encoder>-<protocol>"),
    ] = None,
) -> None:
    """A probe (fc, linear) or LP-FT of the encoder on the dataset's own labels at each `transfer.label_fractions`
    (nested seeded samples of the training studies); labels without a training positive: not estimable."""
    from cxrpipe.config import load_params, section
    from cxrpipe.evaluate.probe.finetune import FinetuneConfig, Protocol
    from cxrpipe.evaluate.stats.rules import StatsConfig
    from cxrpipe.evaluate.transfer.run import TransferConfig, run_transfer
    from cxrpipe.inputs import require_encoder, require_prepared
    from cxrpipe.log import setup_logging, stage_errors

    setup_logging()
    choices = [p.value for p in Protocol]
    if protocol not in choices:
        raise typer.BadParameter(f"{protocol!r} is not one of {', '.join(choices)}", param_hint="'--protocol'")
    with stage_errors("transfer"):
        raw = load_params(params)
        ft, cfg = section(raw, "finetune", FinetuneConfig), section(raw, "transfer", TransferConfig)
        stats = section(raw, "stats", StatsConfig)
        prepared = require_prepared(prepared or Path("data/transfer") / dataset, f"transfer_prepare@{dataset}")
        name = require_encoder(encoder)
        out = out or Path("data/transfer-runs") / dataset / f"{name}-{protocol}"
        run_transfer(ft, cfg, dataset, encoder, protocol, prepared, out, stats=stats)


if __name__ == "__main__":
    typer.run(main)
