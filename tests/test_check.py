"""`cxrpipe check` (issue 17, item 4): the whole params file, every stage's schema, before anything runs."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cxrpipe.check import CHECK_JSON, run_check, section_schemas
from cxrpipe.cli import app
from cxrpipe.config import ConfigError
from cxrpipe.data.prepare import DataConfig, PrepareConfig, run_prepare
from cxrpipe.io import UserError

ROOT = Path(__file__).resolve().parents[1]
DEMO = yaml.safe_load((ROOT / "params.yaml").read_text())
runner = CliRunner()


def _write(tmp_path: Path, params: dict, name: str = "params.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def _edited(**changes) -> dict:
    """params.yaml with dotted keys set (``"finetune.finetune.lr": "1e-3"``); a value None deletes the key."""
    params = copy.deepcopy(DEMO)
    for key, value in changes.items():
        *path, last = key.split(".")
        node = params
        for part in path:
            node = node[part]
        if value is None:
            del node[last]
        else:
            node[last] = value
    return params


def _fails(tmp_path: Path, params: dict, *expected: str) -> str:
    with pytest.raises(UserError) as e:
        run_check(_write(tmp_path, params), dvc_yaml=ROOT / "dvc.yaml")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(str(tmp_path / "params.yaml")), msg
    for part in expected:
        assert part in msg, msg
    return msg


MADE_HERE = ("params.yaml", "params-bench.yaml")  # profiles whose data dvc.yaml's own stages make


@pytest.mark.parametrize("profile", sorted(p.name for p in ROOT.glob("params*.yaml")))
def test_every_shipped_profile_passes(tmp_path, profile):
    """The demo and bench with their data check (their trees are made by dvc.yaml's demo_data / demo_nih foreach
    stages and the bench_data matrix); the real profiles without it (their data is not on this machine)."""
    out = tmp_path / "check.json"
    res = run_check(ROOT / profile, out, dvc_yaml=ROOT / "dvc.yaml", data=profile in MADE_HERE)
    assert yaml.safe_load(out.read_text()) == CHECK_JSON
    assert set(res["sections"]) == set(yaml.safe_load((ROOT / profile).read_text()))


def test_a_tree_no_stage_makes_is_missing_data(tmp_path):
    """bench.trees is the bench_data matrix: data/bench counts as made only while it lists the tree."""
    bench = yaml.safe_load((ROOT / "params-bench.yaml").read_text())
    bench["bench"]["trees"] = []
    with pytest.raises(UserError, match="data.reports = data/bench/NLMCXR_reports.tgz: no such file"):
        run_check(_write(tmp_path, bench), dvc_yaml=ROOT / "dvc.yaml")


def test_the_schemas_come_from_the_stage_scripts(tmp_path, monkeypatch):
    """No hand-kept list: each stage script's `section(params, name, Dataclass)` call is the schema of that
    section, so a section a new stage reads is checked without touching the checker."""
    from cxrpipe import check
    from cxrpipe.evaluate.probe.finetune import FinetuneConfig
    from cxrpipe.pretrain.train import PretrainConfig

    schemas = section_schemas()
    assert set(schemas) == set(DEMO)
    assert schemas["finetune"] is FinetuneConfig and schemas["pretrain"] is PretrainConfig
    extra = tmp_path / "stages" / "newstage.py"
    extra.parent.mkdir()
    extra.write_text("from cxrpipe.config import section\nfrom cxrpipe.evaluate.compare import CompareConfig\n\n"
                     "def main(raw):\n    return section(raw, 'compare_again', CompareConfig)\n")
    scripts = check._stage_scripts()
    monkeypatch.setattr(check, "_stage_scripts", lambda: scripts + [extra])
    section_schemas.cache_clear()
    try:
        assert "compare_again" in section_schemas()
        _fails(tmp_path, DEMO, "section 'compare_again' is missing")
        ok = {**DEMO, "compare_again": DEMO["compare"]}
        run_check(_write(tmp_path, ok), dvc_yaml=ROOT / "dvc.yaml")
        _fails(tmp_path, {**ok, "compare_again": {**DEMO["compare"], "levle": "study"}}, "compare_again", "levle")
    finally:
        section_schemas.cache_clear()


@pytest.mark.parametrize("changes, expected", [
    ({"finetune.linear.lrr": 0.1}, ("finetune.linear", "unknown key(s) ['lrr']", "allowed:")),
    ({"finetune.finetune.lr": "fast"}, ("finetune.finetune.lr", "expected a number")),
    ({"attention.n_studies": "six"}, ("attention.n_studies", "expected an integer")),
    ({"data.sections": ["finding", "impression"]}, ("data.sections", "['finding']", "'findings'", "'impression'")),
    ({"data.views": ["PA", "AP ", "FRONT"]}, ("data.views", "FRONT", "mimic-cxr-jpg", "'LATERAL'")),
    ({"data.labeler": "chexbert"}, ("data.labeler", "'chexbert'", "'chexpert'", "'negbio'")),
    ({"finetune.views": ["FRONTAL"]}, ("finetune.views", "['FRONTAL']", "prepare keeps")),
    ({"pretrain.data.views": ["LATERAL"]}, ("pretrain.data.views", "['LATERAL']")),
    ({"transfer_data.nih_cxr14.views": ["LL"]}, ("transfer_data.nih_cxr14.views", "nih_cxr14")),
    ({"transfer.datasets": ["chexpert"]}, ("transfer_data.chexpert.root", "null")),
    ({"transfer.datasets": ["nih"]}, ("transfer.datasets", "'nih'", "nih_cxr14")),
    ({"zeroshot.prompts.Pneumothroax": ["a", "b"]}, ("zeroshot.prompts", "'Pneumothroax'", "Pneumothorax")),
    ({"zeroshot.prompts.Edema": None}, ("zeroshot.prompts", "missing ['Edema']")),
    ({"embed.quantization": "int4"}, ("embed.quantization", "'int4'", "'nf4'")),
])
def test_a_bad_value_anywhere_fails_in_one_line_naming_the_key(tmp_path, changes, expected):
    _fails(tmp_path, _edited(**changes), *expected)


TWO_STEP = {"pretrain.flow": "two_step", "pipeline.two_step_controls": ["continued"],
            "pipeline.encoders": ["mae", "multimodal", "random", "shuffled", "continued"]}


@pytest.mark.parametrize("changes, expected", [
    ({**TWO_STEP, "pretrain.flow": "joint"}, ("pipeline.two_step_controls", "needs 'pretrain.flow: two_step'")),
    ({**TWO_STEP, "pipeline.encoders": ["mae", "multimodal"]}, ("['continued']", "not in 'pipeline.encoders'")),
    ({**TWO_STEP, "compare.extra_seeds": [1, 2]}, ("compare.extra_seeds", "its own experiment")),
    ({"pipeline.two_step_controls": ["mae"]}, ("pipeline.two_step_controls", "[] or [continued]")),
    ({"pipeline.encoders": ["mae", "multimodal", "imagenet"]}, ("pipeline.encoders", "with mae and multimodal")),
    ({"pipeline.encoders": ["mae", "random"]}, ("pipeline.encoders", "compare pairs them")),
])
def test_the_two_step_switches_must_agree(tmp_path, changes, expected):
    """The two-step flow's control only under two_step, fine-tuned when made, and no seed repeats (their stages
    would not continue each seed's own mae); the two-step run as documented passes."""
    _fails(tmp_path, _edited(**changes), *expected)
    run_check(_write(tmp_path, _edited(**TWO_STEP)), dvc_yaml=ROOT / "dvc.yaml")


SENTENCES = {"pretrain.loss.sentence_weight": 0.5, "pipeline.sentences": ["sentences"],
             "pipeline.sentence_dep": "data/cache/sentences.h5"}
OFF = {"pretrain.loss.sentence_weight": 0.0, "pipeline.sentences": [], "pipeline.sentence_dep": "data/cache/text.h5"}


@pytest.mark.parametrize("changes, expected", [
    ({**SENTENCES, "pipeline.sentences": []}, ("sentence_weight' = 0.5 needs", "pipeline.sentences: [sentences]")),
    ({**SENTENCES, "pipeline.sentence_dep": "data/cache/text.h5"}, ("sentence_dep: data/cache/sentences.h5",)),
    ({**SENTENCES, "pretrain.pool.kind": "cross"}, ("needs 'pretrain.pool.kind: latent'", "'cross'")),
    ({**SENTENCES, "pretrain.loss.sentence_weight": 1.5}, ("sentence_weight' = 1.5", "in [0, 1]")),
    ({**SENTENCES, "pretrain.loss.sentence_weight": -0.1}, ("sentence_weight' = -0.1", "in [0, 1]")),
    ({**SENTENCES, "pipeline.sentences": ["sentences", "more"]}, ("pipeline.sentences", "[] or [sentences]")),
    ({**OFF, "pipeline.sentences": ["sentences"]}, ("weight' 0", "embedded and never read")),
])
def test_the_sentence_switches_must_agree(tmp_path, changes, expected):
    """The sentence term, its stage and the pretraining stages' dep on its cache are on together or off
    together (the shipped profiles: on); both documented forms pass, and so does weight 1 (the term alone)."""
    _fails(tmp_path, _edited(**changes), *expected)
    run_check(_write(tmp_path, _edited(**SENTENCES)), dvc_yaml=ROOT / "dvc.yaml")
    run_check(_write(tmp_path, _edited(**OFF)), dvc_yaml=ROOT / "dvc.yaml")
    run_check(_write(tmp_path, _edited(**{**SENTENCES, "pretrain.loss.sentence_weight": 1.0})), dvc_yaml=ROOT / "dvc.yaml")


def test_unknown_and_missing_sections(tmp_path):
    params = copy.deepcopy(DEMO)
    params["finetuen"] = params.pop("finetune")
    _fails(tmp_path, params, "unknown section(s) ['finetuen']", "'finetune'")
    params = copy.deepcopy(DEMO)
    del params["retrieval"]
    _fails(tmp_path, params, "section 'retrieval' is missing")


def test_numbers_written_as_yaml_strings_pass(tmp_path):
    """`lr: 1e-3` by hand is a YAML string: accepted as the number it says."""
    path = tmp_path / "params.yaml"
    text = (ROOT / "params.yaml").read_text().replace("lr: 0.00025 ", "lr: 25e-5   ", 1)
    assert "lr: 25e-5" in text
    path.write_text(text)
    assert yaml.safe_load(text)["finetune"]["finetune"]["lr"] == "25e-5"
    run_check(path, dvc_yaml=ROOT / "dvc.yaml")


def test_a_misspelt_section_also_stops_prepare(tmp_path):
    """Before: prepare exited 0 with the findings of most reports silently gone."""
    with pytest.raises(ConfigError, match=r"unknown section name\(s\) \['finding'\]"):
        DataConfig(sections=("finding", "impression"))
    from cxrpipe.config import build

    with pytest.raises(ConfigError, match="data.sections"):
        build(DataConfig, {"sections": ["findings", "impresion"]}, where="data")
    DataConfig(source="iu-xray", views=("frontal",))  # views compare without case, as the readers do


def test_wrong_data_root_is_caught_with_the_readers_own_message(tmp_path):
    params = _edited(**{"data.root": str(tmp_path / "nowhere"), "data.reports": str(tmp_path / "r.zip")})
    _fails(tmp_path, params, "data.root = ", "nowhere", "no such folder", "expected layout (MIMIC-CXR-JPG")
    iu = yaml.safe_load((ROOT / "params-iu.yaml").read_text())
    _fails(tmp_path, iu, "data.reports = /data/iu/NLMCXR_reports.tgz: no such file or folder", "IU X-ray layout")
    res = runner.invoke(app, ["check", "--params", str(_write(tmp_path, params)), "--out", str(tmp_path / "c.json")])
    assert res.exit_code == 1 and not (tmp_path / "c.json").exists()
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("check failed: ") and "data.root" in lines[0], res.output


def test_check_is_the_first_stage_and_every_other_stage_depends_on_it():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    names = list(stages)
    assert names[0] == "check" and stages["check"]["outs"] == [{"data/check.json": {"cache": False}}]
    for name in names[1:]:
        body = stages[name].get("do", stages[name])
        assert "data/check.json" in body["deps"], f"{name} does not depend on data/check.json"


@pytest.mark.skipif(shutil.which("git") is None, reason="dvc needs git installed")
def test_dvc_repro_stops_at_the_check_with_the_projects_message(tmp_path):
    """Before: `dvc repro` with a wrong data.root failed on DVC's bare "No such file or directory" (a dep of
    prepare) instead of the project's message; now the check runs first and says what to fix."""
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("cxrpipe", "stages"):
        shutil.copytree(ROOT / name, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dvc.yaml", repo / "dvc.yaml")
    _write(repo, _edited(**{"data.root": "/no/such/mimic", "data.reports": "/no/such/mimic/r.zip"}))
    env = {**os.environ, "PYTHONPATH": str(repo), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=repo, env=env, check=True)
    res = subprocess.run([sys.executable, "-m", "dvc", "repro", "prepare"], cwd=repo, env=env, capture_output=True,
                         text=True, timeout=600)
    out = res.stdout + res.stderr
    assert res.returncode != 0
    assert "check failed: params.yaml: data.root = /no/such/mimic: no such folder" in out, out
    assert "'check'" in out and "Running stage 'prepare'" not in out, out
