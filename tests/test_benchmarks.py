"""benchmarks/gpu.py cannot rot: its --tiny mode runs every row on CPU; without CUDA the real mode stops at once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_gpu_benchmark_tiny_prints_every_row(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--tiny", "--workdir", str(tmp_path)],
                         capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = [line for line in res.stdout.splitlines() if line.startswith("stage ")]
    assert [r.split("  ")[0] for r in rows] == ["stage 1 LLaMA-2-7b nf4", "stage 1 LLaMA-2-7b bf16",
                                                "stage 2 ViT-B/16 bf16 eager aug device",
                                                "stage 2 ViT-B/16 bf16 compile aug device",
                                                "stage 2 ViT-B/16 bf16 eager aug loader"]
    for r in rows:
        assert float(r.split()[-1]) > 0  # the MIMIC-CXR hours column is a number


def test_gpu_benchmark_without_cuda_fails_fast_and_clearly(tmp_path):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(ROOT))
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--workdir", str(tmp_path)],
                         capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 2 and "no CUDA device" in res.stderr
    assert not any(tmp_path.iterdir())  # stopped before writing a checkpoint
