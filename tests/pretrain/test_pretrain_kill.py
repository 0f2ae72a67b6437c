"""`cxrpipe pretrain --resume` SIGKILLed at fixed points, then rerun: the same encoder and loss curve as an
uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from safetensors.torch import load_file

from .synthetic import TINY, make_pairs

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning")]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from cxrpipe.text import embed

    root = tmp_path_factory.mktemp("pkill")
    params = {
        "data": {"sections": ["findings", "impression"]},
        "embed": {"model": "tiny-llm", "quantization": "fp32"},
        "pretrain": {**TINY, "epochs": 4, "batch_size": 8, "checkpoint_every": 1},
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    ecfg = embed.EmbedConfig(model="tiny-llm", quantization="fp32")
    prepared, text = make_pairs(root, fingerprint=lambda texts: embed.expected_fingerprint(
        ecfg, texts, ("findings", "impression"), strict_identity=False))
    ref = root / "ref"
    res = subprocess.run(_cmd(root, prepared, text, ref), capture_output=True, text=True, env=_env())
    assert res.returncode == 0, res.stderr[-3000:]
    return root, prepared, text, ref


def _env():
    return dict(os.environ, OMP_NUM_THREADS="1")


def _cmd(root, prepared, text, out):
    return [sys.executable, "-m", "cxrpipe", "pretrain", "--params", str(root / "params.yaml"), "--variant",
            "multimodal", "--prepared", str(prepared), "--text-cache", str(text), "--out", str(out / "model"),
            "--metrics", str(out / "metrics.json"), "--plots", str(out / "plots"), "--resume"]


def _step(ckpt) -> int:
    try:
        return int(torch.load(ckpt, weights_only=True)["step"])
    except Exception:  # noqa: BLE001 - not there yet
        return -1


@pytest.mark.parametrize("kill_at_step", [1, 5])
def test_sigkill_then_resume_equals_uninterrupted(setup, tmp_path, kill_at_step):
    root, prepared, text, ref = setup
    out = tmp_path / "run"
    proc = subprocess.Popen(_cmd(root, prepared, text, out), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    ckpt, deadline = out / "model" / "checkpoint.pt", time.monotonic() + 180
    while _step(ckpt) < kill_at_step:
        assert proc.poll() is None, "pretrain finished before it was killed"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and not (out / "model" / "encoder.safetensors").exists()
    res = subprocess.run(_cmd(root, prepared, text, out), capture_output=True, text=True, env=_env())
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resuming multimodal from step" in res.stderr
    a = load_file(str(ref / "model" / "encoder.safetensors"))
    b = load_file(str(out / "model" / "encoder.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (out / "plots" / "loss.csv").read_text() == (ref / "plots" / "loss.csv").read_text()
