"""One line, everywhere (issue 17, item 6), and outputs named from the encoder's identity (item 5).

Every stage of dvc.yaml is run with the command DVC would give it, on a copy of a finished run (the `pipeline`
fixture, tests/pipeline.py) with one input removed, then with it damaged: the stage must exit 1 with ONE line
that names the input and what to run (no traceback).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from tests.pipeline import SKIPPED_STAGES, invoke


def _remove(path: str) -> None:
    p = Path(path)
    shutil.rmtree(p) if p.is_dir() else p.unlink()


def _truncate(path: str) -> None:
    p = Path(path)
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _garble(path: str) -> None:
    Path(path).write_bytes(b"\x00garbage{[ not what it should be \xff")


def _param(key: str, value) -> None:
    params = yaml.safe_load(Path("params.yaml").read_text())
    *path, last = key.split(".")
    node = params
    for part in path:
        node = node[part]
    node[last] = value
    Path("params.yaml").write_text(yaml.safe_dump(params))


# stage -> ((what is done to its input, text the line must hold), ...): a missing input, then a damaged one
CASES = {
    "check": ((lambda: _remove("params.yaml"), "params file not found: params.yaml"),
              (lambda: _garble("params.yaml"), "params.yaml is not valid YAML")),
    "demo_data": ((lambda: _param("demo.n_studies", "many"), "demo.n_studies"),
                  (lambda: _garble("params.yaml"), "params.yaml is not valid YAML")),
    "prepare": ((lambda: _remove("data/demo"), "data.root = data/demo: no such folder"),
                (lambda: _garble("data/demo/mimic-cxr-reports.zip"), "mimic-cxr-reports.zip: not a zip file")),
    "demo_nih": ((lambda: _param("demo_nih.n_images", "lots"), "params 'demo_nih.n_images': expected an integer"),
                 (lambda: _garble("params.yaml"), "params.yaml is not valid YAML")),
    "transfer_prepare@nih_cxr14": (
        (lambda: _remove("data/demo-nih"), "transfer_data.nih_cxr14.root = data/demo-nih: no such folder"),
        (lambda: _garble("data/demo-nih/Data_Entry_2017_v2020.csv"), "not a readable CSV table")),
    "embed": ((lambda: _remove("data/prepared/studies.csv"), "data/prepared/studies.csv not found"),
              (lambda: _garble("data/prepared/studies.csv"), "data/prepared/studies.csv is unreadable or corrupt")),
    "embed_sentences@sentences": (
        (lambda: _remove("data/prepared/studies.csv"), "data/prepared/studies.csv not found"),
        (lambda: _garble("data/prepared/studies.csv"), "data/prepared/studies.csv is unreadable or corrupt")),
    "pretrain@multimodal": (  # the sentence term's cache (on in every profile)
        (lambda: _remove("data/cache/sentences.h5"), "data/cache/sentences.h5 not found (the sentence cache)"),
        (lambda: _truncate("data/cache/sentences.h5"), "data/cache/sentences.h5 is unreadable or corrupt")),
    "pretrain@mae": ((lambda: _remove("data/cache/text.h5"), "data/cache/text.h5 not found (text cache)"),
                     (lambda: _truncate("data/cache/text.h5"), "data/cache/text.h5 is unreadable or corrupt")),
    "random_encoder": ((lambda: _param("pretrain.model.depth", "deep"), "pretrain.model.depth"),
                       (lambda: _garble("params.yaml"), "params.yaml is not valid YAML")),
    "finetune@mae-linear": (
        (lambda: _remove("data/models/mae"), "data/models/mae not found (encoder folder)"),
        (lambda: _truncate("data/models/mae/encoder.safetensors"), "encoder.safetensors is unreadable or corrupt")),
    "pixels": ((lambda: _remove("data/prepared/images.h5"), "data/prepared/images.h5 not found"),
               (lambda: _truncate("data/prepared/images.h5"), "data/prepared/images.h5 is unreadable or corrupt")),
    "compare": ((lambda: [_remove(str(p)) for p in Path("data/metrics").glob("*-*.json")], "no protocol has both"),
                (lambda: _garble("data/metrics/mae-linear.json"), "mae-linear.json is unreadable or corrupt")),
    "label_efficiency@mae": (
        (lambda: _remove("data/models/mae"), "data/models/mae not found (encoder folder)"),
        (lambda: _garble("data/models/mae/config.json"), "data/models/mae/config.json is unreadable or corrupt")),
    "label_efficiency_summary": (
        (lambda: _remove("data/label-efficiency"), "data/label-efficiency/mae/summary.json not found"),
        (lambda: _garble("data/label-efficiency/mae/summary.json"), "summary.json is unreadable or corrupt")),
    "transfer@nih_cxr14-mae-fc": (
        (lambda: _remove("data/transfer/nih_cxr14"), "data/transfer/nih_cxr14/studies.csv not found"),
        (lambda: _truncate("data/models/mae/encoder.safetensors"), "encoder.safetensors is unreadable or corrupt")),
    "transfer_compare": (
        (lambda: _remove("data/transfer-runs"), "no transfer runs"),
        (lambda: _garble("data/transfer-runs/nih_cxr14/mae-fc/summary.json"), "is unreadable or corrupt")),
    "zeroshot_prompts": ((lambda: _remove("tiny-llama/tokenizer.json"), "its tokenizer did not load"),
                         (lambda: _garble("tiny-llama/config.json"), "did not load")),
    "zeroshot@mae": ((lambda: _remove("data/cache/prompts.h5"), "data/cache/prompts.h5 not found"),
                     (lambda: _truncate("data/cache/prompts.h5"), "prompts.h5 is unreadable or corrupt")),
    "zeroshot_transfer@nih_cxr14-mae": (
        (lambda: _remove("data/transfer/nih_cxr14"), "data/transfer/nih_cxr14"),
        (lambda: _truncate("data/cache/prompts.h5"), "prompts.h5 is unreadable or corrupt")),
    "retrieval@mae": ((lambda: _remove("data/cache/text.h5"), "data/cache/text.h5 not found (text cache)"),
                      (lambda: _truncate("data/cache/text.h5"), "data/cache/text.h5 is unreadable or corrupt")),
    "attention_maps": (
        (lambda: _remove("data/models/multimodal/text_head.safetensors"), "text_head.safetensors not found"),
        (lambda: _truncate("data/cache/text.h5"), "data/cache/text.h5 is unreadable or corrupt")),
}


# stages that run another stage's command (its one line names that command)
COMMAND_OF = {"zeroshot_transfer": "zeroshot"}


def remedy(stage: str, line: str) -> bool:
    """The line says what to do: the command that makes the input (`dvc repro ...`), or, for what the user
    provides (params, the dataset's files, the text model folder), the key or file to fix."""
    return any(r in line for r in ("dvc repro", "params", "data.root", "transfer_data.", "expected", "text_model",
                                   "not a readable CSV table"))


def test_every_stage_has_a_case(pipeline):
    stages = {s.split("@")[0] for s in pipeline.stages} | set(SKIPPED_STAGES)
    assert {s.split("@")[0] for s in CASES} | set(SKIPPED_STAGES) == stages


@pytest.mark.parametrize("kind", ["missing", "damaged"])
@pytest.mark.parametrize("stage", list(CASES))
def test_a_missing_or_damaged_input_is_one_line(pipeline, pipeline_copy, stage, kind):
    break_it, expected = CASES[stage][0 if kind == "missing" else 1]
    break_it()
    # a foreach stage over a params list (demo_data@demo) is cased by its name
    argv = pipeline.commands.get(stage) or next(v for k, v in pipeline.commands.items() if k.split("@")[0] == stage)
    res = invoke(argv)
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert res.exit_code == 1, f"exit {res.exit_code}: {res.output}{res.exception!r}"
    command = COMMAND_OF.get(stage.split("@")[0], stage.split("@")[0])  # the CLI command the stage runs
    assert len(lines) == 1 and lines[0].startswith(f"{command} failed: "), res.output
    assert expected in lines[0], lines[0]
    assert remedy(stage, lines[0]), lines[0]
    if kind == "damaged" and "unreadable or corrupt" in lines[0]:
        assert "dvc repro -f " in lines[0]  # what remakes it


# -------------------------------------------------------------------------------- item 5: encoder identity


def test_a_stage_run_by_hand_names_its_output_after_the_encoder(pipeline_copy):
    """Before: `cxrpipe finetune --encoder data/models/multimodal` wrote data/metrics/mae-linear.json."""
    before = Path("data/metrics/mae-linear.json").read_bytes()
    Path("data/metrics/multimodal-linear.json").unlink()
    res = invoke(["finetune", "--encoder", "data/models/multimodal", "--protocol", "linear"])
    assert res.exit_code == 0, res.output
    assert Path("data/metrics/mae-linear.json").read_bytes() == before
    assert Path("data/metrics/multimodal-linear.json").exists() and Path("data/predictions/multimodal-linear.npz").exists()
    for argv, out in ((["zeroshot", "--encoder", "data/models/mae"], "data/metrics/zeroshot-mae.json"),
                      (["retrieval", "--encoder", "data/models/mae"], "data/metrics/retrieval-mae.json")):
        Path(out).unlink()
        assert invoke(argv).exit_code == 0 and Path(out).exists()
    shutil.copytree("data/models/multimodal", "data/models/mae-copy")  # a multimodal encoder in an odd folder
    Path("data/metrics/multimodal-fc.json").unlink()
    assert invoke(["finetune", "--encoder", "data/models/mae-copy"]).exit_code == 0  # protocol fc by default
    assert not Path("data/metrics/mae-copy-fc.json").exists() and Path("data/metrics/multimodal-fc.json").exists()


def test_runs_of_another_encoder_are_refused_by_the_stages_that_gather_them(pipeline_copy, pipeline):
    """A file named for mae but made by multimodal's encoder must not be compared as mae's."""
    res = invoke(["finetune", "--encoder", "data/models/multimodal", "--protocol", "linear",
                  "--out", "data/metrics/mae-linear.json"])
    assert res.exit_code == 0
    res = invoke(pipeline.commands["compare"])
    assert res.exit_code == 1 and "mae-linear.npz was made by encoder 'multimodal' but is read as 'mae-linear'" in \
        res.output and "dvc repro finetune@mae-linear" in res.output, res.output
    res = invoke(["label-efficiency", "--encoder", "data/models/multimodal", "--runs", "data/label-efficiency/mae"])
    assert res.exit_code == 0
    res = invoke(pipeline.commands["label_efficiency_summary"])
    assert res.exit_code == 1 and "was made by encoder 'multimodal' but is read as 'mae'" in res.output
    res = invoke(["transfer", "--encoder", "data/models/multimodal", "--out", "data/transfer-runs/nih_cxr14/mae-fc"])
    assert res.exit_code == 0
    res = invoke(pipeline.commands["transfer_compare"])
    assert res.exit_code == 1 and "was made by encoder 'multimodal' but is read as 'mae'" in res.output
