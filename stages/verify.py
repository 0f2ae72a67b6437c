"""`cxrpipe verify`: read every byte of the caches and compare with the checksums recorded when they were written."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def main(
    files: Annotated[
        Optional[list[Path]],
        typer.Argument(help="images.h5 / text.h5 files (default: data/prepared/images.h5 data/cache/text.h5)"),
    ] = None,
) -> None:
    """Check images.h5 and text.h5 end to end (sha256 of every dataset, HDF5 chunk checksums); exit 1 naming
    the stage to rerun (`dvc repro -f <stage>`) when one is damaged. Reads are checked anyway; this reads all."""
    from cxrpipe.data.image_cache import ImageCacheError, verify_image_cache
    from cxrpipe.io import CorruptFileError
    from cxrpipe.text.cache import TextCacheError, verify_text_cache

    paths = files or [Path("data/prepared/images.h5"), Path("data/cache/text.h5")]
    bad = 0
    for path in paths:
        check = verify_text_cache if _is_text_cache(path) else verify_image_cache
        try:
            sums = check(path)
        except (CorruptFileError, ImageCacheError, TextCacheError) as e:
            typer.echo(f"FAILED {path}: {e}", err=False)
            bad += 1
            continue
        typer.echo(f"ok {path}: " + ", ".join(f"{k} sha256 {v[:12]}" for k, v in sums.items()))
    if bad:
        raise typer.Exit(1)


def _is_text_cache(path: Path) -> bool:
    """text.h5 by name, else by content (a damaged file falls back to its name)."""
    if path.name.startswith("text"):
        return True
    try:
        import h5py

        with h5py.File(path, "r") as f:
            return "hidden_size" in f.attrs
    except OSError:
        return False


if __name__ == "__main__":
    typer.run(main)
