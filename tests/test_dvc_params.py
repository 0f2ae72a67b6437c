"""dvc.yaml lists the params each pretrain variant reads: `mae` never reruns for pretrain.loss.weight_text."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import yaml

from cxrpipe.pretrain.losses import LossConfig
from cxrpipe.pretrain.train import PretrainConfig

ROOT = Path(__file__).resolve().parents[1]


def pretrain_params() -> dict[str, set[str]]:
    """variant -> the params keys its stage lists (the foreach expanded as DVC does)."""
    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["pretrain"]
    out = {}
    for variant, item in stage["foreach"].items():
        keys = set()
        for p in stage["do"]["params"]:
            assert isinstance(p, str)
            for k, v in item.items():
                p = p.replace("${item.%s}" % k, v)
            keys.add(p)
        out[variant] = keys
    return out


def expected_keys() -> set[str]:
    """Every pretrain key, sub-sections whole, except pretrain.loss, listed key by key."""
    keys = {f"pretrain.{f.name}" for f in dataclasses.fields(PretrainConfig) if f.name != "loss"}
    return keys | {f"pretrain.loss.{f.name}" for f in dataclasses.fields(LossConfig)}


def test_mae_lists_every_pretrain_key_but_weight_text():
    listed = pretrain_params()
    want = expected_keys()
    pre = {k for k in listed["mae"] if k.startswith("pretrain")}
    assert pre == want - {"pretrain.loss.weight_text"}, "a new pretrain key must be listed in dvc.yaml"
    assert {k for k in listed["multimodal"] if k.startswith("pretrain")} == want
    # both still read the text cache's fingerprint keys
    assert {"embed.model", "embed.prompt", "data.sections"} <= listed["mae"] & listed["multimodal"]


def test_dvc_resolves_the_per_variant_params():
    from dvc.repo import Repo

    with Repo(str(ROOT)) as repo:
        stages = {s.addressing: s for s in repo.index.stages}
        params = {}
        for variant in ("mae", "multimodal"):
            stage = stages[f"pretrain@{variant}"]
            params[variant] = {k for dep in stage.deps if hasattr(dep, "params") for k in (dep.params or [])}
    assert "pretrain.loss.weight_text" in params["multimodal"]
    assert "pretrain.loss.weight_text" not in params["mae"] and "pretrain.loss.kind" in params["mae"]


def test_prepare_and_transfer_prepare_list_their_params():
    """Every `data` key prepare reads is listed (a new IU key must rerun prepare); transfer_prepare reads its
    dataset's transfer_data section and prepare's image settings."""
    from cxrpipe.data.prepare import DataConfig

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert {f"data.{f.name}" for f in dataclasses.fields(DataConfig)} <= set(stages["prepare"]["params"])
    tp = stages["transfer_prepare"]
    assert set(tp["params"]) == {"transfer_data.${item.dataset}", "prepare"}
    # ordered after the demo NIH tree through pipeline.transfer_source (a real profile names its own script)
    assert tp["matrix"] == {"dataset": "${transfer.datasets}"} and "${pipeline.transfer_source}" in tp["deps"]


def test_every_stage_that_resamples_or_averages_labels_reads_the_stats_section():
    """One bootstrap unit and one label rule (params `stats`) for every stage that resamples: each lists it, so
    a change of `stats.bootstrap_unit` reruns them all."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    resampling = ("finetune", "finetune_seeds", "pixels", "compare", "label_efficiency", "label_efficiency_summary",
                  "zeroshot", "zeroshot_transfer", "retrieval", "transfer", "transfer_compare")
    for name in resampling:
        stage = stages[name].get("do", stages[name])
        assert "stats" in stage["params"], name
    assert stages["finetune"]["matrix"]["protocol"] == ["fc", "linear", "finetune"]


def test_bench_data_lists_every_bench_key_that_changes_its_tree():
    """Every bench key but the matrix (trees) and where a download is cached (download_dir) reruns bench_data."""
    from cxrpipe.data.bench import BenchConfig

    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["bench_data"]
    keys = {f"bench.{f.name}" for f in dataclasses.fields(BenchConfig)} - {"bench.trees", "bench.download_dir"}
    assert set(stage["params"]) == keys
    assert stage["matrix"] == {"tree": "${bench.trees}"} and stage["outs"] == ["data/${item.tree}"]
    assert "cxrpipe/data/bench.py" in stage["deps"] and "cxrpipe/data/demo" in stage["deps"]


def test_the_continued_control_lists_what_mae_lists():
    """pretrain_continued (the two-step flow's control, text weight forced to 0 like mae) reads every pretrain
    key but weight_text, and the text cache's fingerprint keys, exactly as pretrain@mae does."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    stage, pretrain = stages["pretrain_continued"], stages["pretrain"]
    assert set(stage["params"]) == pretrain_params()["mae"]
    # the same deps and outputs as a pretrain variant continuing the mae (a copy of its body: kept in step here)
    multimodal = {k: str(v) for k, v in pretrain["foreach"]["multimodal"].items()}
    expand = lambda x: yaml.safe_dump(x).replace("${item.after}", multimodal["after"]).replace("${key}", "V")  # noqa: E731
    assert expand(stage["deps"]) == expand(pretrain["do"]["deps"])
    for kind in ("outs", "metrics", "plots"):
        assert expand(stage[kind]).replace("${item.variant}", "V") == expand(pretrain["do"][kind])
    assert "--init data/models/mae" in stage["cmd"]
