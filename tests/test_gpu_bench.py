"""benchmarks/gpu.py's printed tables read back (cxrpipe.gpu_bench) and turned into the plan's GPU rates:
planted runs with hand-computed rates, the sustained-row rule, and the committed H200 runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from cxrpipe.gpu_bench import BENCH_VIT, GPU_RESULTS, embed_rows, parse_run, pretrain_rows, read_runs, summary
from cxrpipe.plan import KNOWN_LMS, gpu_rates, lm_flops_per_token, vit_sizes

ROOT = Path(__file__).resolve().parents[1]


def run_text(nf4: float, wait: float, warmup: int, steps: int = 100, batch_tokens: int = 16384,
             aug_rate: float = 1000.0) -> str:
    """One run as benchmarks/gpu.py prints it."""
    return "\n".join([
        "# NVIDIA H200; torch 2.11.0+cu130; real shapes; checkpoint ready in 8 s",
        "row                                               throughput  step s wait data  padding  peak GiB  MIMIC-CXR h",
        f"stage 1 LLaMA-2-7b nf4                           {nf4:5.0f} tok/s                      13.1%      5.44"
        "         0.51",
        "stage 1 LLaMA-2-7b bf16                          19502 tok/s                      13.1%     17.50         0.41",
        f"stage 2 ViT-B/16 bf16 eager aug device            {aug_rate:4.0f} img/s   0.183     {wait:4.1f}%"
        "              15.69         0.07",
        "stage 2 ViT-B/16 bf16 eager aug loader            1160 img/s   0.221     47.2%              15.70         0.09",
        f"# stage 1: 1000 random-token reports, mean 126 tokens, batch_tokens {batch_tokens}; hours = 227835 reports x "
        f"mean / tokens/s. stage 2: batch 256, {steps} timed steps after {warmup} warm-up, 16 loader workers; hours = "
        "one epoch of 377110 images. total 131 s",
    ])


def test_a_printed_run_parses_into_rows_with_its_settings():
    rows = parse_run(run_text(15576, 48.3, 66), "run.txt")
    assert [(r["stage"], r["rate"]) for r in rows] == [(1, 15576), (1, 19502), (2, 1000), (2, 1160)]
    nf4, _, device, loader = rows
    assert nf4["setting"] == "nf4" and nf4["padding"] == pytest.approx(0.131) and nf4["batch_tokens"] == 16384
    assert device["augment_on"] == "device" and device["wait"] == pytest.approx(0.483) and device["workers"] == 16
    assert loader["augment_on"] == "loader" and device["card"] == "NVIDIA H200" and device["file"] == "run.txt"


def test_stage_two_rows_are_sustained_only_when_the_prefetched_batches_were_drained():
    """16 workers prefetch 64 batches: a 2-step warm-up with 100 timed steps times partly that buffer."""
    drained = parse_run(run_text(15576, 48.3, warmup=66))
    buffered = parse_run(run_text(15576, 0.2, warmup=2))
    long = parse_run(run_text(15576, 30.0, warmup=2, steps=640))
    assert [r["sustained"] for r in drained if r["stage"] == 2] == [True, True]
    assert [r["sustained"] for r in buffered if r["stage"] == 2] == [False, False]
    assert all(r["sustained"] for r in long)
    assert all(r["sustained"] for r in buffered if r["stage"] == 1)  # stage one has no loader
    assert pretrain_rows(buffered, "device") == [] and len(pretrain_rows(drained, "device")) == 1


def test_embed_rows_prefer_the_profiles_batch_size_and_map_none_to_bf16():
    rows = parse_run(run_text(15000, 40, 66) + "\n" + run_text(17000, 40, 66) + "\n"
                     + run_text(9000, 40, 66, batch_tokens=65536))
    assert [r["rate"] for r in embed_rows(rows, "nf4", 16384)] == [15000, 17000]
    assert [r["rate"] for r in embed_rows(rows, "nf4", 4096)] == [15000, 17000, 9000]  # none at 4096: all
    assert {r["setting"] for r in embed_rows(rows, "none", 16384)} == {"bf16"}
    assert embed_rows(rows, "fp32", 16384) == []
    assert summary(embed_rows(rows, "nf4", 16384))["mean"] == 16000


def planted(tmp_path: Path, *texts: str) -> Path:
    folder = tmp_path / GPU_RESULTS
    folder.mkdir(parents=True)
    for i, text in enumerate(texts):
        (folder / f"run{i}.txt").write_text(text)
    return tmp_path


def params(quantization="nf4", augment_on="device") -> dict:
    return {"embed": {"quantization": quantization, "batch_tokens": 16384},
            "pretrain": {"data": {"augment_on": augment_on}}}


def test_gpu_rates_are_the_runs_rates_times_the_measured_models_flops(tmp_path):
    root = planted(tmp_path, run_text(15000, 50.0, 66), run_text(17000, 20.0, 66, aug_rate=1600))
    rates = gpu_rates(params(), root)
    assert rates["embed"].value == pytest.approx(16000 * lm_flops_per_token(KNOWN_LMS["meta-llama/Llama-2-7b-hf"]))
    assert rates["embed"].how.startswith("measured: 16,000 tokens/s (mean of 2 runs, 15,000 to 17,000)")
    # the GPU's rate while fed: 1000 / 0.5 and 1600 / 0.8 images/s, both 2000
    assert rates["pretrain"].value == pytest.approx(2000 * vit_sizes(BENCH_VIT)["train_flops"])
    # the loader's: (1000 + 1600) / 2 images/s from 16 workers
    assert rates["loader"].value == pytest.approx(1300 / 16)
    assert rates["other"].value == rates["pretrain"].value


def test_without_runs_or_with_gpu_tflops_every_gpu_rate_is_an_assumption(tmp_path):
    rates = gpu_rates(params(), tmp_path)
    assert {k: v.value for k, v in rates.items()} == {"embed": 100e12, "pretrain": 100e12, "other": 100e12}
    assert all("assumed 100 TFLOP/s" in v.how and "no run" in v.how for v in rates.values())
    root = planted(tmp_path / "r", run_text(15000, 50.0, 66))
    given = gpu_rates(params(), root, gpu_tflops=300)
    assert set(given) == {"embed", "pretrain", "other"} and all(v.value == 300e12 for v in given.values())
    # measured runs, but none at this quantization or with sustained rows: assumed for those stages only
    rates = gpu_rates(params("fp32"), planted(tmp_path / "b", run_text(15000, 0.2, 2)))
    assert rates["embed"].value == rates["pretrain"].value == 100e12 and "loader" not in rates


def test_the_committed_h200_runs_give_every_rate_the_mimic_profile_needs():
    rows = read_runs(ROOT)
    assert {r["card"] for r in rows} == {"NVIDIA H200"}
    assert embed_rows(rows, "nf4", 16384) and pretrain_rows(rows, "device")
    rates = gpu_rates(params(), ROOT)
    assert rates["embed"].how.startswith("measured") and rates["pretrain"].how.startswith("measured")
