"""Shared test fixtures. Tests are offline, CPU-only and small."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Real sample files live beside the checkout (../shared/data); users' clones lack them.
SHARED_DATA = Path(os.environ.get("CXRPIPE_SHARED_DATA", REPO.parent / "shared" / "data"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def shared_data() -> Path:
    """``../shared/data``; the test is skipped where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present (only the developers' checkout has it)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory):
    """Every stage of dvc.yaml run once, in-process, at test size, on reports carrying a canary
    (tests/pipeline.py); read-only: tests that change files work on a copy (:func:`pipeline_copy`)."""
    from tests.pipeline import run_pipeline

    return run_pipeline(tmp_path_factory.mktemp("pipeline") / "run")


@pytest.fixture
def pipeline_copy(pipeline, tmp_path, monkeypatch):
    """A fresh copy of the finished run's folder as the working directory."""
    import shutil

    root = tmp_path / "run"
    shutil.copytree(pipeline.root, root, symlinks=True)
    monkeypatch.chdir(root)
    return root
