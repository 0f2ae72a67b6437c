"""The benchmarks cannot rot.

benchmarks/gpu.py: its --tiny mode runs every row on CPU; without CUDA the real mode stops at once.
benchmarks/stage_times.py: a synthetic timestamped log splits into the right stages and import sums, and a
real two-stage ``dvc repro`` goes through it.
benchmarks/zeroshot_prompts.py: its label rule, its prompt sets (the committed grid gives every label a pair).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_gpu_benchmark_tiny_prints_every_row(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--tiny", "--workdir", str(tmp_path)],
                         capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = [line for line in res.stdout.splitlines() if line.startswith("stage ")]
    assert [r.split("  ")[0] for r in rows] == ["stage 1 LLaMA-2-7b nf4", "stage 1 LLaMA-2-7b bf16",
                                                "stage 2 ViT-B/16 bf16 eager aug device",
                                                "stage 2 ViT-B/16 bf16 compile aug device",
                                                "stage 2 ViT-B/16 bf16 eager aug loader"]
    for r in rows:
        assert float(r.split()[-1]) > 0  # the MIMIC-CXR hours column is a number


def test_gpu_benchmark_without_cuda_fails_fast_and_clearly(tmp_path):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(ROOT))
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--workdir", str(tmp_path)],
                         capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 2 and "no CUDA device" in res.stderr
    assert not any(tmp_path.iterdir())  # stopped before writing a checkpoint


def _stage_times():
    """benchmarks/stage_times.py as a module (benchmarks/ is not a package)."""
    if "stage_times" not in sys.modules:
        spec = importlib.util.spec_from_file_location("stage_times", ROOT / "benchmarks" / "stage_times.py")
        sys.modules["stage_times"] = importlib.util.module_from_spec(spec)  # its dataclass needs it there
        spec.loader.exec_module(sys.modules["stage_times"])
    return sys.modules["stage_times"]


def _imports(*rows: tuple[int, int, str]) -> list[str]:
    """One Python process's ``-X importtime`` lines: (cumulative us, nesting level, module), children first."""
    out = ["import time: self [us] | cumulative | imported package"]
    for cum, level, module in rows:
        out.append(f"import time: {cum // 2:>9} | {cum:>10} | {'  ' * level}{module}")
    return out


# a: one process, torch (3.0 s, two nested levels below it) + json; b skipped; c@x from the run cache;
# d: two processes (its command runs python twice), 0.5 s + 0.25 s at top level
SYNTHETIC = [
    (0.2, "Stage 'b' didn't change, skipping"),
    (1.0, "Running stage 'a':"),
    (1.0, "> cxrpipe a"),
    *[(1.1, line) for line in _imports((900_000, 2, "torch._C"), (1_200_000, 1, "torch.nn"),
                                       (3_000_000, 0, "torch"), (20_000, 0, "json"))],
    (2.5, "a: done"),
    (3.0, "Generating lock file 'dvc.lock'"),
    (3.0, "Updating lock file 'dvc.lock'"),
    (3.2, "Stage 'c@x' is cached - skipping run, checking out outputs"),
    (3.6, "Updating lock file 'dvc.lock'"),
    (4.0, "Running stage 'd':"),
    *[(4.1, line) for line in _imports((100_000, 1, "numpy.core"), (500_000, 0, "numpy"))],
    *[(5.0, line) for line in _imports((250_000, 0, "numpy"))],
    (7.5, "Updating lock file 'dvc.lock'"),
    (8.0, "To track the changes with git, run:"),
]


def test_stage_times_splits_a_synthetic_log_per_stage():
    st = _stage_times()
    stages, wall = st.split_stages(SYNTHETIC)
    assert [(s.name, s.status) for s in stages] == [("b", "skipped"), ("a", "ran"), ("c@x", "cached"), ("d", "ran")]
    by = {s.name: s for s in stages}
    assert by["a"].wall_s == pytest.approx(2.0)  # Running stage -> its lock-file line, not the next stage
    assert by["d"].wall_s == pytest.approx(3.5)
    assert by["b"].wall_s == by["c@x"].wall_s == 0 and by["b"].import_us == by["c@x"].import_us == 0
    assert (by["a"].processes, by["d"].processes) == (1, 2)
    totals = st.summary(stages, wall)
    assert totals["wall_s"] == 8.0 and totals["stage_wall_s"] == pytest.approx(5.5)
    assert totals["dvc_overhead_s"] == pytest.approx(2.5)
    assert totals["stages_skipped"] == ["b"] and totals["stages_cached"] == ["c@x"]
    text = st.table(stages, totals, top=1)
    assert "skipped (didn't change, counted 0): b" in text and "cached (restored" in text and "c@x" in text
    assert "a: torch 3.00 s" in text


def test_stage_times_sums_top_level_imports_only():
    st = _stage_times()
    by = {s.name: s for s in st.split_stages(SYNTHETIC)[0]}
    # torch's cumulative 3.0 s already holds torch.nn and torch._C: counting them too would give 5.12 s
    assert by["a"].import_us == 3_020_000 and by["a"].imports == {"torch": 3_000_000, "json": 20_000}
    assert by["d"].import_us == 750_000 and by["d"].imports == {"numpy": 750_000}  # both processes' numpy
    assert st.summary(list(by.values()), 8.0)["import_s"] == pytest.approx(3.77)


def test_stage_times_reads_a_saved_log(tmp_path):
    log = tmp_path / "run.log"
    log.write_text("# stage_times.py: dvc repro\n" + "".join(f"{t:.3f}\t{line}\n" for t, line in SYNTHETIC)
                   + "# exit 0\n")
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "stage_times.py"), "--log", str(log),
                          "--out", str(tmp_path / "t.json")], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    out = json.loads((tmp_path / "t.json").read_text())
    assert [s["name"] for s in out["stages"] if s["status"] == "ran"] == ["a", "d"]
    assert out["import_s"] == pytest.approx(3.77) and out["dvc_overhead_s"] == pytest.approx(2.5)
    missing = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "stage_times.py"), "--log",
                              str(tmp_path / "nope.log")], capture_output=True, text=True, timeout=60)
    assert missing.returncode != 0 and "nope.log: no such file" in missing.stderr
    (tmp_path / "other.log").write_text("Running stage 'a':\n")  # a plain dvc output, no timestamps
    other = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "stage_times.py"), "--log",
                            str(tmp_path / "other.log")], capture_output=True, text=True, timeout=60)
    assert other.returncode != 0 and "other.log: line 1 is not" in other.stderr and "Traceback" not in other.stderr


def test_stage_times_runs_a_real_dvc_repro(tmp_path):
    """Two stages that import json and sleep 0.3 s, in a throwaway DVC repository (no git, no network)."""
    stage_cmd = 'python -c \\"import json, time; time.sleep(0.3)\\" > {out}'
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n" + "".join(f"  {n}:\n    cmd: \"{stage_cmd.format(out=n + '.txt')}\"\n    outs: [{n}.txt]\n"
                               for n in ("one", "two")))
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               DVC_NO_ANALYTICS="1")
    env.pop("PYTHONPROFILEIMPORTTIME", None)
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=tmp_path, env=env, check=True,
                   timeout=60)
    cmd = [sys.executable, str(ROOT / "benchmarks" / "stage_times.py"), "--out", "t.json", "--", "dvc", "repro"]
    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout[-3000:]
    out = json.loads((tmp_path / "t.json").read_text())
    assert [(s["name"], s["status"]) for s in out["stages"]] == [("one", "ran"), ("two", "ran")]
    for s in out["stages"]:
        assert s["wall_s"] >= 0.3 and s["import_s"] > 0 and "json" in s["imports"]
        # DVC's own lazy imports (while it caches the outputs) are not the stage's
        assert not [m for m in s["imports"] if m.split(".")[0] in ("dvc", "dvc_data", "dulwich", "ruamel")]
    assert "import time:" not in res.stdout  # not echoed
    assert "Running stage 'one'" in res.stdout and "wall s" in res.stdout
    assert out["machine"]["cpu"]["cores"] >= 1 and "torch" in out["machine"]["versions"]  # where it ran
    again = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    out = json.loads((tmp_path / "t.json").read_text())
    assert again.returncode == 0 and out["stages_skipped"] == ["one", "two"] and out["stages_run"] == 0


def _zeroshot_prompts():
    """benchmarks/zeroshot_prompts.py as a module."""
    spec = importlib.util.spec_from_file_location("zeroshot_prompts", ROOT / "benchmarks" / "zeroshot_prompts.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_prompt_benchmark_scores_only_labels_with_enough_validate_positives():
    """A planted label is read (AUROC 1, and 0 when its scores are reversed); a label with 5 positives counts, one
    with 4, or one whose positives are all masked out, is left out of the mean."""
    zp = _zeroshot_prompts()
    rng = np.random.default_rng(0)
    y = np.zeros((40, 5))
    y[:10, 0] = y[:10, 1] = 1
    y[:4, 2] = 1
    y[:10, 3] = 1
    y[:5, 4] = 1  # exactly recipe_search.MIN_POSITIVES: counted
    s = rng.normal(size=y.shape)
    s[:, 0], s[:, 1], s[:, 4] = y[:, 0] + 0.1 * s[:, 0], -y[:, 1], y[:, 4]
    m = np.ones_like(y, dtype=bool)
    m[:10, 3] = False
    out = zp.label_aucs(y, s, m, ["A", "B", "C", "D", "E"])
    assert out == {"A": 1.0, "B": 0.0, "E": 1.0}


def test_prompt_benchmark_reads_params_prompts_and_checks_every_set(tmp_path):
    """``default: params`` is params' zeroshot.prompts; a set that leaves out a label is the zeroshot section's
    own error."""
    from cxrpipe.config import ConfigError
    from cxrpipe.evaluate.alignment.zeroshot import DEFAULT_PROMPTS

    zp = _zeroshot_prompts()
    params = {"zeroshot": {"prompts": {k: list(v) for k, v in DEFAULT_PROMPTS.items()}}}
    params["zeroshot"]["prompts"]["Edema"] = ["Findings: Edema.", "Findings: No edema."]
    other = {k: [f"Impression: {k}.", f"Impression: No {k}."] for k in DEFAULT_PROMPTS}
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"default": "params", "terse": other}))
    sets = zp.prompt_sets(grid, params)
    assert list(sets) == ["default", "terse"]
    assert sets["default"]["Edema"] == ["Findings: Edema.", "Findings: No edema."]
    assert sets["terse"]["Edema"] == ["Impression: Edema.", "Impression: No Edema."]
    del other["Edema"]
    grid.write_text(yaml.safe_dump({"terse": other}))
    with pytest.raises(ConfigError, match="missing \\['Edema'\\]"):
        zp.prompt_sets(grid, params)


def test_the_committed_prompt_grid_gives_every_label_a_pair():
    zp = _zeroshot_prompts()
    from cxrpipe.config import load_params

    sets = zp.prompt_sets(ROOT / "benchmarks" / "recipes" / "prompts.yaml", load_params(ROOT / "params.yaml"))
    assert len(sets) >= 3 and all(len(p) == 14 for p in sets.values())


def _bench_module(name: str):
    """benchmarks/<name>.py as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _planted_run(preds: Path, metrics: Path | None, name: str, pattern: list[float]) -> None:
    """8 test studies of 4 patients, one label (positives 0, 1, 4, 5); ``pattern`` repeated twice gives the
    AUROC its 4 values rank right (as in tests/evaluate/test_compare_summaries.py)."""
    from cxrpipe.evaluate.stats.metrics import Predictions, evaluate, jsonable, save_predictions

    probs = np.full((8, 14), 0.5, np.float32)
    probs[:, 0] = pattern * 2
    targets = np.zeros((8, 14), np.float32)
    targets[[0, 1, 4, 5], 0] = 1.0
    mask = np.zeros((8, 14), bool)
    mask[:, 0] = True
    p = Predictions(np.array([f"i{k}" for k in range(8)]), np.arange(100, 108, dtype=np.int64), probs, targets, mask,
                    subject_ids=np.arange(8) // 2)
    preds.mkdir(parents=True, exist_ok=True)
    save_predictions(p, preds / f"{name}.npz", encoder=name.split("-")[0], protocol="linear")
    if metrics is not None:
        metrics.mkdir(parents=True, exist_ok=True)
        m = {"encoder": name.split("-")[0], "dataset": {"source": "iu-xray", "demo": False},
             **evaluate(p, p, n_bootstrap=20, seed=0)}
        (metrics / f"{name}.json").write_text(json.dumps(jsonable(m)))


def test_joint_seeds_joins_separate_seed_runs_and_checks_reproduction(tmp_path):
    """Seed 0 in a workspace (mae 0.75, multimodal 1.0), seed 3 in a committed run (mae 1.0, multimodal 0.75): the
    joint compare has seeds [0, 3] with deltas +0.25 / -0.25; a stale seed file in the workspace is not read; the
    reference check counts the one planted number that differs and ignores durations."""
    js = _bench_module("joint_seeds")
    A, B, R, P = [.9, .2, .5, .1], [.9, .8, .5, .1], [.4, .2, .3, .5], [.6, .55, .5, .7]
    ws, run = tmp_path / "ws", tmp_path / "seed3"
    metrics, preds = ws / "data" / "metrics", ws / "data" / "predictions"
    for name, pattern in [("mae-linear", A), ("multimodal-linear", B), ("random-linear", R), ("pixels", P)]:
        _planted_run(preds, metrics, name, pattern)
    _planted_run(preds, None, "multimodal-linear-seed3", B)  # stale: the committed run's seed 3 must win
    (metrics / "mae-linear.config.json").write_text(json.dumps({"encoder_seed": 0}))
    (metrics / "zeroshot-multimodal.json").write_text(json.dumps({"mauc": 0.7}))
    (metrics / "zeroshot-nih_cxr14-mae.json").write_text(json.dumps({"mauc": 0.6}))  # another profile's: not carried
    for name, pattern in [("mae-linear-seed3", B), ("multimodal-linear-seed3", A), ("random-linear-seed3", R)]:
        _planted_run(run / "predictions", None, name, pattern)
    (ws / "params.yaml").write_text(yaml.safe_dump({"compare": {"n_bootstrap": 100, "seed": 0},
                                                    "stats": {"min_test_positives": 0}}))
    ref = tmp_path / "ref"
    ref.mkdir()
    mae = json.loads((metrics / "mae-linear.json").read_text())
    mae["study"]["mauc"] += 0.5
    mae["train_seconds"] = 12.0  # a duration: never compared
    (ref / "mae-linear.json").write_text(json.dumps(mae))
    (ref / "zeroshot-multimodal.json").write_text(json.dumps({"mauc": 0.7, "eval_seconds": 3.0}))
    (ref / "zeroshot-multimodal.config.json").write_text(json.dumps({"level": "study"}))  # no number: not listed
    (metrics / "zeroshot-multimodal.config.json").write_text(json.dumps({"level": "study"}))

    out = tmp_path / "out"
    assert js.main(["--workspace", str(ws), "--seed-run", str(run), "--reference", str(ref), "--out", str(out)]) == 0
    comp = json.loads((out / "comparison.json").read_text())
    assert comp["seeds"]["seeds"] == [0, 3]
    assert [r["delta_mauc"] for r in comp["seeds"]["linear"]["per_seed"]] == pytest.approx([0.25, -0.25])
    assert comp["seeds"]["linear"]["delta_mauc"]["mean"] == pytest.approx(0.0)
    assert json.loads((out / "zeroshot-multimodal.json").read_text()) == {"mauc": 0.7}  # carried
    assert (out / "zeroshot-multimodal.config.json").is_file() and not (out / "zeroshot-nih_cxr14-mae.json").exists()
    rep = json.loads((out / "reproduce.json").read_text())
    assert rep["mae-linear.json"]["differ"] == 1 and rep["mae-linear.json"]["max_abs_diff"] == pytest.approx(0.5)
    assert rep["mae-linear.json"]["first_differences"] == ["study.mauc"]
    assert rep["zeroshot-multimodal.json"]["differ"] == 0 and rep["zeroshot-multimodal.json"]["numbers"] == 1
    assert set(rep) == {"mae-linear.json", "zeroshot-multimodal.json"}

    (metrics / "multimodal-linear.config.json").write_text(json.dumps({"encoder_seed": 2}))  # a rerun half done
    with pytest.raises(SystemExit, match="trained with different seeds"):
        js.main(["--workspace", str(ws), "--seed-run", str(run), "--out", str(out)])
    (metrics / "multimodal-linear.config.json").write_text(json.dumps({"encoder_seed": 3}))
    (metrics / "mae-linear.config.json").write_text(json.dumps({"encoder_seed": 3}))
    with pytest.raises(SystemExit, match="seed 3 is also a --seed-run's"):
        js.main(["--workspace", str(ws), "--seed-run", str(run), "--out", str(out)])
    with pytest.raises(SystemExit, match="seed 3 is given twice"):
        js.main(["--workspace", str(ws), "--seed-run", str(run), "--seed-run", str(run), "--out", str(out)])
