"""DVC stage `random_encoder`: the `random` reference, the pretraining encoder at its initialisation, exported."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def main(
    params: Annotated[
        Path, typer.Option(help="params.yaml; reads pretrain.seed, pretrain.model, pretrain.data.pixel_mean/std")
    ] = Path("params.yaml"),
    out: Annotated[Path, typer.Option(help="encoder folder (encoder.safetensors + config.json)")] = Path(
        "data/models/random"
    ),
    seed: Annotated[
        Optional[int], typer.Option(help="overrides pretrain.seed (the seed repeats of compare.extra_seeds)")
    ] = None,
) -> None:
    """Build the MAE encoder exactly as pretraining initialises it (same architecture, init and seed), never
    train it, and export it like the pretrained encoders (config.json variant "random"): the reference a
    pretrained encoder must beat."""
    from cxrpipe.config import load_params, section
    from cxrpipe.evaluate.probe.references import write_random_encoder
    from cxrpipe.log import setup_logging, stage_errors
    from cxrpipe.pretrain.train import PretrainConfig

    setup_logging()
    with stage_errors("random_encoder"):
        cfg = section(load_params(params), "pretrain", PretrainConfig)
        write_random_encoder(cfg.model, cfg.data, cfg.seed if seed is None else seed, out)


if __name__ == "__main__":
    typer.run(main)
