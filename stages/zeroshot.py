"""DVC stage `zeroshot`: zero-shot classification of the test images with one encoder's exported text side."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def main(
    params: Annotated[Path, typer.Option(help="params.yaml; reads `zeroshot`, `stats`, `embed` and `data.sections` (prompt cache check)")] = Path(
        "params.yaml"
    ),
    encoder: Annotated[Path, typer.Option(help="model folder: encoder + text_head")] = Path("data/models/multimodal"),
    prepared: Annotated[Path, typer.Option(help="prepared folder (manifest + images.h5)")] = Path("data/prepared"),
    prompts: Annotated[Path, typer.Option(help="prompt cache of the zeroshot_prompts stage")] = Path(
        "data/cache/prompts.h5"
    ),
    out: Annotated[
        Optional[Path], typer.Option(help="metrics JSON; default data/metrics/zeroshot-<encoder>.json (config.json's name)")
    ] = None,
) -> None:
    """Softmax over each label's (positive, negative) prompt scores (CheXzero's protocol); per-label AUROC,
    mAUC and 5-label mAUC on test with bootstrap intervals over patients (`stats`). No label is used to fit anything."""
    from cxrpipe.config import load_params, section
    from cxrpipe.data.prepare import DataConfig
    from cxrpipe.evaluate.alignment.zeroshot import ZeroShotConfig, prompt_texts, run_zeroshot
    from cxrpipe.evaluate.stats.rules import StatsConfig
    from cxrpipe.inputs import require_encoder, require_prepared
    from cxrpipe.log import setup_logging, stage_errors
    from cxrpipe.text.embed import EmbedConfig
    from cxrpipe.text.prompts import prompt_fingerprint

    setup_logging()
    with stage_errors("zeroshot"):
        raw = load_params(params)
        cfg, stats = section(raw, "zeroshot", ZeroShotConfig), section(raw, "stats", StatsConfig)
        expect = prompt_fingerprint(section(raw, "embed", EmbedConfig), prompt_texts(cfg),
                                    section(raw, "data", DataConfig).sections)
        require_prepared(prepared)
        name = require_encoder(encoder, heads=True)
        run_zeroshot(cfg, encoder, prepared, prompts, expect, out or Path("data/metrics") / f"zeroshot-{name}.json",
                     stats=stats)


if __name__ == "__main__":
    typer.run(main)
