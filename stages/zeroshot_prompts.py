"""DVC stage `zeroshot_prompts`: the zero-shot prompts through stage one's frozen LLM, into a cache of their own."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def main(
    params: Annotated[Path, typer.Option(help="params.yaml; reads `embed`, `zeroshot.prompts` and `data.sections`")] = Path("params.yaml"),
    out: Annotated[Path, typer.Option(help="prompt cache (text.h5 format)")] = Path("data/cache/prompts.h5"),
) -> None:
    """Clean each label's positive and negative prompt as reports are cleaned (data.sections, terminology),
    then embed it (+ embed.prompt) with the same model, quantization, layer and storage form (embed.store_dtype)
    as the reports; the cache's fingerprint records those params and the cleaned prompts' hash."""
    from cxrpipe.config import load_params, section
    from cxrpipe.data.prepare import DataConfig
    from cxrpipe.evaluate.alignment.zeroshot import ZeroShotConfig, prompt_texts
    from cxrpipe.log import setup_logging, stage_errors
    from cxrpipe.text.embed import EmbedConfig
    from cxrpipe.text.prompts import write_prompt_cache

    setup_logging()
    with stage_errors("zeroshot_prompts"):
        raw = load_params(params)
        texts = prompt_texts(section(raw, "zeroshot", ZeroShotConfig))
        write_prompt_cache(section(raw, "embed", EmbedConfig), texts, out, section(raw, "data", DataConfig).sections)


if __name__ == "__main__":
    typer.run(main)
