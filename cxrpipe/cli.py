"""The ``cxrpipe`` console script: every DVC stage as a sub-command.

Each stage's CLI lives in ``stages/<stage>.py`` (one Typer command, thin: parse, build config, call the
library). This module only gathers them, so ``cxrpipe prepare ...`` and ``python stages/prepare.py ...``
are the same command.
"""

from __future__ import annotations

import importlib
import inspect

import typer

# (sub-command, module in stages/)
STAGES = (
    ("demo-data", "demo_data"),
    ("demo-nih", "demo_nih"),
    ("bench-data", "bench_data"),
    ("prepare", "prepare"),
    ("transfer-prepare", "transfer_prepare"),
    ("text-model", "text_model"),
    ("embed", "embed"),
    ("pretrain", "pretrain"),
    ("random-encoder", "random_encoder"),
    ("finetune", "finetune"),
    ("pixels", "pixels"),
    ("compare", "compare"),
    ("label-efficiency", "label_efficiency"),
    ("label-efficiency-summary", "label_efficiency_summary"),
    ("transfer", "transfer"),
    ("transfer-compare", "transfer_compare"),
    ("zeroshot-prompts", "zeroshot_prompts"),
    ("zeroshot", "zeroshot"),
    ("retrieval", "retrieval"),
    ("attention-maps", "attention_maps"),
    ("verify", "verify"),  # not a DVC stage: checks the caches' checksums
)

app = typer.Typer(
    name="cxrpipe",
    help="Chest X-ray encoder aligned with a frozen LLM's reading of the report: the pipeline's stages.",
    no_args_is_help=True,
    add_completion=False,
)

for _name, _module in STAGES:
    try:
        _mod = importlib.import_module(f"stages.{_module}")
    except ModuleNotFoundError as e:  # a stage not written yet
        if e.name != f"stages.{_module}":
            raise
        continue
    # the list shows the docstring's first paragraph on one line; `<stage> --help` shows it all
    _summary = " ".join(inspect.getdoc(_mod.main).split("\n\n")[0].split())
    app.command(name=_name, short_help=_summary)(_mod.main)


def main() -> None:
    app()
