"""The GPU measurements of ``benchmarks/gpu.py``, read back from its committed output.

``benchmarks/gpu.py`` prints one table per run (stage one at LLaMA-2-7b's shape, stage two at ViT-B/16); the
runs of one machine are kept, as printed, in ``benchmarks/results/gpu-<card>/run*.txt``. :func:`read_runs`
parses them; :func:`gpu_rates` turns them into the sustained FLOP/s ``cxrpipe plan`` divides a stage's FLOPs by,
each with where it was measured. Nothing here is typed by hand: change the runs, and the plan and the docs'
generated table (``cxrpipe results``) follow.
"""

from __future__ import annotations

import re
import statistics
from pathlib import Path
from typing import Any

# where the committed runs lie (relative to the repository root)
GPU_RESULTS = Path("benchmarks/results/gpu-h200")
# stage two's model in benchmarks/gpu.py (pretrain.model keys; ViT-B/16 at 224 px, MAE mask 0.75)
BENCH_VIT = {"arch": "vit_base_patch16_224", "img_size": 224, "patch_size": 16, "embed_dim": 768, "depth": 12,
             "num_heads": 12, "mlp_ratio": 4.0, "decoder_embed_dim": 512, "decoder_depth": 8, "decoder_num_heads": 16,
             "mask_ratio": 0.75}
# the loader prefetches workers x this many batches while the warm-up steps run (benchmarks/gpu.py)
PREFETCH_FACTOR = 4


def warmup_steps(workers: int) -> int:
    """benchmarks/gpu.py's untimed stage-two steps: compilation and worker start (2), then the batches the
    workers prefetched meanwhile (workers x PREFETCH_FACTOR at most), so the timed steps see the loader's steady
    state."""
    return 2 + workers * PREFETCH_FACTOR

_CARD = re.compile(r"^# (?P<card>[^;]+); torch (?P<torch>\S+);")
_STAGE1 = re.compile(r"^stage 1 LLaMA-2-7b (?P<quant>\w+)\s+(?P<rate>[\d.]+) tok/s\s+(?P<padding>[\d.]+)%"
                     r"\s+(?P<peak>[\d.]+|nan)\s+(?P<hours>[\d.]+)\s*$")
_STAGE2 = re.compile(r"^stage 2 ViT-B/16 bf16 (?P<mode>eager|compile) aug (?P<aug>device|loader)\s+(?P<rate>[\d.]+) "
                     r"img/s\s+(?P<step>[\d.]+)\s+(?P<wait>[\d.]+)%\s+(?P<peak>[\d.]+|nan)\s+(?P<hours>[\d.]+)\s*$")
_FOOTER = re.compile(r"batch_tokens (?P<batch_tokens>\d+);.*stage 2: batch (?P<batch>\d+), (?P<steps>\d+) timed "
                     r"steps after (?P<warmup>\d+) warm-up, (?P<workers>\d+) loader workers")


def parse_run(text: str, name: str = "") -> list[dict[str, Any]]:
    """The rows of one printed run of ``benchmarks/gpu.py`` (several runs may follow each other in ``text``):
    per row its stage, setting, rate (tokens/s or images/s) and the run's settings from its footer."""
    rows: list[dict[str, Any]] = []
    run: list[dict[str, Any]] = []
    card = torch = ""
    for line in text.splitlines():
        if m := _CARD.match(line):
            card, torch = m["card"], m["torch"]
        elif m := _STAGE1.match(line):
            run.append({"stage": 1, "setting": m["quant"], "rate": float(m["rate"]), "unit": "tokens/s",
                        "padding": float(m["padding"]) / 100, "peak_gib": float(m["peak"]), "card": card,
                        "torch": torch, "file": name})
        elif m := _STAGE2.match(line):
            where = "on the GPU" if m["aug"] == "device" else "in the loader workers"
            run.append({"stage": 2, "setting": f"{m['mode']}, augmentation {where}", "mode": m["mode"],
                        "augment_on": m["aug"], "rate": float(m["rate"]), "unit": "images/s",
                        "step_s": float(m["step"]), "wait": float(m["wait"]) / 100, "peak_gib": float(m["peak"]),
                        "card": card, "torch": torch, "file": name})
        elif m := _FOOTER.search(line):
            settings = {k: int(v) for k, v in m.groupdict().items()}
            for row in run:
                row.update(settings)
                # the loader's steady state: the batches prefetched during the warm-up were drained first (or
                # are a small share of the timed ones); else the row timed the buffer, not the loader
                buffered = PREFETCH_FACTOR * settings["workers"]
                row["sustained"] = (row["stage"] == 1 or settings["warmup"] >= buffered
                                    or settings["steps"] >= 10 * buffered)
            rows += run
            run = []
    return rows


def read_runs(root: Path | str = ".", folder: Path | None = None) -> list[dict[str, Any]]:
    """Every row of the committed runs under ``root / GPU_RESULTS`` (or ``folder``; [] when there are none)."""
    folder = folder if folder is not None else Path(root) / GPU_RESULTS
    return [row for path in sorted(folder.glob("run*.txt")) for row in parse_run(path.read_text(), path.name)]


def block(folder: Path) -> list[str]:
    """Every committed row as a Markdown table (``cxrpipe results``: docs/scale.md section 4)."""
    rows = read_runs(folder=folder)
    if not rows:
        return [f"_No run in {folder}: `python benchmarks/gpu.py` on a GPU machine, its output saved there._"]
    env = (folder / "env.txt").read_text().splitlines() if (folder / "env.txt").exists() else []
    lines = [f"One {rows[0]['card']}; {next((e for e in env if e.startswith('torch ')), 'torch ' + rows[0]['torch'])}.",
             "", "| run | row | rate | step s | waiting for data | padding | peak GiB | settings |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["stage"] == 1:
            cells = [f"stage one, LLaMA-2-7b {r['setting']}", f"{r['rate']:,.0f} tokens/s", "", "",
                     f"{r['padding']:.1%}", f"{r['peak_gib']:.2f}", f"batch_tokens {r['batch_tokens']:,}"]
        else:
            steady = "" if r["sustained"] else "; **prefetch not drained: an upper bound**"
            cells = [f"stage two, ViT-B/16 {r['setting']}", f"{r['rate']:,.0f} images/s", f"{r['step_s']:.3f}",
                     f"{r['wait']:.1%}", "", f"{r['peak_gib']:.2f}",
                     f"batch {r['batch']}, {r['steps']} timed steps after {r['warmup']} warm-up, "
                     f"{r['workers']} workers{steady}"]
        lines.append("| " + " | ".join([r["file"], *cells]) + " |")
    return lines


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean, min, max and count of the rows' rates."""
    rates = [r["rate"] for r in rows]
    return {"mean": statistics.fmean(rates), "min": min(rates), "max": max(rates), "n": len(rates),
            "files": sorted({r["file"] for r in rows})}


def embed_rows(rows: list[dict[str, Any]], quantization: str, batch_tokens: int) -> list[dict[str, Any]]:
    """Stage one's rows at this quantization (``none``/``bf16`` both mean bf16 weights), at ``batch_tokens``
    when any run used it, else at every batch size measured."""
    want = "bf16" if quantization in ("none", "bf16") else quantization
    same = [r for r in rows if r["stage"] == 1 and r["setting"] == want]
    at = [r for r in same if r["batch_tokens"] == batch_tokens]
    return at or same


def pretrain_rows(rows: list[dict[str, Any]], augment_on: str) -> list[dict[str, Any]]:
    """Stage two's sustained eager rows with the augmentation where ``pretrain.data.augment_on`` puts it."""
    return [r for r in rows if r["stage"] == 2 and r["mode"] == "eager" and r["augment_on"] == augment_on
            and r["sustained"]]
