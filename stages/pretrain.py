"""DVC stage `pretrain`: MAE pretraining of the image encoder, with (`multimodal`) or without (`mae`) the text."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Optional

import typer


def main(
    params: Annotated[
        Path, typer.Option(help="params.yaml; reads `pretrain`, and `embed` + `data.sections` to check the text cache")
    ] = Path("params.yaml"),
    variant: Annotated[str, typer.Option(
        help="mae | multimodal | shuffled (another study's report: the control) | continued (two-step flow: mae "
             "continued without text)")] = "multimodal",
    prepared: Annotated[Path, typer.Option(help="prepared folder: images.csv, studies.csv, images.h5")] = Path(
        "data/prepared"
    ),
    text_cache: Annotated[Path, typer.Option(help="the text cache written by the embed stage")] = Path(
        "data/cache/text.h5"
    ),
    out: Annotated[
        Optional[Path], typer.Option(help="encoder folder (default: data/models/<variant>)")
    ] = None,
    metrics: Annotated[
        Optional[Path], typer.Option(help="metrics JSON (default: data/metrics/pretrain-<variant>.json)")
    ] = None,
    plots: Annotated[
        Optional[Path], typer.Option(help="loss curves folder (default: data/plots/pretrain-<variant>)")
    ] = None,
    resume: Annotated[
        bool, typer.Option(help="continue exactly from <out>/checkpoint.pt if it was written with these settings")
    ] = False,
    max_steps: Annotated[
        Optional[int], typer.Option(help="stop after this many steps, leaving a checkpoint (smoke runs)")
    ] = None,
    seed: Annotated[
        Optional[int], typer.Option(help="overrides pretrain.seed (the seed repeats of compare.extra_seeds)")
    ] = None,
    init: Annotated[
        Optional[Path], typer.Option(help="pretrain.flow two_step: the exported mae folder this variant continues")
    ] = None,
    sentence_cache: Annotated[
        Path, typer.Option(help="the sentence cache (stage embed_sentences), read only when "
                                "pretrain.loss.sentence_weight > 0")
    ] = Path("data/cache/sentences.h5"),
) -> None:
    """Train the ViT MAE (+ attention pooling and contrastive loss against the text cache) on the train split;
    write encoder.safetensors + config.json (a plain timm ViT), loss curves, and the validate-split
    image->report retrieval check. `accelerate launch -m cxrpipe pretrain ...` runs it data-parallel."""
    from cxrpipe.config import load_params, section
    from cxrpipe.log import setup_logging, stage_errors
    from cxrpipe.pretrain.train import VARIANTS, PretrainConfig

    setup_logging()
    if variant not in VARIANTS:
        raise typer.BadParameter(f"{variant!r} is not one of {', '.join(VARIANTS)}", param_hint="'--variant'")
    with stage_errors("pretrain"):
        raw = load_params(params)
        cfg = section(raw, "pretrain", PretrainConfig)
        if seed is not None:
            cfg = dataclasses.replace(cfg, seed=seed)
        _run(raw, cfg, variant, prepared, text_cache, out, resume, metrics, plots, max_steps, init, sentence_cache)


def _run(raw, cfg, variant, prepared, text_cache, out, resume, metrics, plots, max_steps, init, sentence_cache) -> None:
    from cxrpipe.config import section
    from cxrpipe.data.manifest import read_studies
    from cxrpipe.data.prepare import DataConfig
    from cxrpipe.inputs import require_prepared
    from cxrpipe.pretrain.train import run_pretrain, trains_sentences
    from cxrpipe.text.embed import EmbedConfig, expected_fingerprint
    from cxrpipe.text.sentences import sentence_source

    expect = expected_fingerprint(
        section(raw, "embed", EmbedConfig),
        [s.text for s in read_studies(require_prepared(prepared))],
        section(raw, "data", DataConfig).sections,
        strict_identity=False,  # checked when the model is at hand; pretrain never needs it or the network
    )
    run_pretrain(
        cfg,
        variant,
        prepared,
        text_cache,
        out or Path("data/models") / variant,
        resume=resume,
        expect=expect,
        metrics_path=metrics or Path("data/metrics") / f"pretrain-{variant}.json",
        plots_dir=plots or Path("data/plots") / f"pretrain-{variant}",
        max_steps=max_steps,
        init_from=init,
        # mae / continued never read sentences: their source (the train reports split and hashed) is not built
        sentences=sentence_source(raw, prepared, sentence_cache) if trains_sentences(cfg, variant) else None,
    )


if __name__ == "__main__":
    typer.run(main)
