"""Fixtures of the pretraining tests; the synthetic data itself is written by :mod:`.synthetic`."""

from __future__ import annotations

from pathlib import Path

import pytest

from .synthetic import make_pairs


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, Path]:
    """(prepared folder, text.h5) of 24 train + 8 validate synthetic image-report pairs."""
    return make_pairs(tmp_path_factory.mktemp("pairs"))
