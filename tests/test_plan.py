"""`cxrpipe plan` on the demo and the MIMIC profile: runs from DVC's own stage list, counts from the manifest,
the source's tables or published counts, disk and hours from formulas, each figure marked measured or
estimated (and measured ones read from the files named)."""

from __future__ import annotations

import csv
import gzip
import json
import math
import shutil
from pathlib import Path

import pytest
import yaml

from cxrpipe.data.manifest import StudyRecord, write_manifest
from cxrpipe.labels import CHEXPERT_LABELS
from cxrpipe.plan import (
    GIB,
    MIMIC,
    SMOLLM2,
    TOKEN_ID_BYTES,
    data_counts,
    encoder_flops,
    format_plan,
    make_plan,
    vit_sizes,
)
from cxrpipe.text.store import bytes_per_token

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # DVC parses the pipeline (a few seconds)


def repo(tmp_path: Path, profile: str, **override) -> Path:
    """dvc.yaml and the profile (as p.yaml, with top-level sections replaced by ``override``) in tmp_path."""
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    params = yaml.safe_load((ROOT / profile).read_text())
    for key, value in override.items():
        params[key] = {**params[key], **value}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return tmp_path


def by_family(plans):
    return {p.family: p for p in plans}


def test_mimic_plan_counts_every_run_and_marks_every_figure(tmp_path):
    root = repo(tmp_path, "params-mimic.yaml")
    plans, counts = make_plan(root / "p.yaml", root, gpu_tflops=100)
    p = by_family(plans)
    # mae, multimodal, shuffled x 3 seeds (compare.extra_seeds [1, 2]); 6 of them read the text
    assert p["pretrain (+ seeds)"].runs == 9
    # 4 encoders x 3 protocols x 3 seeds; the work names dvc.yaml's protocols
    assert p["finetune (+ seeds)"].runs == 36 and "demo_data" not in p["others"].work
    assert "encoders x fc/linear/finetune" in p["finetune (+ seeds)"].work
    # published counts, marked estimated (no manifest, no tables at /data/...)
    assert counts.studies.value == MIMIC["studies"] and counts.studies.how.startswith("estimated")
    params = yaml.safe_load((root / "p.yaml").read_text())
    sizes = vit_sizes(params["pretrain"]["model"])
    # the text runs' second, unmasked encoder pass (loss.visible_tokens false) over every token
    per_image = 9 * sizes["train_flops"] + 6 * encoder_flops(params["pretrain"]["model"], sizes["tokens"])
    want = 100 * counts.train_frontal.value * per_image / 100e12 / 3600
    assert p["pretrain (+ seeds)"].gpu_hours.value == pytest.approx(want)
    assert "assumed 100 TFLOP/s" in p["pretrain (+ seeds)"].gpu_hours.how
    # LLaMA-2-7b at float16: 4096 x 2 bytes + the token id per token
    embed = p["embed"]
    assert embed.disk.value == pytest.approx(36.5e6 * 8196) and 250 * GIB < embed.disk.value < 300 * GIB
    text = format_plan(plans, counts, "header", 8)
    assert "total" in text and "where each figure comes from" in text
    for line in text.split("where each figure comes from:")[1].strip().splitlines():
        assert ": estimated" in line or ": measured" in line or "CPU stage" in line, line


def test_bench_plan_counts_the_stage_that_draws_its_tree(tmp_path):
    root = repo(tmp_path, "params-bench.yaml")
    others = by_family(make_plan(root / "p.yaml", root)[0])["others"].work
    assert "bench_data 1" in others and "demo_data" not in others and "demo_nih 1" in others


def test_the_sentence_term_adds_its_stage_to_the_plan(tmp_path):
    """pipeline.sentences [sentences] (the sentence term on, the shipped profiles' default) plans the stage that
    embeds the sentences: nothing to count before prepare; after it, the distinct train sentences (a sentence
    shared by reports counts once; validate reports none), their tokens, disk and hours, scaled from the report
    embed's own figures per token. With the term off there is no such stage."""
    off = by_family(make_plan(repo(tmp_path, "params.yaml", pipeline={"sentences": [], "sentence_dep":
                                                                      "data/cache/text.h5"}) / "p.yaml", tmp_path)[0])
    assert "embed_sentences" not in off and "embed_sentences" not in off["others"].work
    (tmp_path / "on").mkdir()
    root = repo(tmp_path / "on", "params.yaml")
    before = by_family(make_plan(root / "p.yaml", root)[0])["embed_sentences"]
    assert before.runs == 1 and before.disk is None and "once prepare has run" in before.work
    params = yaml.safe_load((root / "p.yaml").read_text())
    prepared = root / "data" / "prepared"
    prepared.mkdir(parents=True)
    (prepared / "config.json").write_text(json.dumps({"data": params["data"]}))
    texts = {"train": ["Findings: No effusion. Heart is normal.", "Findings: No effusion.", ""],
             "validate": ["Findings: Large effusion."]}
    rows = [(split, t) for split in texts for t in texts[split]]
    write_manifest(prepared, [], [StudyRecord(i, i, split, t, {}, (math.nan,) * len(CHEXPERT_LABELS))
                                  for i, (split, t) in enumerate(rows)])
    p = by_family(make_plan(root / "p.yaml", root)[0])
    plan, embed = p["embed_sentences"], p["embed"]
    sentences = ["Findings: No effusion.", "Findings: Heart is normal."]
    tokens = sum(len(t) + len(params["embed"]["prompt"]) + 1 for t in sentences) / 4
    assert plan.work.startswith(f"2 distinct train sentences, {tokens:,.0f} tokens (estimated)"), plan.work
    per_token = bytes_per_token(params["embed"]["store_dtype"], SMOLLM2["hidden_size"]) + TOKEN_ID_BYTES
    assert plan.disk.value == pytest.approx(tokens * per_token)
    assert plan.cpu_hours.value / plan.disk.value == pytest.approx(embed.cpu_hours.value / embed.disk.value)


def test_mimic_tables_give_measured_counts(tmp_path):
    tables = tmp_path / "mimic"
    tables.mkdir()
    views = ["PA", "AP", "LATERAL", "PA", "AP", "LL"]
    splits = ["train", "train", "train", "validate", "test", "train"]
    with gzip.open(tables / "mimic-cxr-2.0.0-metadata.csv.gz", "wt", newline="") as f:
        w = csv.writer(f)
        w.writerow(["dicom_id", "study_id", "ViewPosition"])
        w.writerows([[f"d{i}", 50 + i // 2, v] for i, v in enumerate(views)])
    with gzip.open(tables / "mimic-cxr-2.0.0-split.csv.gz", "wt", newline="") as f:
        w = csv.writer(f)
        w.writerow(["dicom_id", "study_id", "subject_id", "split"])
        w.writerows([[f"d{i}", 50 + i // 2, 10, s] for i, s in enumerate(splits)])
    params = yaml.safe_load((ROOT / "params-mimic.yaml").read_text())
    params["data"]["root"] = str(tables)
    counts = data_counts(params, tmp_path / "no-prepared")
    assert counts.images.value == 4 and counts.train_frontal.value == 2  # AP/PA only; train: d0, d1
    assert counts.studies.value == 3 and counts.images.how.startswith("measured: mimic-cxr-2.0.0-metadata")


def test_demo_plan_reads_this_checkouts_runs_as_measured(tmp_path):
    # the sentence term off: its row reads the full manifest (test_the_sentence_term_adds_its_stage_to_the_plan)
    root = repo(tmp_path, "params.yaml", pipeline={"sentences": [], "sentence_dep": "data/cache/text.h5"})
    plans, counts = make_plan(root / "p.yaml", root)  # nothing run yet: estimated from the demo's params
    assert counts.images.how.startswith("estimated: demo params")
    assert by_family(plans)["embed"].disk is not None  # the demo LM's shape is known before text_model ran
    assert "measured: the committed demo reference run" in by_family(plans)["pretrain (+ seeds)"].cpu_hours.how
    # a finished demo run: its manifest, text report and pretraining metrics are read
    prepared = root / "data" / "prepared"
    prepared.mkdir(parents=True)
    with open(prepared / "images.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["row", "dicom_id", "study_id", "subject_id", "split", "view", "path"])
        w.writerows([[i, f"d{i}", i, i, "train" if i < 8 else "test", "PA" if i % 4 else "LATERAL", "x"]
                     for i in range(10)])
    with open(prepared / "studies.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["study_id", "subject_id", "split", "text"])
        w.writerows([[i, i, "train", "" if i == 0 else "No acute process."] for i in range(10)])
    demo = yaml.safe_load((root / "p.yaml").read_text())
    (prepared / "config.json").write_text(json.dumps({"data": demo["data"]}))  # made from the demo's data section
    (root / "data" / "cache").mkdir(parents=True)
    report = {"n_studies": 9, "n_tokens": 1234, "tokens_per_second": 500}
    (root / "data" / "cache" / "text-report.json").write_text(json.dumps({**report, "n_studies": 996}))
    (root / "data" / "cache" / "text-report.config.json").write_text(json.dumps(demo["embed"]))
    (root / "data" / "metrics").mkdir(parents=True)
    (root / "data" / "metrics" / "pretrain-mae.json").write_text(json.dumps({"images_per_second": 100.0}))
    (root / "data" / "models" / "mae").mkdir(parents=True)
    (root / "data" / "models" / "mae" / "config.json").write_text(json.dumps({"params": {"model": demo["pretrain"]["model"]}}))
    # a text report over other studies (the committed demo's, before embed reran on this data): not this data's
    chars = 9 * (len("No acute process.") + len(demo["embed"]["prompt"]) + 1)  # ~4 characters per token
    assert f"9 reports, {chars / 4:,.0f} tokens (estimated)" in by_family(make_plan(root / "p.yaml", root)[0])["embed"].work
    (root / "data" / "cache" / "text-report.json").write_text(json.dumps(report))
    plans, counts = make_plan(root / "p.yaml", root)
    assert counts.images.value == 10 and counts.train_frontal.value == 6 and counts.studies.value == 9
    assert counts.images.how == f"measured: {prepared / 'images.csv'}"
    p = by_family(plans)
    assert "9 reports, 1,234 tokens (measured)" in p["embed"].work
    pre = p["pretrain (+ seeds)"]
    # the same model as the measured run: hours = images / measured images per second
    sizes = vit_sizes(demo["pretrain"]["model"])  # mae, multimodal, shuffled; the 2 text runs' unmasked pass
    per_image = 3 + 2 * encoder_flops(demo["pretrain"]["model"], sizes["tokens"]) / sizes["train_flops"]
    assert pre.cpu_hours.value == pytest.approx(per_image * 30 * 6 / 100.0 / 3600)
    assert "pretrain-mae.json (100 images/s" in pre.cpu_hours.how
    assert "text-report.json (500 tokens/s" in p["embed"].cpu_hours.how
    # the same checkout planned for MIMIC-CXR: the demo's manifest and cache say nothing about it
    mimic = yaml.safe_load((ROOT / "params-mimic.yaml").read_text())
    (root / "m.yaml").write_text(yaml.safe_dump(mimic, sort_keys=False))
    plans, counts = make_plan(root / "m.yaml", root)
    assert counts.studies.value == MIMIC["studies"] and "measured" not in counts.images.how
    assert "(estimated)" in by_family(plans)["embed"].work
    assert "pretrain-mae.json (100 images/s" in by_family(plans)["pretrain (+ seeds)"].cpu_hours.how  # a rate: kept


def test_plan_command_prints_the_table(tmp_path):
    from typer.testing import CliRunner

    from cxrpipe.cli import app

    root = repo(tmp_path, "params-mimic.yaml")
    res = CliRunner().invoke(app, ["plan", "--root", str(root), "--params", "p.yaml", "--gpus", "8",
                                   "--json", str(tmp_path / "plan.json")])
    assert res.exit_code == 0, res.output
    assert "pretrain (+ seeds)      9" in res.output and "On 8 GPU(s)" in res.output
    assert {r["family"] for r in json.loads((tmp_path / "plan.json").read_text())} >= {"embed", "pretrain (+ seeds)"}


def test_the_lp_ft_grid_multiplies_only_the_finetune_protocols_training(tmp_path):
    """A 3 x 2 LP-FT grid trains 6 times per finetune run: the fine-tuning share of stage three's hours (over
    a run without fine-tuning epochs) grows 6-fold; the feature passes of the probes stay as they were."""
    from cxrpipe.plan import lpft_points

    ft = yaml.safe_load((ROOT / "params-mimic.yaml").read_text())["finetune"]
    grid = {"lrs": [1e-4, 2.5e-4, 5e-4], "head_norms": ["batchnorm", "layernorm"]}
    hours, works = {}, {}
    for name, change in (("probes", {"epochs": 0}), ("one", {}), ("six", grid)):
        (tmp_path / name).mkdir()
        params = {"finetune": {**ft, "finetune": {**ft["finetune"], **change}}}
        root = repo(tmp_path / name, "params-mimic.yaml", **params)
        plan = by_family(make_plan(root / "p.yaml", root, gpu_tflops=100)[0])["finetune (+ seeds)"]
        hours[name], works[name] = plan.gpu_hours.value, plan.work
        assert lpft_points(params) == (6 if name == "six" else 1)
    assert "grid points" not in works["one"] and works["six"].endswith("x 6 grid points")
    assert hours["one"] > hours["probes"] > 0
    assert hours["six"] - hours["probes"] == pytest.approx(6 * (hours["one"] - hours["probes"]))


def test_the_two_step_flow_plans_align_epochs_for_every_run_but_mae(tmp_path):
    """pretrain.flow two_step with the continued control: mae trains `epochs`, multimodal, shuffled and continued
    `align.epochs`; the hours follow (mae 1 share at 30 epochs, three runs at 10: 30 + 3 x 10 epoch-runs of the
    MAE step, the text runs' extra encoder pass at 10 epochs)."""
    base = yaml.safe_load((ROOT / "params-mimic.yaml").read_text())
    pre = {**base["pretrain"], "epochs": 30, "align": {**base["pretrain"]["align"], "epochs": 10}}
    plans = {}
    for name, flow, controls in (("joint", "joint", []), ("two", "two_step", ["continued"])):
        (tmp_path / name).mkdir()
        root = repo(tmp_path / name, "params-mimic.yaml", pretrain={**pre, "flow": flow}, compare={"extra_seeds": []},
                    pipeline={"two_step_controls": controls, "encoders": ["mae", "multimodal", "random", "shuffled",
                                                                         *controls]})
        plans[name] = by_family(make_plan(root / "p.yaml", root, gpu_tflops=100)[0])["pretrain (+ seeds)"]
    joint, two = plans["joint"], plans["two"]
    assert (joint.runs, two.runs) == (3, 4)
    assert "two-step" not in joint.work and "1 x 30 + 3 x 10 epochs (two-step flow)" in two.work
    sizes = vit_sizes(pre["model"])
    loss = pre["loss"]
    seen = round((sizes["tokens"] - 1) * (1 - loss.get("contrastive_mask_ratio", 0.0))) + 1
    text = 0 if loss.get("visible_tokens", True) else encoder_flops(pre["model"], seen)
    per_epoch_run = lambda n_mae, n_later, e_later, n_text: (  # noqa: E731
        (n_mae * 30 + n_later * e_later) * sizes["train_flops"] + n_text * e_later * text)
    ratio = per_epoch_run(1, 3, 10, 2) / per_epoch_run(1, 2, 30, 2)
    assert two.gpu_hours.value / joint.gpu_hours.value == pytest.approx(ratio)


def test_flops_by_hand_count_attention_and_the_masked_encoder():
    """2 FLOPs per weight per token plus attention's 4 n^2 d per block, 3 x for a training step; MAE's encoder
    sees the visible tokens only, its decoder every token (a tiny model, counted by hand)."""
    tiny = {"img_size": 16, "patch_size": 8, "embed_dim": 32, "depth": 2, "mlp_ratio": 4.0, "mask_ratio": 0.75,
            "decoder_embed_dim": 16, "decoder_depth": 1}
    enc = 2 * 12 * 32**2 + 8 * 8 * 32  # blocks (4 + 2 x 4) d^2 each, patch embedding
    assert encoder_flops(tiny, 10, train=False) == 2 * enc * 10 + 2 * 4 * 10**2 * 32
    assert encoder_flops(tiny, 10) == 3 * (2 * enc * 10 + 2 * 4 * 10**2 * 32)
    sizes = vit_sizes(tiny)  # 4 patches + cls = 5 tokens, 1 patch + cls visible
    dec = 12 * 16**2 + 32 * 16 + 16 * 8 * 8
    assert (sizes["tokens"], sizes["encoder"], sizes["decoder"]) == (5, enc, dec)
    assert sizes["train_flops"] == 3 * (2 * enc * 2 + 2 * 4 * 2**2 * 32 + 2 * dec * 5 + 1 * 4 * 5**2 * 16)
    assert sizes["forward_flops"] == 2 * enc * 5 + 2 * 4 * 5**2 * 32


def test_a_starved_gpu_takes_the_loaders_time(tmp_path):
    """With measured rates the pretraining hours are the larger of the GPU's (FLOPs / its fed rate) and the
    loader's (images / per-worker rate x pretrain.data.num_workers): 1 worker starves the GPU, 64 do not."""
    from tests.test_gpu_bench import planted, run_text

    hours = {}
    for workers in (1, 64):
        (tmp_path / str(workers)).mkdir()
        root = repo(tmp_path / str(workers), "params-mimic.yaml")
        params = yaml.safe_load((root / "p.yaml").read_text())
        params["pretrain"]["data"]["num_workers"] = workers
        (root / "p.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        planted(root, run_text(15000, 50.0, 66))  # 1000 images/s from 16 workers, 2000 while fed
        plans, counts = make_plan(root / "p.yaml", root)
        hours[workers] = by_family(plans)["pretrain (+ seeds)"].gpu_hours
    images = 9 * 100 * counts.train_frontal.value  # 9 runs x 100 epochs
    assert hours[1].value == pytest.approx(images / (1000 / 16) / 3600) and "loader-bound" in hours[1].how
    assert hours[64].value < hours[1].value and "FLOPs / rate" in hours[64].how
