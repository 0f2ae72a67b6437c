"""DVC stage `demo_data`: write the miniature MIMIC-CXR-JPG demo tree (synthetic images and reports)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def main(
    params: Annotated[Path, typer.Option(help="params.yaml; reads the `demo` section")] = Path("params.yaml"),
    out: Annotated[Path, typer.Option(help="output folder (replaces an earlier demo tree)")] = Path("data/demo"),
) -> None:
    """Generate the demo data: MIMIC-CXR-JPG's CSVs, image folders (a few DICOMs), reports zip, corruptions."""
    from cxrpipe.config import section
    from cxrpipe.data.demo import DemoConfig, write_demo_tree
    from cxrpipe.log import setup_logging, stage_errors

    setup_logging()
    with stage_errors("demo_data"):
        write_demo_tree(section(params, "demo", DemoConfig), out)


if __name__ == "__main__":
    typer.run(main)
