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
    from cxrpipe.config import ConfigError, load_params, section
    from cxrpipe.data.records import DatasetFormatError
    from cxrpipe.data.image_cache import ImageCacheError
    from cxrpipe.data.prepare import DataConfig, PrepareConfig, PrepareError, run_prepare
    from cxrpipe.log import setup_logging

    setup_logging()
    try:
        p = load_params(params)
        run_prepare(section(p, "data", DataConfig), section(p, "prepare", PrepareConfig), out)
    except (ConfigError, DatasetFormatError, PrepareError, ImageCacheError) as e:  # a clear message, not a traceback
        typer.echo(f"prepare failed: {e}", err=True)
        raise typer.Exit(1) from None


if __name__ == "__main__":
    typer.run(main)
