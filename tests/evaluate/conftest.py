"""Tiny synthetic inputs for stage three: a prepared set (manifest + images.h5) and two tiny encoders."""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path

import numpy as np
import pytest

from cxrpipe.data.image_cache import ImageCacheWriter
from cxrpipe.data.manifest import ImageRecord, StudyRecord, write_manifest
from cxrpipe.labels import CHEXPERT_LABELS

SIZE = 32


def make_prepared(out: Path, n_studies: int = 48, seed: int = 0) -> Path:
    """``out`` with images.csv, studies.csv, images.h5 and prepare_report.json.

    Studies 0..27 train, 28..37 validate, 38.. test; one or two frontal images each plus a lateral now and
    then (left out by the views filter); study 5 has no label row. Labels: 1 / 0 / -1 / blank at random;
    a positive label j brightens the j-th 8x8 tile (labels 0..13 over a 4x4 grid) so there is signal.
    """
    rng = np.random.default_rng(seed)
    images, studies, pixels = [], [], []
    for s in range(n_studies):
        split = "train" if s < 28 else "validate" if s < 38 else "test"
        raw = rng.choice([1.0, 0.0, 0.0, 0.0, -1.0, math.nan], size=len(CHEXPERT_LABELS))
        study_id, subject_id = 50000000 + s, 10000000 + s // 2
        studies.append(StudyRecord(study_id, subject_id, split, f"report {s}", {"findings": f"report {s}"},
                                   tuple(float(v) for v in raw), has_labels=s != 5))
        views = ["PA"] + (["AP"] if s % 3 == 0 else []) + (["LATERAL"] if s % 4 == 0 else [])
        for k, view in enumerate(views):
            img = rng.normal(60, 10, size=(SIZE, SIZE))
            for j in np.flatnonzero(raw == 1.0):
                r, c = divmod(int(j), 4)
                img[r * 8:(r + 1) * 8, c * 8:(c + 1) * 8] += 120
            pixels.append(np.clip(img, 0, 255).astype(np.uint8))
            row = len(images)
            images.append(ImageRecord(row, f"d{s:03d}-{k}", study_id, subject_id, split, view, f"files/{row}.jpg"))
    return _write_prepared(out, images, studies, pixels)


PLANTED = ("Cardiomegaly", "Pleural Effusion")  # the labels a bright tile marks in make_planted


def make_planted(out: Path, shuffle: bool = False, n_studies: int = 400, seed: int = 0) -> Path:
    """A prepared set whose labels are readable off the image: one frontal image per study; a study positive
    for ``PLANTED[0]`` has a bright top-left quarter, for ``PLANTED[1]`` bright stripes in the bottom-right
    quarter (prevalence 40% each, independent); every other label is blank (negative everywhere, so out of
    mAUC). 60% train, 15% validate, 25% test studies.

    ``shuffle``: the label rows are permuted over all studies (a permutation test): labels and images are
    then unrelated in every split, and a pipeline that does not leak labels can only score chance.
    """
    rng = np.random.default_rng(seed)
    n_train, n_val = int(0.6 * n_studies), int(0.15 * n_studies)
    cols = [CHEXPERT_LABELS.index(name) for name in PLANTED]
    positive = rng.random((n_studies, len(PLANTED))) < 0.4  # [S, k] what the images show
    labels = np.full((n_studies, len(CHEXPERT_LABELS)), math.nan)
    labels[:, cols] = positive.astype(float)
    if shuffle:
        labels = labels[rng.permutation(n_studies)]
    images, studies, pixels = [], [], []
    for s in range(n_studies):
        split = "train" if s < n_train else "validate" if s < n_train + n_val else "test"
        study_id, subject_id = 60000000 + s, 20000000 + s
        studies.append(StudyRecord(study_id, subject_id, split, f"report {s}", {"findings": f"report {s}"},
                                   tuple(float(v) for v in labels[s]), has_labels=True))
        img = rng.normal(60, 8, size=(SIZE, SIZE))
        if positive[s, 0]:  # a uniformly bright top-left quarter (4 patches of 8x8)
            img[:16, :16] += 100
        if positive[s, 1]:  # bright vertical stripes in the bottom-right quarter: another texture, so that an
            img[16:, 16::2] += 140  # encoder blind to position (a random ViT nearly is) still tells them apart
        pixels.append(np.clip(img, 0, 255).astype(np.uint8))
        images.append(ImageRecord(s, f"p{s:03d}", study_id, subject_id, split, "PA", f"files/{s}.jpg"))
    return _write_prepared(out, images, studies, pixels)


def make_encoder(out: Path, variant: str, seed: int) -> Path:
    """A tiny timm ViT (32 px, patch 8, dim 32, depth 2), exported as the pretrain stage does."""
    import timm
    import torch

    from cxrpipe.encoder import save_encoder

    kwargs = dict(img_size=SIZE, patch_size=8, in_chans=1, embed_dim=32, depth=2, num_heads=2, num_classes=0)
    torch.manual_seed(seed)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, **kwargs)
    save_encoder(model, out, {"arch": "vit_tiny_patch16_224", "kwargs": kwargs, "pixel_mean": 0.3,
                              "pixel_std": 0.2, "variant": variant})
    return out


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory) -> dict[str, Path]:
    """Prepared set + ``mae`` and ``multimodal`` encoders (read-only: tests write elsewhere)."""
    root = tmp_path_factory.mktemp("evaluate-inputs")
    return {
        "prepared": make_prepared(root / "prepared"),
        "mae": make_encoder(root / "models" / "mae", "mae", seed=1),
        "multimodal": make_encoder(root / "models" / "multimodal", "multimodal", seed=2),
    }


@pytest.fixture(scope="session")
def planted(tmp_path_factory) -> dict:
    """Planted-signal and shuffled-label prepared sets + a tiny random encoder (read-only)."""
    root = tmp_path_factory.mktemp("planted")
    return {
        "signal": make_planted(root / "signal"),
        "shuffled": make_planted(root / "shuffled", shuffle=True),
        "encoder": make_encoder(root / "random", "random", seed=3),
        "labels": PLANTED,
    }


def report_cluster(text: str) -> int:
    """The hidden cluster of a :func:`tests.pretrain.synthetic.make_pairs` report ("report 7 cluster 3")."""
    return int(re.search(r"cluster (\d)", text).group(1))


def cluster_prompt_cache(pairs: dict[str, Path], labels: list[str], cluster_of: dict[str, int], path: Path, swap=(),
                         fingerprint=None) -> Path:
    """A prompt cache stand-in for ``labels`` (:func:`~cxrpipe.evaluate.alignment.zeroshot.prompt_labels` order)
    from the reports of :func:`tests.pretrain.synthetic.make_pairs` (``pairs["prepared"]``, ``pairs["text"]``):
    label n's positive = a report of cluster ``cluster_of.get(n, 0)``, its negative = one of the next cluster;
    the labels in ``swap`` get the pair reversed. ``fingerprint``: the cache's (default: the report cache's)."""
    from cxrpipe.data.manifest import read_studies
    from cxrpipe.text.cache import TextCache, write_text_cache

    text = TextCache(pairs["text"])
    report_of: dict[int, int] = {}
    for s in read_studies(pairs["prepared"]):
        report_of.setdefault(report_cluster(s.text), text.row_of(s.study_id))
    rows = []
    for n in labels:
        c = cluster_of.get(n, 0)
        pair = [report_of[c], report_of[(c + 1) % len(report_of)]]
        rows += pair[::-1] if n in swap else pair
    write_text_cache(path, [text.text_row(r) for r in rows], [text.token_ids(r) for r in rows],
                     list(range(len(rows))), list(range(len(rows))), fingerprint or text.fingerprint)
    return path


@pytest.fixture(scope="session")
def params_file(tmp_path_factory) -> Path:
    """A params.yaml with stage three's sections at test size."""
    import yaml

    path = tmp_path_factory.mktemp("params") / "params.yaml"
    path.write_text(yaml.safe_dump(TINY_PARAMS))
    return path


@pytest.fixture
def tiny_params() -> dict:
    """Stage three's params sections at test size (a fresh copy per test)."""
    return copy.deepcopy(TINY_PARAMS)


TINY_PARAMS = {
    "finetune": {
        "seed": 0,
        "n_bootstrap": 50,
        "eval_batch_size": 16,
        "head": {"hidden": [16], "dropout": 0.1, "input_norm": True},
        "fc": {"steps": 12, "eval_every": 4, "batch_size": 8, "lrs": [0.01], "weight_decays": [0.0001]},
        "linear": {"steps": 12, "eval_every": 4, "batch_size": 8, "lrs": [0.01, 0.03], "weight_decays": [0.0001]},
        "finetune": {"epochs": 2, "batch_size": 8, "lr": 0.001, "weight_decay": 0.05, "layer_decay": 0.75,
                     "warmup_epochs": 0.5},
    },
    "compare": {"n_bootstrap": 100, "seed": 0, "level": "study"},
    # 10 test studies: labels with one positive are reported apart; a patient's two studies drawn together
    "stats": {"bootstrap_unit": "patient", "min_test_positives": 2},
}


def _write_prepared(out: Path, images: list, studies: list, pixels: list) -> Path:
    """A prepared folder as the prepare stage writes it: manifest, images.h5, a (demo) prepare report."""
    write_manifest(out, images, studies)
    with ImageCacheWriter(out / "images.h5", [r.dicom_id for r in images], SIZE) as w:
        for row, px in enumerate(pixels):
            w.write(row, px)
    (out / "prepare_report.json").write_text('{"source": "mimic-cxr-jpg", "demo": true, "root": "synthetic"}\n')
    return out
