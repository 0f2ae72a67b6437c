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


def test_resume_key_follows_the_image_cache_content_not_its_mtime(tmp_path, caplog):
    """A byte-identical rebuild of images.h5 (new mtime) keeps the checkpoint; other pixels do not."""
    import os
    import shutil

    import h5py

    from .synthetic import make_pairs

    caplog.set_level("INFO")
    prepared, text = make_pairs(tmp_path / "d")
    cfg = tiny_cfg(epochs=1)
    run(tmp_path, "r", prepared, text, cfg, max_steps=1)
    copy = prepared / "images.copy.h5"
    shutil.copy(prepared / "images.h5", copy)
    os.replace(copy, prepared / "images.h5")  # same bytes, a new file and mtime
    caplog.clear()
    run(tmp_path, "r", prepared, text, cfg, max_steps=2, resume=True)
    assert "resuming multimodal from step 1" in caplog.text
    with h5py.File(prepared / "images.h5", "r+") as f:  # other content: prepare records another hash
        f.attrs["sha256_images"] = "0" * 64
    caplog.clear()
    run(tmp_path, "r", prepared, text, cfg, resume=True)
    assert "images_h5: checkpoint=" in caplog.text and "starting from scratch" in caplog.text
