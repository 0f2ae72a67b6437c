"""DVC stage `embed`: run the frozen language model once over every prompted report -> the text cache."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def main(
    params: Annotated[Path, typer.Option(help="params.yaml; reads the `embed` section and `data.sections`")] = Path(
        "params.yaml"
    ),
    manifest: Annotated[Path, typer.Option(help="prepared folder holding studies.csv")] = Path("data/prepared"),
    out: Annotated[Path, typer.Option(help="the text cache (HDF5)")] = Path("data/cache/text.h5"),
    report: Annotated[Path, typer.Option(help="run summary (JSON) written beside the cache")] = Path(
        "data/cache/text-report.json"
    ),
) -> None:
    """Embed every study's cleaned, prompted report with the model of `embed.model` and write the ragged
    float16 cache. Resumable (rerun after a crash continues); `accelerate launch -m cxrpipe embed` shards it."""
    import dataclasses

    from cxrpipe.config import load_params, section
    from cxrpipe.data.prepare import DataConfig
    from cxrpipe.inputs import require_manifest
    from cxrpipe.io import write_json_atomic
    from cxrpipe.log import setup_logging, stage_errors
    from cxrpipe.text.embed import EmbedConfig, process_state, run_embed

    setup_logging()
    with stage_errors("embed"):
        raw = load_params(params)
        cfg = section(raw, "embed", EmbedConfig)
        sections = section(raw, "data", DataConfig).sections  # the cache's fingerprint records them
        summary = run_embed(cfg, require_manifest(manifest), out, list(sections))
    if process_state().is_main_process:
        numbers = dataclasses.asdict(summary)
        config = numbers.pop("config")  # strings (model, prompt) beside the metrics, not in them
        write_json_atomic(report, numbers)
        write_json_atomic(report.with_name(f"{report.stem}.config.json"), config)


if __name__ == "__main__":
    typer.run(main)
