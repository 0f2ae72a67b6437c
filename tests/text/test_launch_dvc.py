"""`dvc repro` runs embed and pretrain through dvc.yaml's own commands under `compute.launcher: accelerate`
with 2 CPU processes (gloo): a tiny DVC repository with the tiny LLaMA, synthetic images and this repo's
params.yaml shrunk to test size."""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from .conftest import report

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
TINY_PRETRAIN = {  # the ViT of tests/pretrain (img 32, patch 8, dim 32, depth 2), one epoch of 3 steps
    "epochs": 1, "batch_size": 8,
    "model": {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2,
              "decoder_embed_dim": 32, "decoder_depth": 1, "decoder_num_heads": 2},
    "pool": {"dim": 16, "num_heads": 2},
}


def merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_prepared(folder: Path, n_train: int = 24, n_val: int = 8, size: int = 32) -> None:
    """images.csv, studies.csv and images.h5 as prepare writes them: one frontal image per study."""
    from cxrpipe.data.image_cache import ImageCacheWriter
    from cxrpipe.data.manifest import ImageRecord, StudyRecord, write_manifest

    rng = np.random.default_rng(0)
    n = n_train + n_val
    images, studies = [], []
    for i in range(n):
        split = "train" if i < n_train else "validate"
        sid, subject = 50000000 + i, 10000000 + i
        images.append(ImageRecord(i, f"d{i:04d}", sid, subject, split, "PA", f"x/{i}.jpg"))
        studies.append(StudyRecord(sid, subject, split, report(i), {}, tuple([math.nan] * 14)))
    with ImageCacheWriter(folder / "images.h5", [im.dicom_id for im in images], size=size) as w:
        for i in range(n):
            w.write(i, rng.integers(0, 256, (size, size), dtype=np.uint8))
    write_manifest(folder, images, studies)


def tiny_repo(tmp_path: Path, model_dir: Path, compute: dict) -> Path:
    """A DVC repository holding dvc.yaml's embed, embed_sentences and pretrain stages (commands and params as
    shipped, the sentence term on; only deps under data/ kept: the code is not copied) and params.yaml shrunk to
    test size."""
    repo = tmp_path / "repo"
    write_prepared(repo / "data" / "prepared")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params = merge(params, {
        "embed": {"model": str(model_dir), "quantization": "fp32", "prompt": "The findings are:",
                  "max_tokens": 192, "batch_tokens": 100, "part_tokens": 40},
        "pretrain": TINY_PRETRAIN,
        "compute": compute,
    })
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    kept = {"embed": stages["embed"], "embed_sentences": stages["embed_sentences"], "pretrain": stages["pretrain"]}
    kept["embed"]["deps"] = [d for d in kept["embed"]["deps"] if d.startswith("data/prepared")]
    kept["embed_sentences"]["do"]["deps"] = [d for d in kept["embed_sentences"]["do"]["deps"]
                                             if d.startswith("data/prepared")]
    kept["pretrain"]["do"]["deps"] = [d for d in kept["pretrain"]["do"]["deps"] if d == "${pipeline.sentence_dep}"
                                      or (d.startswith("data/") and d != "data/check.json")]
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": kept}, sort_keys=False))
    return repo


def dvc(repo: Path, *args: str) -> subprocess.CompletedProcess:
    bin_dir = str(Path(sys.executable).parent)  # the venv's `cxrpipe` and `dvc`
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path])}
    dvc_bin = shutil.which("dvc", path=env["PATH"])
    assert dvc_bin, "dvc is not installed beside this Python"
    return subprocess.run([dvc_bin, *args], cwd=repo, env=env, capture_output=True, text=True, timeout=900)


def test_dvc_repro_runs_embed_and_pretrain_under_a_two_process_launcher(tiny_model_dir, tmp_path):
    compute = {"launcher": "accelerate", "num_processes": 2, "main_process_port": free_port()}
    repo = tiny_repo(tmp_path, tiny_model_dir, compute)
    assert dvc(repo, "init", "--no-scm", "-q").returncode == 0
    res = dvc(repo, "repro", "pretrain@multimodal")
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    out = res.stdout + res.stderr
    assert "cxrpipe launch: 2 processes" in out and "accelerate.commands.launch" in out
    report_ = json.loads((repo / "data" / "cache" / "text-report.json").read_text())
    metrics = json.loads((repo / "data" / "metrics" / "pretrain-multimodal.json").read_text())
    assert report_["n_processes"] == 2 and metrics["processes"] == 2  # both really ran as 2 ranks
    model = repo / "data" / "models" / "multimodal"
    assert (model / "encoder.safetensors").exists() and "architecture" in json.loads((model / "config.json").read_text())
    assert "Not for clinical use" in (model / "README.md").read_text()  # the model card beside it
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    assert {"embed", "embed_sentences@sentences", "pretrain@multimodal"} <= set(lock)
    assert "sentence_loss" in metrics["final_epoch"]  # the sentence term trained under 2 ranks
    assert lock["embed"]["cmd"].startswith("cxrpipe launch embed ")
    # the process count is not a DVC param: going back to one process leaves the finished stages as they are
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["compute"] = {**params["compute"], "launcher": "none", "num_processes": 1}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = dvc(repo, "status", "embed", "pretrain@multimodal")
    assert status.returncode == 0 and "changed" not in status.stdout, status.stdout
