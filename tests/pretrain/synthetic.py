"""Synthetic prepared data + text cache for the pretraining tests (written here, no shared files)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from cxrpipe.data.image_cache import ImageCacheWriter
from cxrpipe.data.manifest import ImageRecord, StudyRecord, write_manifest
from cxrpipe.text.cache import Fingerprint, hash_texts, write_text_cache

TINY = {  # a ViT small enough for CPU tests: img 32, patch 8 (16 patches), dim 32, depth 2
    "model": {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2,
              "decoder_embed_dim": 32, "decoder_depth": 1, "decoder_num_heads": 2},
    "pool": {"dim": 16, "num_heads": 2},
}


def make_pairs(root: Path, n_train: int = 24, n_val: int = 8, size: int = 32, hidden: int = 24,
               n_clusters: int = 4, seed: int = 0, fingerprint=None,
               shuffle_train_text: bool = False, duplicate_train_texts: int = 0) -> tuple[Path, Path]:
    """A prepared folder (images.csv, studies.csv, images.h5) and text.h5 whose images and reports share a
    hidden cluster: a bright blob at a cluster-specific place, report tokens near a cluster direction.

    The last validate study's report is the previous one's text row (identical texts are stored once), and
    one more image is a lateral view (filtered out). ``fingerprint(texts) -> Fingerprint`` overrides the
    cache's fingerprint. ``shuffle_train_text``: the train studies get each other's reports (a random
    permutation), so the training pairs carry no image-text signal; validate keeps its true pairs.
    ``duplicate_train_texts``: train studies ``n_clusters .. n_clusters + k - 1`` reuse the report text row of
    the first study of their cluster (``i % n_clusters``): identical reports of different studies.
    """
    rng = np.random.default_rng(seed)
    prepared = root / "prepared"
    n = n_train + n_val
    yy, xx = np.mgrid[0:size, 0:size] / size
    centers = [(0.25 + 0.5 * (c % 2), 0.25 + 0.5 * (c // 2 % 2)) for c in range(n_clusters)]
    directions = rng.normal(size=(n_clusters, hidden)) * 3
    images, studies, embeddings, token_ids = [], [], [], []
    dicom_ids = []
    rows = []
    for i in range(n + 1):  # the last one is a lateral view of study 0
        sid = 50000000 + (i if i < n else 0)
        split = "train" if (i < n_train or i == n) else "validate"
        c = (i if i < n else 0) % n_clusters
        cy, cx = centers[c]
        img = 0.3 + 0.5 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 0.02) + rng.normal(0, 0.05, (size, size))
        rows.append(np.clip(img * 255, 0, 255).astype(np.uint8))
        dicom_ids.append(f"d{i:04d}")
        images.append(ImageRecord(i, dicom_ids[-1], sid, 10000000 + i, split, "PA" if i < n else "LATERAL", f"x/{i}.jpg"))
        if i < n:
            studies.append(StudyRecord(sid, 10000000 + i, split, f"report {i} cluster {c}", {}, tuple([math.nan] * 14)))
            length = int(rng.integers(4, 12))
            embeddings.append((directions[c] + rng.normal(size=(length, hidden))).astype(np.float32))
            token_ids.append(np.arange(length))
    with ImageCacheWriter(prepared / "images.h5", dicom_ids, size=size) as w:
        for i, img in enumerate(rows):
            w.write(i, img)
    write_manifest(prepared, images, studies)
    study_rows = list(range(n))
    if shuffle_train_text:
        study_rows[:n_train] = rng.permutation(n_train).tolist()
    for i in range(n_clusters, n_clusters + duplicate_train_texts):
        study_rows[i] = i % n_clusters
    study_rows[-1] = n - 2  # the last validate study shares the previous one's report text
    fp = fingerprint([s.text for s in studies]) if fingerprint else Fingerprint(model="synthetic", revision="", quantization="fp32", layer=-1, prompt="", sections=("findings",),
                     max_tokens=64, texts_hash=hash_texts(s.text for s in studies))
    text = root / "text.h5"
    write_text_cache(text, embeddings, token_ids, [s.study_id for s in studies], study_rows, fp)
    return prepared, text
