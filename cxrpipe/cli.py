"""The ``cxrpipe`` console script: every DVC stage as a sub-command.

Each stage's CLI lives in ``stages/<stage>.py`` (one Typer command, thin: parse, build config, call the
library). This module only gathers them, so ``cxrpipe prepare ...`` and ``python stages/prepare.py ...``
are the same command.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from typing import Annotated, Any, Callable

import typer

# (sub-command, module in stages/)
STAGES = (
    ("check", "check"),  # the first DVC stage: params and data layout, in seconds
    ("demo-data", "demo_data"),
    ("demo-nih", "demo_nih"),
    ("bench-data", "bench_data"),
    ("prepare", "prepare"),
    ("transfer-prepare", "transfer_prepare"),
    ("text-model", "text_model"),
    ("embed", "embed"),
    ("embed-sentences", "embed_sentences"),  # the sentence term's cache: stage embed_sentences (pipeline.sentences)
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
    ("launch", "launch"),  # not a stage: dvc.yaml's embed/pretrain command (params `compute`)
    ("profile", "select_profile"),  # not a stage: selects params-<name>.yaml
    ("plan", "plan"),  # not a stage: what `dvc repro` will cost
    ("results", "results"),  # not a DVC stage: writes the results blocks of README.md and docs/
)

app = typer.Typer(
    name="cxrpipe",
    help="Chest X-ray encoder aligned with a frozen LLM's reading of the report: the pipeline's stages.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,  # plain help: `--resume / --no-resume`, not typer's rich `<bool>` type column
)


def _version(value: bool) -> None:
    if value:
        from cxrpipe import __version__

        typer.echo(f"cxrpipe {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    pass


def with_cpu_isa(stage: Callable[..., Any]) -> Callable[..., Any]:
    """``stage`` preceded by its params' ``cpu.isa`` (cxrpipe.cpu), before it imports torch; the signature
    (Typer's options) is kept; a bad ``cpu`` section is one line naming the stage (its script's name). Stages
    without a ``params`` option run as they are (``launch`` applies it itself, from the stage's arguments)."""
    if "params" not in inspect.signature(stage).parameters:
        return stage

    @functools.wraps(stage)
    def run(*args: Any, **kwargs: Any) -> Any:
        from cxrpipe.cpu import apply_params_cpu_isa
        from cxrpipe.log import stage_errors

        params = kwargs.get("params", inspect.signature(stage).parameters["params"].default)
        with stage_errors(stage.__module__.rsplit(".", 1)[-1]):
            apply_params_cpu_isa(params)
        return stage(*args, **kwargs)

    return run


for _name, _module in STAGES:
    try:
        _mod = importlib.import_module(f"stages.{_module}")
    except ModuleNotFoundError as e:  # a stage not written yet
        if e.name != f"stages.{_module}":
            raise
        continue
    # the list shows the docstring's first paragraph on one line; `<stage> --help` shows it all
    _summary = " ".join(inspect.getdoc(_mod.main).split("\n\n")[0].split())
    app.command(name=_name, short_help=_summary, context_settings=getattr(_mod, "CONTEXT_SETTINGS", None))(
        with_cpu_isa(_mod.main)
    )


def main() -> None:
    app()
