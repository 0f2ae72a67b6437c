"""`cxrpipe launch <stage> ...`: run embed or pretrain as params `compute` says (dvc.yaml's command for both)."""

from __future__ import annotations

import os
from typing import Annotated

import typer

# the stage's own options pass through untouched
CONTEXT_SETTINGS = {"allow_extra_args": True, "ignore_unknown_options": True}


def main(
    ctx: typer.Context,
    stage: Annotated[str, typer.Argument(help="embed or pretrain; the options after it are the stage's own")],
) -> None:
    """Run `cxrpipe <stage> ...` in this process, under `accelerate launch` on this node, or across the nodes
    of a SLURM job, as params `compute` says (launcher, num_processes, config_file; docs/cluster.md). Warns
    when more GPUs are visible than the stage uses."""
    from cxrpipe.config import ConfigError, load_params, section
    from cxrpipe.cpu import apply_params_cpu_isa
    from cxrpipe.launch import ComputeConfig, LaunchError, params_path, plan_launch, visible_gpus

    args = list(ctx.args)
    try:
        # cpu.isa before visible_gpus imports torch; the processes accelerate / srun start inherit it
        apply_params_cpu_isa(params_path(args))
        cfg = section(load_params(params_path(args)), "compute", ComputeConfig)
        plan = plan_launch(cfg, stage, args, visible_gpus())
    except (ConfigError, LaunchError) as e:
        typer.echo(f"launch failed: {e}", err=True)
        raise typer.Exit(2) from None
    for w in plan.warnings:
        typer.echo(f"cxrpipe launch: warning: {w}", err=True)
    if plan.argv is None:
        from cxrpipe.cli import app

        app([stage, *args], prog_name="cxrpipe")
        return
    typer.echo(f"cxrpipe launch: {plan.processes} processes: {' '.join(plan.argv)}", err=True)
    os.execvp(plan.argv[0], plan.argv)


if __name__ == "__main__":
    typer.run(main)
