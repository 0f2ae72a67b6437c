"""DVC stage `zeroshot_prompts`: the zero-shot prompts through stage one's frozen LLM, into a cache of their own."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def main(
    params: Annotated[Path, typer.Option(help="params.yaml; reads `embed` and `zeroshot.prompts`")] = Path("params.yaml"),
    out: Annotated[Path, typer.Option(help="prompt cache (text.h5 format)")] = Path("data/cache/prompts.h5"),
) -> None:
    """Embed each label's positive and negative prompt (+ embed.prompt) with the same model, quantization and
    layer as the reports; the cache's fingerprint records those params and the prompts' hash."""
    from cxrpipe.config import load_params, section
    from cxrpipe.evaluate.alignment.zeroshot import ZeroShotConfig, prompt_texts
    from cxrpipe.log import setup_logging
    from cxrpipe.text.embed import EmbedConfig
    from cxrpipe.text.prompts import write_prompt_cache

    setup_logging()
    raw = load_params(params)
    write_prompt_cache(section(raw, "embed", EmbedConfig), prompt_texts(section(raw, "zeroshot", ZeroShotConfig)), out)


if __name__ == "__main__":
    typer.run(main)
