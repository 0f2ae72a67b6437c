"""DVC stage `attention_maps`: where the pooling attends, overlaid on seeded test images beside the report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def main(
    params: Annotated[Path, typer.Option(help="params.yaml; reads `attention` (and `embed.model` for pool.kind cross)")] = Path(
        "params.yaml"
    ),
    encoder: Annotated[Path, typer.Option(help="model folder: encoder + text_head (dvc.yaml: attention.encoder)")] = Path(
        "data/models/multimodal"
    ),
    prepared: Annotated[Path, typer.Option(help="prepared folder (manifest + images.h5)")] = Path("data/prepared"),
    text_cache: Annotated[Path, typer.Option(help="the reports' text cache")] = Path("data/cache/text.h5"),
    out: Annotated[Path, typer.Option(help="folder of the PNG panels")] = Path("data/plots/attention"),
    index: Annotated[Path, typer.Option(help="JSON: the studies drawn, their labels and map ranges")] = Path(
        "data/reports/attention.json"
    ),
) -> None:
    """One PNG per study: the latent query's attention over patches (pool.kind latent) or each report
    sentence's (pool.kind cross), upsampled onto the image, one colour scale across panels."""
    from cxrpipe.config import load_params, section
    from cxrpipe.evaluate.alignment.attention_maps import AttentionMapsConfig, run_attention_maps
    from cxrpipe.inputs import read_json, require_encoder, require_prepared
    from cxrpipe.log import setup_logging, stage_errors
    from cxrpipe.text.embed import EmbedConfig

    setup_logging()
    with stage_errors("attention_maps"):
        raw = load_params(params)
        cfg = section(raw, "attention", AttentionMapsConfig)
        require_prepared(prepared)
        require_encoder(encoder, heads=True)
        tokenizer = None
        if read_json(encoder / "text_head.json", "the text side", "pretrain")["pool"]["kind"] == "cross":
            from cxrpipe.text.model import load_tokenizer  # sentences need the token ids decoded

            emb = section(raw, "embed", EmbedConfig)
            tokenizer = load_tokenizer(emb.model, emb.revision)
        run_attention_maps(cfg, encoder, prepared, text_cache, out, index, tokenizer)


if __name__ == "__main__":
    typer.run(main)
