"""`cxrpipe results`: write every results block of README.md and docs/*.md from data/metrics (`make results`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def main(
    pages: Annotated[
        Optional[list[Path]], typer.Argument(help="Markdown pages (default: README.md and docs/*.md)")
    ] = None,
    metrics: Annotated[Path, typer.Option(help="the metrics folder the blocks are written from")] = Path(
        "data/metrics"
    ),
    check: Annotated[bool, typer.Option(help="write nothing; exit 1 naming every block that differs")] = False,
) -> None:
    """Rewrite the generated blocks (between `<!-- results:<name> -->` and `<!-- /results -->`) of the pages from
    the metrics JSONs; `--check` only lists the blocks whose numbers differ from the metrics (a typed or stale
    number) and exits 1 when there is one. Not a DVC stage: it writes pages, not data."""
    from cxrpipe.results import ResultsError, find_pages, update_pages

    try:
        changed = update_pages(pages or find_pages("."), metrics, check=check)
    except ResultsError as e:
        typer.echo(f"results failed: {e}", err=True)
        raise typer.Exit(1) from None
    for item in changed:
        typer.echo(("stale " if check else "rewrote ") + item)
    if check and changed:
        typer.echo(f"{len(changed)} results block(s) differ from {metrics}: run `make results`", err=True)
        raise typer.Exit(1)


if __name__ == "__main__":
    typer.run(main)
