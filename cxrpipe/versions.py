"""The versions of the numeric stack a result was computed with, for logs that are compared across machines.

torch is pinned by the Makefile; the rest float to the newest release `make setup` finds, and a fresh machine did
not reproduce the committed reference run bit for bit (docs/evaluations.md): a log row that carries these can be
told apart from one made with other releases.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Sequence

NUMERIC_STACK = ("torch", "torchvision", "timm", "numpy", "accelerate", "transformers", "scikit-learn", "pillow", "h5py")


def package_versions(names: Sequence[str] = NUMERIC_STACK) -> dict[str, str | None]:
    """``{distribution name: installed version}`` (None where it is not installed)."""
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out
