"""DVC stage `demo_nih`: write the miniature NIH ChestX-ray14 tree (synthetic PNGs, NIH's CSV and list files)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def main(
    params: Annotated[Path, typer.Option(help="params.yaml; reads the `demo_nih` section")] = Path("params.yaml"),
    out: Annotated[Path, typer.Option(help="output folder (replaces an earlier demo NIH tree)")] = Path("data/demo-nih"),
) -> None:
    """Generate the demo NIH ChestX-ray14 tree: Data_Entry_2017_v2020.csv, the two list files, image folders."""
    from cxrpipe.config import section
    from cxrpipe.data.demo.nih import DemoNIHConfig, write_demo_nih
    from cxrpipe.log import setup_logging, stage_errors

    setup_logging()
    with stage_errors("demo_nih"):
        write_demo_nih(section(params, "demo_nih", DemoNIHConfig), out)


if __name__ == "__main__":
    typer.run(main)
