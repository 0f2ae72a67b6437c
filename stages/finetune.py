"""DVC stage `finetune`: a head on the 14 CheXpert labels over one encoder, protocol fc, linear or finetune."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Optional

import typer


def main(
    params: Annotated[Path, typer.Option(help="params.yaml; reads the `finetune` and `stats` sections")] = Path("params.yaml"),
    encoder: Annotated[Path, typer.Option(help="exported encoder folder (encoder.safetensors + config.json)")] = Path(
        "data/models/mae"
    ),
    protocol: Annotated[
        str, typer.Option(help="fc (frozen encoder, FC head) | linear (frozen encoder, linear probe) | finetune (all "
                            "weights); the choices of `Protocol`")
    ] = "fc",
    prepared: Annotated[Path, typer.Option(help="prepared folder (manifest + images.h5)")] = Path("data/prepared"),
    out: Annotated[
        Optional[Path],
        typer.Option(help="metrics JSON, the resolved config beside it; default data/metrics/<encoder>-<protocol>"
                          "[-seed<k>].json, <encoder> the name in the encoder's config.json"),
    ] = None,
    predictions: Annotated[Path, typer.Option(help="folder for the test predictions <out stem>.npz")] = Path(
        "data/predictions"
    ),
    plots: Annotated[Path, typer.Option(help="folder for the training-curve PNG <out stem>.png")] = Path(
        "data/plots/finetune"
    ),
    seed: Annotated[
        Optional[int], typer.Option(help="overrides finetune.seed (the seed repeats of compare.extra_seeds)")
    ] = None,
) -> None:
    """Train the head (fc, linear: on frozen features computed once; lr, weight decay and step chosen on
    validate) or all weights (finetune), and write test metrics with bootstrap intervals over patients,
    predictions and training curves."""
    from cxrpipe.config import load_params, section
    from cxrpipe.evaluate.probe.finetune import FinetuneConfig, Protocol, run_finetune
    from cxrpipe.evaluate.stats.rules import StatsConfig
    from cxrpipe.inputs import require_encoder, require_prepared
    from cxrpipe.log import setup_logging, stage_errors

    setup_logging()
    choices = [p.value for p in Protocol]
    if protocol not in choices:  # before anything is loaded; the list follows the enum
        raise typer.BadParameter(f"{protocol!r} is not one of {', '.join(choices)}", param_hint="'--protocol'")
    with stage_errors("finetune"):
        raw = load_params(params)
        cfg, stats = section(raw, "finetune", FinetuneConfig), section(raw, "stats", StatsConfig)
        if seed is not None:
            cfg = dataclasses.replace(cfg, seed=seed)
        require_prepared(prepared)
        name = require_encoder(encoder)
        out = out or Path("data/metrics") / f"{name}-{protocol}{'' if seed is None else f'-seed{seed}'}.json"
        run_finetune(cfg, encoder, Protocol(protocol), prepared, out, predictions_out=predictions / f"{out.stem}.npz",
                     plot_out=plots / f"{out.stem}.png", stats=stats)


if __name__ == "__main__":
    typer.run(main)
