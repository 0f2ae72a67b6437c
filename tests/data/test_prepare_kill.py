"""prepare killed with SIGKILL at fixed points, then rerun: the very same images.h5, byte for byte; damaged
resume state is dropped, never trusted; the split is by subject."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

import cxrpipe.data.mimic as mimic_mod
from cxrpipe.data.mimic import study_split, subjects_in_several_splits
from cxrpipe.data.prepare import DELAY_ENV, PARTIAL_DIR, PrepareError, run_prepare
from tests.data.mimic_tree import write_tree

from .test_prepare import _cfgs, _interrupted_prepare

OUTPUTS = ("images.h5", "images.csv", "studies.csv", "rejects.csv")


@pytest.fixture(scope="module")
def tree_and_ref(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("kill")
    t = write_tree(tmp / "tree", 12, ("truncated",))
    run_prepare(*_cfgs(t), tmp / "ref")
    return t, tmp / "ref"


def _params(tmp_path, t):
    p = tmp_path / "params.yaml"
    data_cfg, prep_cfg = _cfgs(t)
    p.write_text(yaml.safe_dump({
        "data": {"root": str(data_cfg.root), "reports": str(data_cfg.reports)},
        "prepare": {k: v for k, v in dataclasses.asdict(prep_cfg).items()},
    }))
    return p


def _cmd(params, out):
    return [sys.executable, "-m", "cxrpipe", "prepare", "--params", str(params), "--out", str(out)]


def _same_outputs(a, b):
    for name in OUTPUTS:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


@pytest.mark.slow
@pytest.mark.parametrize("kill_after_chunks", [1, 3])
def test_sigkill_after_n_chunks_then_rerun_is_byte_identical(tree_and_ref, tmp_path, kill_after_chunks):
    t, ref = tree_and_ref
    params, out = _params(tmp_path, t), tmp_path / "out"
    env = dict(os.environ, **{DELAY_ENV: "0.4"})  # a pace to kill at: ~0.4 s after each chunk of 2 rows
    proc = subprocess.Popen(_cmd(params, out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(list((out / PARTIAL_DIR).glob("chunk-*.npz"))) < kill_after_chunks:
        assert proc.poll() is None, "prepare ended before it was killed"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and not (out / "images.h5").exists()
    rerun = subprocess.run(_cmd(params, out), capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resuming: " in rerun.stderr
    _same_outputs(ref, out)


def test_damaged_chunks_and_temp_files_are_dropped_and_redone(tree_and_ref, tmp_path, monkeypatch):
    t, ref = tree_and_ref
    out = tmp_path / "out"
    _interrupted_prepare(monkeypatch, t, out, 6)
    chunks = sorted((out / PARTIAL_DIR).glob("chunk-*.npz"))
    assert len(chunks) == 3
    chunks[1].write_bytes(chunks[1].read_bytes()[:300])  # a damaged disk: a truncated chunk
    (out / PARTIAL_DIR / (chunks[2].name + ".tmp")).write_bytes(b"half a write")  # a killed write's temp file
    report = run_prepare(*_cfgs(t), out)
    assert report.timing["resumed"] == 4  # chunks 0 and 2; chunk 1's rows decoded again
    _same_outputs(ref, out)


def test_a_study_gets_one_split_by_rule():
    assert study_split(["train", "train", "test"]) == "train"  # the majority
    assert study_split(["train", "test"]) == "test"  # a tie goes to the more held-out split
    assert study_split(["validate", "train"]) == "validate"
    assert study_split(["train"]) == "train"


def test_a_subject_in_two_splits_fails_prepare(tree_and_ref, tmp_path, monkeypatch):
    t, _ = tree_and_ref
    real = mimic_mod.read_mimic

    def leaky(*a, **k):
        read = real(*a, **k)
        studies = sorted(read.studies.values(), key=lambda s: s.study_id)
        a_, b_ = next((x, y) for x in studies for y in studies if x.split != y.split)
        read.studies[b_.study_id] = dataclasses.replace(b_, subject_id=a_.subject_id)  # same patient, two splits
        return read

    assert not subjects_in_several_splits(list(real(t.root, t.reports).studies.values()))
    monkeypatch.setattr(mimic_mod, "read_mimic", leaky)  # what the registry's reader calls
    with pytest.raises(PrepareError, match=r"1 subjects have studies in more than one split.*split must be by subject"):
        run_prepare(*_cfgs(t), tmp_path / "out")


def test_the_report_says_split_by_subject(tree_and_ref):
    import json

    _, ref = tree_and_ref
    assert json.loads((ref / "prepare_report.json").read_text())["split"].startswith("split by subject")
