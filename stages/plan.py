"""`cxrpipe plan`: the runs, disk and hours `dvc repro` will take under the selected params, before it starts."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def main(
    params: Annotated[Path, typer.Option(help="params.yaml (the selected profile: `cxrpipe profile`)")] = Path(
        "params.yaml"
    ),
    root: Annotated[Path, typer.Option(help="the repository root (dvc.yaml, data/)")] = Path("."),
    gpu_tflops: Annotated[
        Optional[float],
        typer.Option(help="sustained bf16 TFLOP/s of one of your GPUs, for every GPU stage; default: the rates "
                          "measured on one H200 (benchmarks/results/gpu-h200)"),
    ] = None,
    gpus: Annotated[Optional[int], typer.Option(help="GPUs for the wall-time line (default: visible, else 8)")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="also write the plan as JSON here")] = None,
) -> None:
    """Print what `dvc repro` will run: per stage family the runs, the work (images, tokens, epochs), the disk
    of its outputs and the time (GPU-hours; hours on this project's measured CPU), each figure marked
    measured (where, on what) or estimated (from what). Reads the prepared manifest when present, else the
    source's tables, else published counts."""
    import dataclasses
    import json

    from cxrpipe.config import ConfigError, load_params
    from cxrpipe.launch import visible_gpus
    from cxrpipe.plan import format_plan, make_plan
    from cxrpipe.profiles import active

    try:
        raw = load_params(root / params)
        plans, counts = make_plan(root / params, root, gpu_tflops)
    except ConfigError as e:
        typer.echo(f"plan failed: {e}", err=True)
        raise typer.Exit(2) from None
    n_gpus = gpus if gpus is not None else (visible_gpus() or 8)
    which = f"profile {active(root)}" if params == Path("params.yaml") else str(params)
    gpu = (f"GPU at {gpu_tflops:g} TFLOP/s sustained (assumed)" if gpu_tflops is not None else
           "GPU: rates measured on one H200 (--gpu-tflops for yours)")
    header = f"cxrpipe plan: {which}; data {raw['data']['source']} at {raw['data']['root']}; {gpu}"
    typer.echo(format_plan(plans, counts, header, n_gpus))
    if json_out:
        json_out.write_text(json.dumps([dataclasses.asdict(p) for p in plans], indent=2) + "\n")


if __name__ == "__main__":
    typer.run(main)
