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
    import json

    from cxrpipe.config import ConfigError, load_params, section
    from cxrpipe.log import setup_logging
    from cxrpipe.text.embed import EmbedConfig, process_state, run_embed

    setup_logging()
    raw = load_params(params)
    cfg = section(raw, "embed", EmbedConfig)
    sections = (raw.get("data") or {}).get("sections")
    if not isinstance(sections, list) or not all(isinstance(s, str) for s in sections):
        raise ConfigError(f"params 'data.sections' must be a list of section names, got {sections!r}")
    summary = run_embed(cfg, manifest, out, sections)
    if process_state().is_main_process:
        report.parent.mkdir(parents=True, exist_ok=True)
        tmp = report.with_name(report.name + ".tmp")
        tmp.write_text(json.dumps(dataclasses.asdict(summary), indent=2) + "\n")
        tmp.replace(report)


if __name__ == "__main__":
    typer.run(main)
