"""Kill prepare, embed and pretrain with SIGKILL at random moments, rerun, compare with an uninterrupted run.

    OMP_NUM_THREADS=1 python benchmarks/kill_stages.py --kills 20              # all three stages
    python benchmarks/kill_stages.py --stages prepare --kills 50 --seed 1

Runs in the repository root on the demo (``params.yaml``'s data: run ``dvc repro demo_data text_model``
first), in a scratch folder (``--work``, default ``/tmp/cxrpipe-kill``). Per stage: one uninterrupted
reference run; then, per trial, a fresh run is started (``--resume`` for pretrain), SIGKILLed (its whole
process group, decoding workers included) at a moment drawn uniformly over the duration of a full run (the reference's, or the latest uninterrupted one's),
rerun to the end, and its outputs compared byte for byte with the reference's (prepare: images.h5 and the
manifest CSVs; embed: text.h5; pretrain: encoder.safetensors and loss.csv). A kill that comes after the run
already ended is not counted; the trial is drawn again. Prints ``<stage>: N kills, M identical`` per stage.

Overrides for speed (a params copy in --work): prepare.flush_every (default 64: many resume points),
embed.part_tokens (256), pretrain.epochs / batch_size / checkpoint_every (2 / 8 / 1: a short run with
several checkpoints); pretrain runs on the first ``--studies`` studies of the prepared demo (30) and their
text cache, the killed embed on the first ``--embed-studies`` (10), so that dozens of runs fit in an hour on
a shared CPU.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

OUTPUTS = {
    "prepare": ["images.h5", "images.csv", "studies.csv", "rejects.csv"],
    "embed": ["text.h5"],
    "embed-small": ["text.h5"],
    "pretrain": ["model/encoder.safetensors", "plots/loss.csv"],
}


def commands(stage: str, params: Path, work: Path, out: Path) -> list[str]:
    cx = [sys.executable, "-m", "cxrpipe"]
    if stage == "prepare":
        return cx + ["prepare", "--params", str(params), "--out", str(out)]
    if stage in ("embed", "embed-small"):  # embed-small: the killed one, on fewer studies (--embed-studies)
        manifest = work / ("subset-embed" if stage == "embed-small" else "subset")
        return cx + ["embed", "--params", str(params), "--manifest", str(manifest),
                     "--out", str(out / "text.h5"), "--report", str(out / "text-report.json")]
    return cx + ["pretrain", "--params", str(params), "--variant", "multimodal",
                 "--prepared", str(work / "subset"), "--text-cache", str(work / "embed" / "ref" / "text.h5"),
                 "--out", str(out / "model"), "--metrics", str(out / "metrics.json"), "--plots", str(out / "plots"),
                 "--resume"]


def make_subset(prepared: Path, out: Path, n_studies: int) -> None:
    """A prepared folder with the first ``n_studies`` studies (by id) of each split's share: the same
    images.h5, images.csv/studies.csv filtered (rows keep their images.h5 index). Keeps embed and pretrain
    short enough to run dozens of times on a CPU."""
    import csv

    out.mkdir(parents=True, exist_ok=True)
    with (prepared / "studies.csv").open(newline="") as f:
        reader = csv.DictReader(f)
        studies = sorted(reader, key=lambda r: int(r["study_id"]))
    keep = {r["study_id"] for r in studies[:n_studies]}
    for name in ("studies.csv", "images.csv"):
        with (prepared / name).open(newline="") as f, (out / name).open("w", newline="") as g:
            reader = csv.DictReader(f)
            w = csv.DictWriter(g, fieldnames=reader.fieldnames)
            w.writeheader()
            w.writerows(r for r in reader if r["study_id"] in keep)
    if not (out / "images.h5").exists():
        os.link(prepared / "images.h5", out / "images.h5")


def run(cmd: list[str], log: Path) -> float:
    t0 = time.perf_counter()
    with log.open("a") as f:
        res = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({res.returncode}); see {log}")
    return time.perf_counter() - t0


def killed_at(cmd: list[str], delay: float, log: Path) -> tuple[bool, float]:
    """Start ``cmd``, SIGKILL its process group after ``delay`` s. -> (still running then, seconds it ran)."""
    t0 = time.perf_counter()
    with log.open("a") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            proc.wait(timeout=delay)
            return False, time.perf_counter() - t0  # ended before the kill
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return True, time.perf_counter() - t0


def identical(stage: str, ref: Path, out: Path) -> bool:
    return all(filecmp.cmp(ref / name, out / name, shallow=False) for name in OUTPUTS[stage])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stages", default="prepare,embed,pretrain")
    ap.add_argument("--kills", type=int, default=20, help="SIGKILLs per stage")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--work", type=Path, default=Path("/tmp/cxrpipe-kill"))
    ap.add_argument("--flush-every", type=int, default=64)
    ap.add_argument("--pretrain-epochs", type=int, default=2)
    ap.add_argument("--checkpoint-every", type=int, default=1)
    ap.add_argument("--pretrain-batch-size", type=int, default=8)
    ap.add_argument("--studies", type=int, default=30, help="studies embed and pretrain run on (a subset)")
    ap.add_argument("--embed-studies", type=int, default=10, help="studies the killed embed runs on")
    ap.add_argument("--part-tokens", type=int, default=256, help="embed.part_tokens: many parts to resume from")
    ap.add_argument("--embed-quantization", default="", help="override embed.quantization (e.g. bf16: faster on CPU)")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    args.work.mkdir(parents=True, exist_ok=True)
    params = yaml.safe_load(args.params.read_text())
    params["prepare"]["flush_every"] = args.flush_every
    params["pretrain"].update(epochs=args.pretrain_epochs, checkpoint_every=args.checkpoint_every,
                              batch_size=args.pretrain_batch_size)
    params["embed"].update(part_tokens=args.part_tokens, batch_tokens=min(params["embed"]["batch_tokens"], args.part_tokens))
    if args.embed_quantization:
        params["embed"]["quantization"] = args.embed_quantization
    p = args.work / "params.yaml"
    p.write_text(yaml.safe_dump(params))
    stages = args.stages.split(",")
    tally = {}
    # each stage's reference run reads the one before's; "embed" (all --studies) feeds pretrain, the
    # killed embed is "embed-small" (--embed-studies: a short run, so dozens fit)
    stages = ["embed-small" if s == "embed" else s for s in stages]
    order = ["prepare", "embed-small", "embed", "pretrain"]
    last = max(order.index(s) for s in stages)
    for stage in order[: last + 1]:
        if stage == "embed-small" and stage not in stages:
            continue
        ref = args.work / stage / "ref"
        log = args.work / f"{stage}.log"
        if not all((ref / name).exists() for name in OUTPUTS[stage]):
            shutil.rmtree(ref, ignore_errors=True)
            ref.mkdir(parents=True)
            seconds = run(commands(stage, p, args.work, ref), log)
            (ref / ".seconds").write_text(f"{seconds}\n")
        seconds = float((ref / ".seconds").read_text())
        if stage == "prepare":
            make_subset(ref, args.work / "subset", args.studies)
            make_subset(ref, args.work / "subset-embed", args.embed_studies)
        if stage not in stages:
            continue
        kills = same = trials = 0
        out = args.work / stage / "run"
        while kills < args.kills:
            trials += 1
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
            delay = rng.uniform(0.0, seconds)
            killed, ran = killed_at(commands(stage, p, args.work, out), delay, log)
            if not killed:
                seconds = ran  # the machine got faster than the reference run: draw over this run's length
                continue
            kills += 1
            run(commands(stage, p, args.work, out), log)
            ok = identical(stage, ref, out)
            same += ok
            print(f"  {stage} kill {kills}/{args.kills} at {delay:.2f}s of ~{seconds:.1f}s: "
                  f"{'identical' if ok else 'DIFFERENT'}", flush=True)
        tally[stage] = (kills, same, trials)
        print(f"{stage}: {kills} kills, {same} identical ({trials - kills} draws came after the run ended)",
              flush=True)
    print("\n".join(f"{s.replace('-small', '')}: {k} kills, {m} identical" for s, (k, m, _) in tally.items()))


if __name__ == "__main__":
    main()
