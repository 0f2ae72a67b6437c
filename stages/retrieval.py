"""DVC stage `retrieval`: image -> report and report -> image recall@k on test with one encoder's heads."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def main(
    params: Annotated[Path, typer.Option(help="params.yaml; reads `retrieval`, `stats`, and `embed` + `data.sections`")] = Path(
        "params.yaml"
    ),
    encoder: Annotated[Path, typer.Option(help="model folder: encoder + text_head")] = Path("data/models/multimodal"),
    prepared: Annotated[Path, typer.Option(help="prepared folder (manifest + images.h5)")] = Path("data/prepared"),
    text_cache: Annotated[Path, typer.Option(help="the reports' text cache")] = Path("data/cache/text.h5"),
    out: Annotated[Path, typer.Option(help="metrics JSON")] = Path("data/metrics/retrieval-multimodal.json"),
) -> None:
    """Recall@k both ways with bootstrap intervals and chance levels; identical report texts are one target."""
    from cxrpipe.config import load_params, section
    from cxrpipe.data.manifest import read_studies
    from cxrpipe.data.prepare import DataConfig
    from cxrpipe.evaluate.alignment.retrieval import RetrievalConfig, run_retrieval
    from cxrpipe.evaluate.stats.rules import StatsConfig
    from cxrpipe.log import setup_logging
    from cxrpipe.text.embed import EmbedConfig, expected_fingerprint

    setup_logging()
    raw = load_params(params)
    expect = expected_fingerprint(section(raw, "embed", EmbedConfig), [s.text for s in read_studies(prepared)],
                                  section(raw, "data", DataConfig).sections)
    run_retrieval(section(raw, "retrieval", RetrievalConfig), encoder, prepared, text_cache, expect, out,
                  stats=section(raw, "stats", StatsConfig))


if __name__ == "__main__":
    typer.run(main)
