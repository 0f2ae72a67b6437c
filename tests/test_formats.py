"""Round trips of the shared on-disk formats: manifest CSVs, images.h5, text.h5, exported encoder."""

import math

import numpy as np
import pytest
import torch

from cxrpipe.data.image_cache import ImageCache, ImageCacheError, ImageCacheWriter, verify_image_cache
from cxrpipe.data.manifest import (
    ImageRecord, StudyRecord, label_matrix, read_images, read_label_names, read_studies, write_manifest,
)
from cxrpipe.labels import CHEXPERT_LABELS
from cxrpipe.text.cache import Fingerprint, TextCache, TextCacheError, hash_texts, write_text_cache


def test_manifest_round_trip(tmp_path):
    labels = tuple([1.0, 0.0, -1.0, math.nan] + [0.0] * 10)
    studies = [
        StudyRecord(50000001, 10000001, "train", 'Findings: "quoted", comma.\nImpression: ok', {"findings": "x"}, labels),
        StudyRecord(50000002, 10000002, "test", "", {}, tuple([math.nan] * 14), has_labels=False),
    ]
    images = [ImageRecord(0, "a-b", 50000001, 10000001, "train", "PA", "files/p10/p10000001/s50000001/a-b.jpg")]
    write_manifest(tmp_path, images, studies)
    assert read_images(tmp_path) == images
    back = read_studies(tmp_path)
    assert back[0].text == studies[0].text and back[0].sections == {"findings": "x"}
    assert back[0].label("Lung Lesion") == 0.0 and back[0].label("Atelectasis") == 1.0
    assert math.isnan(back[0].label("Edema")) and not back[1].has_labels
    m = label_matrix(back)
    assert m.shape == (2, len(CHEXPERT_LABELS)) and m[0, 2] == -1.0


def test_image_cache_round_trip_and_atomic_write(tmp_path):
    ids = ["a", "b", "c"]
    img = np.arange(16, dtype=np.uint8).reshape(4, 4)
    w = ImageCacheWriter(tmp_path / "images.h5", ids, size=4)
    w.write(1, img)
    w.close(complete=False)  # an interrupted write leaves nothing
    assert not (tmp_path / "images.h5").exists() and not (tmp_path / "images.h5.tmp").exists()
    with pytest.raises(ImageCacheError, match="not found"):
        ImageCache(tmp_path / "images.h5")
    with pytest.raises(ImageCacheError, match="never written"):
        with ImageCacheWriter(tmp_path / "images.h5", ids, size=4) as w:
            w.write(0, img)
    with ImageCacheWriter(tmp_path / "images.h5", ids, size=4) as w:
        w.write(2, 255 - img)  # out of order: checksummed by reading back
        w.write(0, img)
        w.write(1, img)
    c = ImageCache(tmp_path / "images.h5")
    assert len(c) == 3 and c.dicom_ids() == ids
    assert (c[1] == img).all() and (c[2] == 255 - img).all()
    assert set(verify_image_cache(tmp_path / "images.h5")) == {"images", "dicom_id"}
    with pytest.raises(ValueError, match="expected uint8"):
        ImageCacheWriter(tmp_path / "other.h5", ids, size=4).write(0, img.astype(np.float32))


def _fp(**kw):
    base = dict(model="m", revision="r", quantization="nf4", layer=-1, prompt="p", sections=("findings", "impression"), max_tokens=64, texts_hash=hash_texts(["a", "b"]), package_version="0.1.0")
    base.update(kw)
    return Fingerprint(**base)


def test_text_cache_round_trip_and_refusal(tmp_path):
    rng = np.random.default_rng(0)
    emb = [rng.normal(size=(3, 8)).astype(np.float32), rng.normal(size=(5, 8)).astype(np.float32)]
    ids = [np.array([1, 2, 3]), np.array([4, 5, 6, 7, 8])]
    path = tmp_path / "text.h5"
    write_text_cache(path, emb, ids, study_ids=[11, 12, 13], study_rows=[0, 1, 1], fingerprint=_fp())
    c = TextCache(path, expect=_fp(package_version="other"))  # package version is not enforced
    assert c.offsets.tolist() == [0, 3, 8] and c.n_texts == 2 and c.hidden_size == 8
    assert c.file["embeddings"].dtype == np.float16 and c.file["embeddings"].shape == (8, 8)
    np.testing.assert_allclose(c.for_study(13), emb[1], atol=1e-2)
    assert c.token_ids(0).tolist() == [1, 2, 3] and c.row_of(12) == 1 and 99 not in c
    with pytest.raises(TextCacheError, match=r"prompt: cache='p' params='q'"):
        TextCache(path, expect=_fp(prompt="q"))
    with pytest.raises(TextCacheError, match=r"model_identity: cache='' params='local:other'"):
        TextCache(path, expect=_fp(model_identity="local:other"))  # other weights behind the same name
    assert hash_texts(["b", "a", "a"]) == hash_texts(["a", "b"])


def test_unfinished_text_cache_is_refused(tmp_path):
    import h5py

    with h5py.File(tmp_path / "text.h5", "w") as f:
        f.attrs["complete"] = False
    with pytest.raises(TextCacheError, match="not a finished cache"):
        TextCache(tmp_path / "text.h5")


def test_encoder_export_round_trip(tmp_path):
    import timm

    from cxrpipe.encoder import load_encoder, normalize_uint8, save_encoder

    kwargs = dict(img_size=32, patch_size=8, in_chans=1, embed_dim=32, depth=2, num_heads=2, num_classes=0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, **kwargs)
    with torch.no_grad():
        model.blocks[0].attn.qkv.weight.add_(1.0)  # perturb so a re-init cannot pass
    save_encoder(model, tmp_path, {"arch": "vit_tiny_patch16_224", "kwargs": kwargs, "pixel_mean": 0.5, "pixel_std": 0.25})
    back, cfg = load_encoder(tmp_path)
    x = normalize_uint8(torch.randint(0, 255, (2, 32, 32), dtype=torch.uint8), cfg["pixel_mean"], cfg["pixel_std"])
    assert x.shape == (2, 1, 32, 32)
    model.eval(), back.eval()
    torch.testing.assert_close(model(x), back(x))


def test_manifest_other_label_set(tmp_path):
    """A transfer dataset's own label columns round-trip; readers take the names from the header."""
    names = ("Pneumonia",)
    st = [StudyRecord(1, 2, "train", "t", {}, (1.0,)), StudyRecord(3, 4, "test", "u", {}, (math.nan,), False)]
    write_manifest(tmp_path, [ImageRecord(0, "a", 1, 2, "train", "PA", "x.png")], st, label_names=names)
    assert read_label_names(tmp_path) == names
    back = read_studies(tmp_path)
    assert back[0].labels == (1.0,) and back[0].label("Pneumonia", names) == 1.0
    assert label_matrix(back, 1).shape == (2, 1)
