"""`cxrpipe profile [NAME]`: select params-<NAME>.yaml for `dvc repro` (reversible; `demo` goes back)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def main(
    name: Annotated[Optional[str], typer.Argument(help="demo, or <name> of a params-<name>.yaml; none: list them")] = None,
    root: Annotated[Path, typer.Option(help="the repository root (where params.yaml is)")] = Path("."),
) -> None:
    """Select a params profile: params-NAME.yaml is copied over params.yaml (the demo's params.yaml is kept as
    params-demo.yaml; edits of params.yaml go back into params-NAME.yaml at the next switch); `cxrpipe profile
    demo` restores the tree exactly. Without NAME: list the profiles."""
    from cxrpipe.config import load_params
    from cxrpipe.profiles import PARAMS, ProfileError, active, available, missing_inputs, select

    try:
        if name is None:
            current = active(root)
            for n in available(root):
                typer.echo(f"{'*' if n == current else ' '} {n}")
            return
        before, now = select(root, name)
    except ProfileError as e:
        typer.echo(f"profile: {e}", err=True)
        raise typer.Exit(2) from None
    own = "its own file" if now == "demo" else f"a copy of params-{now}.yaml (edits go back into it at the next switch)"
    typer.echo(f"profile {now} (was {before}): {PARAMS} is {own}; `cxrpipe profile {before}` switches back")
    for key, path in missing_inputs(load_params(root / PARAMS)):
        typer.echo(f"  set {key} in {PARAMS}: {path} does not exist here", err=True)
    typer.echo("  `cxrpipe plan` prints the runs, disk and hours `dvc repro` will take")


if __name__ == "__main__":
    typer.run(main)
