"""DVC stage `bench_data`: the bench profile's tree (real IU X-ray reports, images drawn from their labels)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def main(
    params: Annotated[Path, typer.Option(help="params.yaml; reads the `bench` section")] = Path("params.yaml"),
    out: Annotated[Path, typer.Option(help="output folder (replaces an earlier bench tree, nothing else)")] = Path(
        "data/bench"
    ),
) -> None:
    """Write an IU-X-ray-shaped tree that the iu-xray reader reads: the real NLMCXR_reports.tgz, a PNG per image
    drawn by the demo's renderer from its report's labels, and a projections table of the real View Positions."""
    from cxrpipe.config import section
    from cxrpipe.data.bench import BenchConfig, write_bench_tree
    from cxrpipe.log import setup_logging, stage_errors

    setup_logging()
    with stage_errors("bench_data", also=(FileNotFoundError,)):  # pip download left no wheel
        write_bench_tree(section(params, "bench", BenchConfig), out)


if __name__ == "__main__":
    typer.run(main)
