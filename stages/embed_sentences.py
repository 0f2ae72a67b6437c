"""`cxrpipe embed-sentences`: the train reports' sentences through stage one's frozen LLM, into a cache of their own."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def main(
    params: Annotated[Path, typer.Option(help="params.yaml; reads `embed` and `data.sections`")] = Path("params.yaml"),
    prepared: Annotated[Path, typer.Option(help="prepared folder: studies.csv")] = Path("data/prepared"),
    out: Annotated[Path, typer.Option(help="sentence cache (text.h5 format)")] = Path("data/cache/sentences.h5"),
) -> None:
    """Cut every train report into sentences headed by their section ("Findings: No pneumothorax."), then embed
    each distinct sentence (+ embed.prompt) with the same model, quantization, layer and storage form as the
    reports; what `cxrpipe pretrain --sentence-cache` reads when pretrain.loss.sentence_weight > 0."""
    import json

    from cxrpipe.config import load_params, section
    from cxrpipe.data.prepare import DataConfig
    from cxrpipe.inputs import require_prepared
    from cxrpipe.log import setup_logging, stage_errors
    from cxrpipe.text.embed import EmbedConfig
    from cxrpipe.text.sentences import write_sentence_cache

    setup_logging()
    with stage_errors("embed_sentences"):
        raw = load_params(params)
        summary = write_sentence_cache(section(raw, "embed", EmbedConfig), require_prepared(prepared), out,
                                       section(raw, "data", DataConfig).sections)
        typer.echo(json.dumps(summary))


if __name__ == "__main__":
    typer.run(main)
