"""DVC stage `check` (the first): the whole params file against every stage's schema, and the data layout."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def main(
    params: Annotated[Path, typer.Option(help="params.yaml: every section is checked")] = Path("params.yaml"),
    out: Annotated[
        Optional[Path], typer.Option(help="written when the check passes (every other stage depends on it)")
    ] = Path("data/check.json"),
    dvc_yaml: Annotated[
        Optional[Path], typer.Option(help="paths its stages write need not exist yet (the demo trees)")
    ] = Path("dvc.yaml"),
    data: Annotated[bool, typer.Option(help="also check the files data.source and transfer.datasets need")] = True,
) -> None:
    """Check every section of the params file against the dataclass its stage builds (unknown keys, types,
    allowed report sections, views and label names) and the files the configured data source needs, in
    seconds; one line naming the key when anything is wrong."""
    from cxrpipe.check import run_check
    from cxrpipe.config import load_params, section
    from cxrpipe.cpu import CpuConfig
    from cxrpipe.log import setup_logging, stage_errors
    from cxrpipe.profiles import PipelineConfig

    setup_logging()
    with stage_errors("check"):
        raw = load_params(params)
        section(raw, "pipeline", PipelineConfig)  # read by dvc.yaml alone: checked here
        section(raw, "cpu", CpuConfig)  # read by the cxrpipe CLI before every stage (cxrpipe.cli): checked here
        run_check(params, out, dvc_yaml, data=data)


if __name__ == "__main__":
    typer.run(main)
