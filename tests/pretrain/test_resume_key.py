"""A checkpoint is continued only by the code that wrote it (package version + hash of the stage's source)."""

import dataclasses

import pytest

from cxrpipe import provenance
from cxrpipe.pretrain.train import CHECKPOINT

from .test_train import run, tiny_cfg

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def test_a_kept_checkpoint_of_other_code_is_not_reexported(tmp_path, data, caplog, monkeypatch):
    caplog.set_level("INFO")
    cfg = dataclasses.replace(tiny_cfg(epochs=1), keep_checkpoint=True)
    out, m = run(tmp_path, "k", *data, cfg)
    assert (out / "model" / CHECKPOINT).exists() and m["steps"] == 3
    caplog.clear()
    run(tmp_path, "k", *data, cfg, resume=True)  # same code: the finished checkpoint is taken as is
    assert "resuming multimodal from step 3 of 3" in caplog.text
    caplog.clear()
    monkeypatch.setattr(provenance, "code_key", lambda stage: "0.1.0+edited")  # the training code changed
    out, m = run(tmp_path, "k", *data, cfg, resume=True)
    assert "code: checkpoint=" in caplog.text and "starting from scratch" in caplog.text
    assert "resuming" not in caplog.text
    assert len((out / "plots" / "loss.csv").read_text().splitlines()) == 1 + 3  # trained again, 3 steps


def test_stage_source_lists_cover_dvc_deps():
    """Every library file dvc.yaml names as a dep of prepare/embed/pretrain keys that stage's resume."""
    import yaml

    stages = yaml.safe_load((provenance.PACKAGE_ROOT.parent / "dvc.yaml").read_text())["stages"]
    for stage in ("prepare", "embed", "pretrain"):
        deps = stages[stage]["do"]["deps"] if "do" in stages[stage] else stages[stage]["deps"]
        covered = {str(f.relative_to(provenance.PACKAGE_ROOT.parent)) for f in provenance.stage_files(stage)}
        for dep in deps:
            if not dep.startswith("cxrpipe/"):
                continue
            path = provenance.PACKAGE_ROOT.parent / dep
            files = [str(f.relative_to(provenance.PACKAGE_ROOT.parent)) for f in path.rglob("*.py")] if path.is_dir() else [dep]
            assert set(files) <= covered, (stage, dep)
