"""The reference run can be committed: every metric and small report DVC writes is a `cache: false` output that
git does not ignore (so `dvc metrics diff` and `dvc exp show` have numbers to compare), and dvc.lock is not
ignored either; the large outputs stay ignored."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SMALL = ("data/metrics/", "data/reports/", "data/cache/text-report")


def dvc_outputs() -> list[tuple[str, str, bool]]:
    """(stage, path, cached) of every out / metric / plot in dvc.yaml (templated paths kept as written)."""
    out = []
    for name, stage in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].items():
        stage = stage.get("do", stage)
        for kind in ("outs", "metrics", "plots"):
            for o in stage.get(kind) or []:
                path, opts = (o, {}) if isinstance(o, str) else next(iter(o.items()))
                out.append((name, path, bool((opts or {}).get("cache", True))))
    return out


def ignored(paths: list[str]) -> set[str]:
    """The paths git would ignore (by the rules alone: --no-index, the files need not exist)."""
    res = subprocess.run(["git", "check-ignore", "--no-index", "--stdin"], input="\n".join(paths), text=True,
                         capture_output=True, cwd=ROOT)
    assert res.returncode in (0, 1), res.stderr
    return set(res.stdout.split())


@pytest.fixture(scope="module")
def git():
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")


def concrete(path: str) -> str:
    """A stand-in file name for a templated output path (``${item.encoder}`` -> ``x``)."""
    return re.sub(r"\$\{[^}]+\}", "x", path)


def test_metrics_and_reports_are_uncached_and_not_ignored(git):
    small = [(s, p, c) for s, p, c in dvc_outputs() if p.startswith(SMALL)]
    assert len(small) >= 20  # every finetune / compare / evaluation metric is among them
    assert [(s, p) for s, p, c in small if c] == [], "a metric or report in DVC's cache cannot also be in git"
    assert ignored([concrete(p) for _, p, _ in small]) == set(), "data/.gitignore hides a metric or report"


def test_large_outputs_stay_out_of_git(git):
    big = ["data/cache/text.h5", "data/cache/text.h5.parts/part-000000-x.safetensors", "data/prepared/images.h5",
           "data/models/mae/encoder.safetensors", "data/predictions/mae-linear.npz", "data/plots/roc/Edema.png",
           "data/metrics/stray.npz", "data/label-efficiency/mae/f5.npz"]
    assert ignored(big) == set(big)
    assert ignored(["dvc.lock"]) == set()
