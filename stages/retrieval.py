"""DVC stage `retrieval`: image -> report and report -> image recall@k on test with one encoder's heads."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def main(
    params: Annotated[Path, typer.Option(help="params.yaml; reads `retrieval`, `stats`, and `embed` + `data.sections`")] = Path(
        "params.yaml"
    ),
    encoder: Annotated[Path, typer.Option(help="model folder: encoder + text_head")] = Path("data/models/multimodal"),
    prepared: Annotated[Path, typer.Option(help="prepared folder (manifest + images.h5)")] = Path("data/prepared"),
    text_cache: Annotated[Path, typer.Option(help="the reports' text cache")] = Path("data/cache/text.h5"),
    out: Annotated[
        Optional[Path], typer.Option(help="metrics JSON; default data/metrics/retrieval-<encoder>.json (config.json's name)")
    ] = None,
) -> None:
    """Recall@k both ways with bootstrap intervals and chance levels; identical report texts are one target."""
    from cxrpipe.config import load_params, section
    from cxrpipe.data.manifest import read_studies
    from cxrpipe.data.prepare import DataConfig
    from cxrpipe.evaluate.alignment.retrieval import RetrievalConfig, run_retrieval
    from cxrpipe.evaluate.stats.rules import StatsConfig
    from cxrpipe.inputs import require_encoder, require_prepared
    from cxrpipe.log import setup_logging, stage_errors
    from cxrpipe.text.embed import EmbedConfig, expected_fingerprint

    setup_logging()
    with stage_errors("retrieval"):
        raw = load_params(params)
        cfg, stats = section(raw, "retrieval", RetrievalConfig), section(raw, "stats", StatsConfig)
        name = require_encoder(encoder, heads=True)
        texts = [s.text for s in read_studies(require_prepared(prepared))]
        expect = expected_fingerprint(section(raw, "embed", EmbedConfig), texts, section(raw, "data", DataConfig).sections)
        run_retrieval(cfg, encoder, prepared, text_cache, expect, out or Path("data/metrics") / f"retrieval-{name}.json",
                      stats=stats)


if __name__ == "__main__":
    typer.run(main)
