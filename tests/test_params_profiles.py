"""The ready profiles: params-mimic.yaml (a real MIMIC-CXR run: ViT-B/16, LLaMA-2-7b), params-iu.yaml (IU X-ray
pretraining, NIH transfer) and params-bench.yaml (real IU X-ray reports, drawn images): the same keys as
params.yaml, valid."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cxrpipe.config import section
from cxrpipe.data.bench import BenchConfig
from cxrpipe.data.demo.nih import DemoNIHConfig
from cxrpipe.data.demo.tree import DemoConfig
from cxrpipe.data.prepare import DataConfig, PrepareConfig
from cxrpipe.data.transfer_prepare import TransferDataConfig
from cxrpipe.evaluate.compare import CompareConfig
from cxrpipe.evaluate.probe.finetune import FinetuneConfig
from cxrpipe.evaluate.stats.rules import StatsConfig
from cxrpipe.pretrain.train import PretrainConfig
from cxrpipe.text.embed import EmbedConfig
from cxrpipe.text.model import TextModelConfig

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = {"demo": DemoConfig, "data": DataConfig, "prepare": PrepareConfig, "text_model": TextModelConfig,
            "embed": EmbedConfig, "pretrain": PretrainConfig, "finetune": FinetuneConfig, "compare": CompareConfig,
            "demo_nih": DemoNIHConfig, "transfer_data": TransferDataConfig, "stats": StatsConfig,
            "bench": BenchConfig}


def leaf_items(node, prefix=""):
    if isinstance(node, dict):
        return [kv for key, v in node.items() for kv in leaf_items(v, f"{prefix}{key}.")]
    return [(prefix.rstrip("."), node)]


def leaf_keys(node, prefix=""):
    if isinstance(node, dict):
        return {k for key, v in node.items() for k in leaf_keys(v, f"{prefix}{key}.")}
    return {prefix.rstrip(".")}


@pytest.mark.parametrize("profile", sorted(p.name for p in ROOT.glob("params-*.yaml")))
def test_profile_has_exactly_the_keys_of_params_yaml(profile):
    """DVC needs every key a stage lists: `cxrpipe profile <name>` must leave none out."""
    demo = yaml.safe_load((ROOT / "params.yaml").read_text())
    other = yaml.safe_load((ROOT / profile).read_text())
    assert leaf_keys(other) == leaf_keys(demo)


def test_iu_profile_reads_iu_xray_and_uses_its_views_everywhere():
    """IU X-ray's views are FRONTAL / LATERAL (never AP / PA): every stage's `views` must say FRONTAL, or the
    stages after prepare would find no image."""
    path = ROOT / "params-iu.yaml"
    cfg = {name: section(path, name, cls) for name, cls in SECTIONS.items()}
    assert cfg["data"].source == "iu-xray" and cfg["data"].projections is not None
    params = yaml.safe_load(path.read_text())
    views = {k: v for k, v in leaf_items(params) if k.endswith("views") and not k.startswith("transfer_data.")}
    assert views and all(v == ["FRONTAL"] or v == [] for v in views.values()), views
    assert cfg["data"].views == ("FRONTAL",) and cfg["pretrain"].data.views == ("FRONTAL",)


def test_mimic_profile_builds_every_section_with_vit_b16_llama2():
    path = ROOT / "params-mimic.yaml"
    cfg = {name: section(path, name, cls) for name, cls in SECTIONS.items()}
    m = cfg["pretrain"].model
    assert (m.arch, m.img_size, m.patch_size, m.embed_dim, m.depth, m.num_heads) == (
        "vit_base_patch16_224", 224, 16, 768, 12, 12)
    assert cfg["prepare"].image_size == m.img_size and cfg["pretrain"].batch_size == 256
    assert cfg["embed"].model == "meta-llama/Llama-2-7b-hf" and cfg["data"].source == "mimic-cxr-jpg"
    assert m.embed_dim % cfg["pretrain"].pool.num_heads == 0 and cfg["pretrain"].pool.dim % cfg["pretrain"].pool.num_heads == 0


def test_bench_profile_reads_the_tree_bench_data_writes():
    """params-bench.yaml: prepare reads data/<tree> (the bench_data stage's out) as IU X-ray, with the real View
    Positions (frontal = AP / PA everywhere, as for MIMIC-CXR) and the demo's model sizes; every other profile has
    no bench_data stage (an empty matrix), so `dvc repro` there never fetches or draws the bench tree."""
    path = ROOT / "params-bench.yaml"
    cfg = {name: section(path, name, cls) for name, cls in SECTIONS.items()}
    data, bench = cfg["data"], cfg["bench"]
    assert data.source == "iu-xray" and bench.trees == ("bench",)
    tree = Path("data") / bench.trees[0]
    assert (data.root, data.reports, data.projections) == (
        tree, tree / "NLMCXR_reports.tgz", tree / "indiana_projections.csv")
    params = yaml.safe_load(path.read_text())
    views = {k: v for k, v in leaf_items(params) if k.endswith("views") and not k.startswith("transfer_data.")}
    assert views and all(sorted(v) == ["AP", "PA"] or v == [] for v in views.values()), views
    demo = {name: section(ROOT / "params.yaml", name, cls) for name, cls in SECTIONS.items()}
    assert cfg["pretrain"].model == demo["pretrain"].model and cfg["embed"] == demo["embed"]
    for other in ("params.yaml", "params-mimic.yaml", "params-iu.yaml"):
        assert section(ROOT / other, "bench", BenchConfig).trees == (), other
