"""DVC stage `pixels`: the `pixels` reference, logistic regression on downsampled raw pixels."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def main(
    params: Annotated[
        Path, typer.Option(help="params.yaml; reads `pixels`, `stats` and finetune's splits, policies, level and bootstrap")
    ] = Path("params.yaml"),
    prepared: Annotated[Path, typer.Option(help="prepared folder (manifest + images.h5)")] = Path("data/prepared"),
    out: Annotated[Path, typer.Option(help="metrics JSON; the resolved config goes beside it")] = Path(
        "data/metrics/pixels.json"
    ),
    predictions: Annotated[Path, typer.Option(help="folder for the test predictions <out stem>.npz")] = Path(
        "data/predictions"
    ),
) -> None:
    """One logistic regression per label on standardised size x size pixels (C chosen on validate), scored
    like the encoders' runs (same images, labels, metrics, intervals and predictions format)."""
    from cxrpipe.config import load_params, section
    from cxrpipe.evaluate.probe.finetune import FinetuneConfig
    from cxrpipe.evaluate.probe.pixels import PixelsConfig, run_pixels
    from cxrpipe.evaluate.stats.rules import StatsConfig
    from cxrpipe.inputs import require_prepared
    from cxrpipe.log import setup_logging, stage_errors

    setup_logging()
    with stage_errors("pixels"):
        raw = load_params(params)
        cfg = section(raw, "pixels", PixelsConfig)
        ft = section(raw, "finetune", FinetuneConfig)
        stats = section(raw, "stats", StatsConfig)
        run_pixels(cfg, ft, require_prepared(prepared), out, predictions_out=predictions / f"{out.stem}.npz",
                   stats=stats)


if __name__ == "__main__":
    typer.run(main)
