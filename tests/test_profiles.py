"""Profiles: `cxrpipe profile <name>` selects params-<name>.yaml reversibly (and `dvc exp run` works under it); every profile loads, and DVC's own
API lists the stages it runs: a real profile runs and reads no demo data."""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cxrpipe.config import section
from cxrpipe.profiles import ProfileError, active, available, missing_inputs, select

ROOT = Path(__file__).resolve().parents[1]
PROFILES = ["demo", *sorted(p.name[len("params-"):-len(".yaml")] for p in ROOT.glob("params-*.yaml"))]
# every section a stage reads -> its dataclass (module, class)
SECTIONS = {
    "data": ("cxrpipe.data.prepare", "DataConfig"), "prepare": ("cxrpipe.data.prepare", "PrepareConfig"),
    "demo": ("cxrpipe.data.demo.tree", "DemoConfig"), "demo_nih": ("cxrpipe.data.demo.nih", "DemoNIHConfig"),
    "transfer_data": ("cxrpipe.data.transfer_prepare", "TransferDataConfig"),
    "text_model": ("cxrpipe.text.model", "TextModelConfig"), "embed": ("cxrpipe.text.embed", "EmbedConfig"),
    "compute": ("cxrpipe.launch", "ComputeConfig"), "pretrain": ("cxrpipe.pretrain.train", "PretrainConfig"),
    "finetune": ("cxrpipe.evaluate.probe.finetune", "FinetuneConfig"),
    "pixels": ("cxrpipe.evaluate.probe.pixels", "PixelsConfig"), "compare": ("cxrpipe.evaluate.compare", "CompareConfig"),
    "label_efficiency": ("cxrpipe.evaluate.probe.label_efficiency", "LabelEfficiencyConfig"),
    "transfer": ("cxrpipe.evaluate.transfer.run", "TransferConfig"),
    "zeroshot": ("cxrpipe.evaluate.alignment.zeroshot", "ZeroShotConfig"),
    "retrieval": ("cxrpipe.evaluate.alignment.retrieval", "RetrievalConfig"),
    "attention": ("cxrpipe.evaluate.alignment.attention_maps", "AttentionMapsConfig"),
    "stats": ("cxrpipe.evaluate.stats.rules", "StatsConfig"),
    "cpu": ("cxrpipe.cpu", "CpuConfig"),  # read by the cxrpipe CLI before each stage
    "bench": ("cxrpipe.data.bench", "BenchConfig"),
}
DVC_ONLY = {"pipeline"}  # read by dvc.yaml alone


def profile_path(name: str) -> Path:
    return ROOT / ("params.yaml" if name == "demo" else f"params-{name}.yaml")


def copy_repo(tmp_path: Path) -> Path:
    for p in [ROOT / "dvc.yaml", ROOT / "params.yaml", *ROOT.glob("params-*.yaml")]:
        shutil.copy(p, tmp_path / p.name)
    return tmp_path


def test_switching_is_reversible_and_never_overwrites(tmp_path):
    repo = copy_repo(tmp_path)
    demo = (repo / "params.yaml").read_bytes()
    assert available(repo) == PROFILES and active(repo) == "demo"
    assert select(repo, "mimic") == ("demo", "mimic")
    assert not (repo / "params.yaml").is_symlink() and active(repo) == "mimic"
    assert (repo / "params.yaml").read_bytes() == (repo / "params-mimic.yaml").read_bytes()  # DVC reads mimic
    assert (repo / "params-demo.yaml").read_bytes() == demo  # the demo's params, edits and all, kept
    assert select(repo, "iu") == ("mimic", "iu") and active(repo) == "iu"
    assert select(repo, "demo") == ("iu", "demo")
    assert (repo / "params.yaml").read_bytes() == demo and not (repo / "params-demo.yaml").exists()
    assert sorted(p.name for p in repo.iterdir()) == sorted(["dvc.yaml", "params.yaml",
                                                             *(p.name for p in ROOT.glob("params-*.yaml"))])
    for name in PROFILES[1:]:  # every profile file byte for byte as it was
        assert (repo / f"params-{name}.yaml").read_bytes() == (ROOT / f"params-{name}.yaml").read_bytes()


def test_edits_go_back_into_the_profiles_file_and_its_own_edits_are_kept(tmp_path):
    repo = copy_repo(tmp_path)
    mimic, iu = (repo / "params-mimic.yaml").read_text(), (repo / "params-iu.yaml").read_text()
    select(repo, "mimic")
    (repo / "params.yaml").write_text(mimic + "# my data.root\n")  # an edit of the selected params
    select(repo, "iu")
    assert (repo / "params-mimic.yaml").read_text() == mimic + "# my data.root\n"
    assert (repo / "params.yaml").read_text() == iu
    (repo / "params-iu.yaml").write_text(iu + "# edited in the profile's own file\n")
    assert select(repo, "iu") == ("iu", "iu")  # selected again: its own edit copied in, DVC sees it
    assert (repo / "params.yaml").read_text() == iu + "# edited in the profile's own file\n"
    select(repo, "demo")  # params.yaml unedited: the profile's own edit stays
    assert (repo / "params-iu.yaml").read_text() == iu + "# edited in the profile's own file\n"
    select(repo, "mimic")
    assert (repo / "params.yaml").read_text() == mimic + "# my data.root\n"  # the edit came back with it


def test_a_switch_refuses_where_both_files_were_edited(tmp_path):
    repo = copy_repo(tmp_path)
    select(repo, "mimic")
    (repo / "params.yaml").write_text("a: 1\n")
    (repo / "params-mimic.yaml").write_text("a: 2\n")
    before = {p.name: p.read_bytes() for p in repo.iterdir()}
    with pytest.raises(ProfileError, match="both edited"):
        select(repo, "demo")
    assert {p.name: p.read_bytes() for p in repo.iterdir()} == before and active(repo) == "mimic"
    (repo / "params-mimic.yaml").write_text("a: 1\n")  # the same edit in both: nothing to lose
    assert select(repo, "demo") == ("mimic", "demo")


def test_a_link_made_by_the_older_version_is_read_and_replaced(tmp_path):
    repo = copy_repo(tmp_path)
    demo = (repo / "params.yaml").read_bytes()
    (repo / "params.yaml").rename(repo / "params-demo.yaml")
    (repo / "params.yaml").symlink_to("params-mimic.yaml")
    assert active(repo) == "mimic"
    assert select(repo, "iu") == ("mimic", "iu")
    assert not (repo / "params.yaml").is_symlink() and (repo / "params-mimic.yaml").read_bytes() == (
        ROOT / "params-mimic.yaml").read_bytes()
    select(repo, "demo")
    assert (repo / "params.yaml").read_bytes() == demo


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("git") is None, reason="dvc exp run needs git")
def test_dvc_exp_run_works_under_a_profile_and_its_params_go_back_into_the_profile(tmp_path):
    """Before: params.yaml was a symbolic link to the profile; `dvc exp run` then failed ("Could not apply stash
    commit") after writing the demo's params through the link into params-<name>.yaml."""
    repo = tmp_path
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    run = lambda *cmd: subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=300)  # noqa: E731
    (repo / "params.yaml").write_text("lr: 1  # the demo's\n")
    (repo / "params-b.yaml").write_text("lr: 2  # the profile's\n")
    (repo / "dvc.yaml").write_text("stages:\n  s:\n    cmd: cp params.yaml out.txt\n    params: [lr]\n    outs: [out.txt]\n")
    for cmd in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"], ["git", "add", "-A"],
                ["git", "commit", "-qm", "init"]):
        assert run(*cmd).returncode == 0
    select(repo, "b")
    res = run(sys.executable, "-m", "dvc", "exp", "run", "-S", "lr=3")
    assert res.returncode == 0, res.stdout + res.stderr
    assert yaml.safe_load((repo / "out.txt").read_text()) == {"lr": 3}  # the stage read the profile, with -S
    assert (repo / "params-b.yaml").read_text() == "lr: 2  # the profile's\n"  # not the demo's params
    select(repo, "demo")
    assert (repo / "params.yaml").read_text() == "lr: 1  # the demo's\n"
    assert yaml.safe_load((repo / "params-b.yaml").read_text()) == {"lr": 3}  # the experiment's params kept


def test_unsafe_or_unknown_switches_refuse_and_change_nothing(tmp_path):
    repo = copy_repo(tmp_path)
    with pytest.raises(ProfileError, match="no profile 'mimc'.*mimic"):
        select(repo, "mimc")
    (repo / "params-demo.yaml").write_text("a: 1\n")  # would be overwritten by the saved demo params
    before = {p.name: p.read_bytes() for p in repo.iterdir()}
    with pytest.raises(ProfileError, match="keeping both would lose one"):
        select(repo, "mimic")
    assert {p.name: p.read_bytes() for p in repo.iterdir()} == before and active(repo) == "demo"


def test_profile_command_lists_selects_and_names_the_paths_to_set(tmp_path):
    from typer.testing import CliRunner

    from cxrpipe.cli import app

    repo = copy_repo(tmp_path)
    res = CliRunner().invoke(app, ["profile", "--root", str(repo)])
    assert res.exit_code == 0 and "* demo" in res.output and "  mimic" in res.output
    res = CliRunner().invoke(app, ["profile", "mimic", "--root", str(repo)])
    assert res.exit_code == 0, res.output
    assert "set data.root in params.yaml" in res.output and "cxrpipe profile demo" in res.output
    assert CliRunner().invoke(app, ["profile", "nope", "--root", str(repo)]).exit_code == 2


def test_missing_inputs_are_the_real_paths_not_the_generated_ones(tmp_path):
    demo = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert missing_inputs(demo) == []  # data/demo, data/demo-nih: made by stages
    params = {"data": {"root": str(tmp_path), "reports": str(tmp_path / "r.zip")},
              "transfer": {"datasets": ["nih_cxr14"]}, "transfer_data": {"nih_cxr14": {"root": "/no/nih"}}}
    assert missing_inputs(params) == [("data.reports", str(tmp_path / "r.zip")), ("transfer_data.nih_cxr14.root", "/no/nih")]


@pytest.mark.parametrize("name", PROFILES)
def test_profile_builds_every_section_and_has_the_demos_keys(name):
    params = yaml.safe_load(profile_path(name).read_text())
    assert set(params) == set(SECTIONS) | DVC_ONLY, "a section without a dataclass here, or one missing"
    for key, (module, cls) in SECTIONS.items():
        section(params, key, getattr(importlib.import_module(module), cls))
    pipe = params["pipeline"]
    assert all(isinstance(pipe[k], list) for k in ("demo_data", "demo_nih", "text_model"))
    assert isinstance(pipe["text_model_dep"], str) and isinstance(pipe["transfer_source"], str)


def dvc_stages(repo: Path) -> dict[str, tuple[set[str], set[str]]]:
    """DVC's own view of the pipeline: stage address -> (dep paths, out paths), relative to the repo."""
    from dvc.repo import Repo

    if not (repo / ".dvc").exists():
        Repo.init(str(repo), no_scm=True)
    with Repo(str(repo)) as r:
        rel = lambda p: str(Path(p).relative_to(repo)) if Path(p).is_absolute() and repo in Path(p).parents else str(p)  # noqa: E731
        return {s.name: ({rel(d.fs_path) for d in s.deps if not hasattr(d, "params")},
                               {rel(o.fs_path) for o in s.outs}) for s in r.index.stages}


@pytest.mark.slow
@pytest.mark.parametrize("name", PROFILES)
def test_each_profile_lists_the_stages_it_runs(tmp_path, name):
    repo = copy_repo(tmp_path)
    select(repo, name)
    stages = dvc_stages(repo)
    core = {"prepare", "embed", "pretrain@mae", "pretrain@multimodal", "random_encoder", "finetune@mae-linear",
            "compare", "transfer_compare"}
    assert core <= set(stages), sorted(stages)
    demo_stages = {s for s in stages if s.startswith(("demo_data", "demo_nih"))}
    paths = {p for deps, outs in stages.values() for p in deps | outs}
    params = yaml.safe_load(profile_path(name).read_text())
    # the bench tree (bench_data's matrix over bench.trees) only where the profile lists it: the bench profile
    assert {s for s in stages if s.startswith("bench_data")} == {f"bench_data@{t}" for t in params["bench"]["trees"]}
    if name == "demo":
        assert {"demo_data@demo", "demo_nih@demo-nih", "text_model@text-model"} <= set(stages)
        assert {"data/demo", "data/demo-nih"} <= paths
        return
    if name == "bench":  # real IU X-ray reports on drawn images; transfer on the demo's NIH tree
        assert "bench_data@bench" in stages and "data/bench" in paths
        assert demo_stages == {"demo_nih@demo-nih"} and "data/demo" not in paths
        assert stages["prepare"][0] >= {"data/bench"}
        return
    assert demo_stages == set(), "a real profile runs a demo stage"
    assert not [p for p in paths if p.startswith("data/demo")], "a real profile reads demo data"
    if params["embed"]["model"].startswith("data/models/"):  # the demo LM (IU): made by its stage
        assert "text_model@text-model" in stages
    else:
        assert not [s for s in stages if s.startswith("text_model")]
    seeds = params["compare"]["extra_seeds"]
    assert len([s for s in stages if s.startswith("pretrain_seeds@")]) == 3 * len(seeds)  # mae, multimodal, shuffled


@pytest.mark.slow
def test_mimic_profile_with_chexpert_scores_each_dataset_zero_shot(tmp_path):
    """The MIMIC profile with chexpert added to transfer.datasets (a CheXpert root set): DVC's matrix gives
    transfer_prepare and zeroshot_transfer for every dataset, each encoder reading data/transfer/<dataset> and
    writing data/metrics/zeroshot-<dataset>-<encoder>.json (what docs/evaluations.md names)."""
    repo = copy_repo(tmp_path)
    select(repo, "mimic")  # then edited as the docs say: params.yaml, the selected profile's copy
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["transfer"]["datasets"] = ["nih_cxr14", "chexpert"]
    params["transfer_data"]["chexpert"]["root"] = "/data/chexpert/CheXpert-v1.0-small"
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    stages = dvc_stages(repo)
    datasets, encoders = params["transfer"]["datasets"], params["zeroshot"]["encoders"]
    assert {s for s in stages if s.startswith("transfer_prepare@")} == {f"transfer_prepare@{d}" for d in datasets}
    zs = {f"zeroshot_transfer@{d}-{e}": (d, e) for d in datasets for e in encoders}
    assert {s for s in stages if s.startswith("zeroshot_transfer@")} == set(zs)
    for name, (d, e) in zs.items():
        deps, outs = stages[name]
        assert {f"data/transfer/{d}", f"data/models/{e}", "data/cache/prompts.h5"} <= deps
        assert {f"data/metrics/zeroshot-{d}-{e}.json", f"data/metrics/zeroshot-{d}-{e}.config.json"} <= outs
        assert stages[f"transfer_prepare@{d}"][1] == {f"data/transfer/{d}"}


@pytest.mark.slow
def test_the_two_step_flow_is_stages_that_continue_the_exported_mae(tmp_path):
    """`dvc exp run -S pretrain.flow=two_step -S 'pipeline.two_step_controls=[continued]' -S 'pipeline.encoders=
    [...,continued]'` (docs/alignment.md): DVC's own stage list has the continued control, reading data/models/mae
    like multimodal and shuffled do, and its fine-tuning; the demo as shipped has neither."""
    repo = copy_repo(tmp_path)
    demo = dvc_stages(repo)
    assert not [s for s in demo if "continued" in s]
    assert "data/models/mae" in demo["pretrain@multimodal"][0] and "data/models/mae" not in demo["pretrain@mae"][0]
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["pretrain"]["flow"] = "two_step"
    params["pipeline"]["two_step_controls"] = ["continued"]
    params["pipeline"]["encoders"] = [*params["pipeline"]["encoders"], "continued"]
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    stages = dvc_stages(repo)
    deps, outs = stages["pretrain_continued@continued"]
    assert "data/models/mae" in deps and outs >= {"data/models/continued", "data/metrics/pretrain-continued.json"}
    for protocol in ("fc", "linear", "finetune"):
        assert "data/models/continued" in stages[f"finetune@continued-{protocol}"][0]
    assert {s for s in stages if s.startswith("pretrain@")} == {"pretrain@mae", "pretrain@multimodal", "pretrain@shuffled"}


@pytest.mark.slow
def test_the_sentence_term_is_a_stage_that_pretraining_depends_on(tmp_path):
    """The demo as shipped (the sentence term on, docs/alignment.md): DVC's own stage list has the stage that
    writes the sentence cache, and every pretraining stage, and only those, depends on that cache, so changing
    it reruns them. The documented way off (`dvc exp run -S pretrain.loss.sentence_weight=0 -S
    'pipeline.sentences=[]' -S pipeline.sentence_dep=data/cache/text.h5`) leaves no such stage and no reader."""
    repo = copy_repo(tmp_path)
    stages = dvc_stages(repo)
    deps, outs = stages["embed_sentences@sentences"]
    assert outs == {"data/cache/sentences.h5"} and {"data/prepared/studies.csv", "data/models/text-model"} <= deps
    readers = {s for s, (deps, _) in stages.items() if "data/cache/sentences.h5" in deps}
    pretraining = {s for s in stages if s.startswith(("pretrain@", "pretrain_seeds@", "pretrain_continued@"))}
    assert pretraining and readers == pretraining, sorted(readers ^ pretraining)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["pretrain"]["loss"]["sentence_weight"] = 0.0
    params["pipeline"]["sentences"] = []
    params["pipeline"]["sentence_dep"] = "data/cache/text.h5"
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    off = dvc_stages(repo)
    assert not [s for s in off if s.startswith("embed_sentences")]
    assert not [s for s, (deps, _) in off.items() if "data/cache/sentences.h5" in deps]
