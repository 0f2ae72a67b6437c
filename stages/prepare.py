"""DVC stage `prepare`: a pretraining source (MIMIC-CXR(-JPG), IU X-ray) -> manifest, images.h5, prepare report and rejects list."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def main(
    params: Annotated[Path, typer.Option(help="params.yaml; reads the `data` and `prepare` sections")] = Path("params.yaml"),
    out: Annotated[Path, typer.Option(help="output folder")] = Path("data/prepared"),
) -> None:
    """Read the data source; write the manifest, images.h5, the prepare report and the rejects list."""
    from cxrpipe.config import load_params, section
    from cxrpipe.data.prepare import DataConfig, PrepareConfig, run_prepare
    from cxrpipe.log import setup_logging, stage_errors

    setup_logging()
    with stage_errors("prepare"):
        p = load_params(params)
        run_prepare(section(p, "data", DataConfig), section(p, "prepare", PrepareConfig), out)


if __name__ == "__main__":
    typer.run(main)
