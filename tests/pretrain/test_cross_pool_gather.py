"""The cross-attention pool's gather under 2 processes: the real ``PretrainModel.forward`` (cross_pool_worker.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_cross_pool_gathers_tokens_and_ids_across_two_processes(tmp_path):
    """2 gloo processes, each with half the global batch (a shared text row and a shared study across the
    ranks, reports of other lengths per rank): each rank's contrastive loss and the rank-averaged gradient
    equal 1 process's on the whole batch, and differ from the loss without ids."""
    out = tmp_path / "result.json"
    script = Path(__file__).with_name("cross_pool_worker.py")
    subprocess.run([sys.executable, str(script), str(out)], check=True, timeout=300)
    r = json.loads(out.read_text())
    assert r["world"] == 2
    assert r["loss_ranks"] == pytest.approx([r["loss_single"]] * 2, rel=1e-5)
    assert r["max_grad_error"] < 1e-5 * max(1.0, r["grad_scale"]) and r["grad_scale"] > 0
    assert abs(r["loss_single"] - r["loss_no_ids"]) > 1e-4  # the duplicates across the ranks changed the loss
