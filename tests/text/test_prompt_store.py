"""Zero-shot under every `embed.store_dtype` (issue 17, item 3), and prompts cleaned as reports are.

Before: the prompt cache was always written float16 but stamped with the params' store_dtype, so under
bfloat16 its rows read back as garbage (zeros and NaNs) and under int8 zero-shot failed with KeyError 'scales'.
"""

from __future__ import annotations

import dataclasses
import re

import h5py
import numpy as np
import pytest
import torch

from cxrpipe.config import ConfigError
from cxrpipe.evaluate.alignment.zeroshot import ZeroShotConfig, prompt_texts, run_zeroshot
from cxrpipe.text.cache import TextCache, hash_texts
from cxrpipe.text.embed import EmbedConfig
from cxrpipe.text.prompts import clean_prompts, prompt_fingerprint, write_prompt_cache
from cxrpipe.text.store import StoreDtype

SECTIONS = ("findings", "impression")
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def scored(tmp_path_factory, tiny_model_dir):
    """A prepared set with labelled test studies and an exported model whose text side reads the tiny LLaMA's
    64 dims (random weights: the test is about storage, not learning)."""
    from cxrpipe.data.manifest import read_images, read_studies, write_manifest
    from cxrpipe.encoder import save_encoder
    from cxrpipe.pretrain.heads import save_heads
    from cxrpipe.pretrain.losses import LossConfig
    from cxrpipe.pretrain.mae import MAEConfig
    from cxrpipe.pretrain.model import PretrainModel
    from cxrpipe.pretrain.pooling import PoolConfig
    from tests.pretrain.synthetic import make_pairs

    root = tmp_path_factory.mktemp("zs-store")
    prepared, _ = make_pairs(root, n_train=8, n_val=24, hidden=64)
    test_ids = sorted(s.study_id for s in read_studies(prepared) if s.split == "validate")[8:]  # 16 test studies

    def as_test(x):
        return dataclasses.replace(x, split="test") if x.study_id in test_ids and x.split == "validate" else x

    def labelled(s):
        c = int(re.search(r"cluster (\d)", s.text).group(1))
        return dataclasses.replace(s, labels=tuple(float((j + c) % 3 == 0) for j in range(14)))

    write_manifest(prepared, [as_test(r) for r in read_images(prepared)],
                   [labelled(as_test(s)) for s in read_studies(prepared)])
    mae = MAEConfig(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, decoder_embed_dim=16,
                    decoder_depth=1, decoder_num_heads=2)
    pool, loss = PoolConfig(dim=16, num_heads=2), LossConfig()
    torch.manual_seed(0)
    model = PretrainModel(mae, pool, loss, text_hidden=64)
    out = root / "model"
    save_encoder(model.encoder, out, {"arch": mae.arch, "kwargs": mae.timm_kwargs(), "pixel_mean": 0.5,
                                      "pixel_std": 0.25, "variant": "multimodal"})
    save_heads(model, out, {"pool": pool, "loss": loss, "text_hidden": 64, "embed_dim": 32})
    return {"prepared": prepared, "model": out, "llm": tiny_model_dir, "root": root}


def _embed_cfg(llm, store) -> EmbedConfig:
    return EmbedConfig(model=str(llm), quantization="fp32", prompt="The findings are:", max_tokens=64,
                       store_dtype=StoreDtype(store))


def test_zeroshot_scores_agree_under_every_storage_form(scored, tmp_path):
    from cxrpipe.data.image_cache import ImageCache
    from cxrpipe.data.manifest import read_images
    from cxrpipe.evaluate.alignment.scorer import load_aligned, score_matrix

    zs = ZeroShotConfig(n_bootstrap=20, batch_size=8)
    texts = prompt_texts(zs)
    model = load_aligned(scored["model"])
    rows = [r.row for r in read_images(scored["prepared"]) if r.split == "test" and r.view == "PA"]
    scores, results = {}, {}
    for store in StoreDtype:
        cfg = _embed_cfg(scored["llm"], store)
        path = tmp_path / f"prompts-{store.value}.h5"
        write_prompt_cache(cfg, texts, path, SECTIONS)
        with h5py.File(path) as f:  # stored in the configured form, and says so
            assert f.attrs["store_dtype"] == store.value
            assert f["embeddings"].dtype == {"float16": np.float16, "bfloat16": np.uint16, "int8": np.int8}[store.value]
        cache = TextCache(path, expect=prompt_fingerprint(cfg, texts, SECTIONS))
        scores[store] = score_matrix(model, ImageCache(scored["prepared"] / "images.h5"), rows, cache,
                                     [cache.row_of(i) for i in range(len(texts))])
        results[store] = run_zeroshot(zs, scored["model"], scored["prepared"], path,
                                      prompt_fingerprint(cfg, texts, SECTIONS), tmp_path / f"z-{store.value}.json")
    ref = scores[StoreDtype.float16]
    spread = float(ref.max() - ref.min())
    assert np.isfinite(ref).all() and spread > 0
    for store in (StoreDtype.bfloat16, StoreDtype.int8):
        assert np.isfinite(scores[store]).all()
        # 8 bits of mantissa (bf16), 1/127 of a token's range (int8): the scores move by a small fraction of
        # their spread; garbage rows (what bfloat16 read before) move them by the spread itself
        assert np.abs(scores[store] - ref).max() < 0.02 * spread, store
        assert results[store]["mauc"] == pytest.approx(results[StoreDtype.float16]["mauc"], abs=0.05)


def test_prompts_are_cleaned_as_reports_are():
    raw = ["There is a ptx.", "Findings: No  pnuemothorax.   Impression: NGT in place."]
    assert clean_prompts(raw, SECTIONS) == ["There is a pneumothorax.",
                                            "Findings: No pneumothorax. Impression: Nasogastric tube in place."]
    with pytest.raises(ConfigError, match="empty once cleaned"):
        clean_prompts(["Findings: ___"], SECTIONS)


def test_the_fingerprint_records_the_cleaned_prompts_and_the_storage_form(tmp_path):
    cfg = _embed_cfg(tmp_path, "float16")  # a folder that exists: its identity is hashed, nothing loaded
    a = prompt_fingerprint(cfg, ["There is a ptx."], SECTIONS)
    assert a.texts_hash == hash_texts(["There is a pneumothorax."])
    assert a == prompt_fingerprint(cfg, ["There is a  pneumothorax."], SECTIONS)  # the same text once cleaned
    assert a.store_dtype == "float16"
    b = prompt_fingerprint(dataclasses.replace(cfg, store_dtype=StoreDtype.int8), ["There is a ptx."], SECTIONS)
    assert a.differences(b) == ["store_dtype: cache='float16' params='int8'"]
