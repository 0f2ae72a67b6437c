"""Pieces of the finetune stage: label-fraction sampling, the labelled splits, masked BCE, layer decay."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cxrpipe.config import ConfigError, section
from cxrpipe.evaluate.probe.data import labelled_splits, sample_studies
from cxrpipe.evaluate.probe.finetune import (
    Classifier,
    ClassifierHead,
    FinetuneConfig,
    FullFinetuneConfig,
    HeadConfig,
    _param_groups,
    masked_bce,
)
from cxrpipe.labels import BlankPolicy, UncertainPolicy


def test_sample_studies_by_study_with_a_seed():
    ids = np.repeat(np.arange(1000, 1200), 3)  # 200 studies, three images each
    a = sample_studies(ids, 0.1, seed=0)
    assert a.size == 20 and np.unique(a).size == 20 and np.isin(a, ids).all()
    np.testing.assert_array_equal(a, sample_studies(ids[::-1], 0.1, seed=0))  # order of rows irrelevant
    assert not np.array_equal(a, sample_studies(ids, 0.1, seed=1))
    assert sample_studies(ids, 0.001, seed=0).size == 1  # at least one study
    np.testing.assert_array_equal(sample_studies(ids, 1.0, seed=0), np.arange(1000, 1200))
    with pytest.raises(ValueError, match="label_fraction"):
        sample_studies(ids, 0.0, seed=0)


def test_labelled_splits_keep_frontal_images_of_labelled_studies(synthetic):
    splits = labelled_splits(synthetic["prepared"], ("AP", "PA"), UncertainPolicy.IGNORE, BlankPolicy.ZEROS)
    assert {k: v.n_studies for k, v in splits.items()} == {"train": 27, "validate": 10, "test": 10}
    assert 50000005 not in splits["train"].study_ids  # no label row
    every = labelled_splits(synthetic["prepared"], (), UncertainPolicy.IGNORE, BlankPolicy.ZEROS)
    assert len(every["test"]) > len(splits["test"])  # laterals come back with views = ()
    # uncertain labels are masked by default, become positives under "ones"
    ones = labelled_splits(synthetic["prepared"], ("PA",), UncertainPolicy.ONES, BlankPolicy.ZEROS)
    pa = labelled_splits(synthetic["prepared"], ("PA",), UncertainPolicy.IGNORE, BlankPolicy.ZEROS)
    assert (~pa["train"].mask).any() and ones["train"].mask.all()
    assert ones["train"].targets.sum() > pa["train"].targets.sum()


def test_masked_bce_ignores_masked_entries():
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.0]])
    mask = torch.tensor([[True, False], [True, True]])
    t1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    t2 = torch.tensor([[1.0, 1.0], [0.0, 1.0]])  # differs only where masked
    assert masked_bce(logits, t1, mask) == masked_bce(logits, t2, mask)
    manual = torch.nn.functional.binary_cross_entropy_with_logits(logits[mask], t1[mask])
    assert masked_bce(logits, t1, mask) == pytest.approx(float(manual))


def test_layer_decay_param_groups():
    import timm

    enc = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, in_chans=1,
                            embed_dim=32, depth=2, num_heads=2, num_classes=0)
    model = Classifier(enc, ClassifierHead(32, HeadConfig(hidden=(16,))))
    groups = _param_groups(model, FullFinetuneConfig(lr=1.0, layer_decay=0.5, weight_decay=0.1))
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    wd_of = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    assert len(lr_of) == sum(1 for _ in model.parameters())  # every parameter in exactly one group
    # timm's layers: embeddings 0, block i -> i + 1, final norm with the last block; head at full lr
    assert lr_of[id(enc.patch_embed.proj.weight)] == pytest.approx(0.25)
    assert lr_of[id(enc.blocks[0].attn.qkv.weight)] == pytest.approx(0.5)
    assert lr_of[id(enc.blocks[1].attn.qkv.weight)] == pytest.approx(1.0)
    assert lr_of[id(enc.norm.weight)] == pytest.approx(1.0)
    assert lr_of[id(model.head.net[-1].weight)] == 1.0
    assert wd_of[id(enc.blocks[0].attn.qkv.weight)] == 0.1 and wd_of[id(enc.blocks[0].attn.qkv.bias)] == 0.0
    assert wd_of[id(enc.pos_embed)] == 0.0


def test_head_shapes_and_params_are_strict():
    head = ClassifierHead(32, HeadConfig(hidden=(16, 8), dropout=0.1))
    assert head(torch.randn(4, 32)).shape == (4, 14)
    assert ClassifierHead(32, HeadConfig(hidden=(), input_norm=False))(torch.randn(2, 32)).shape == (2, 14)
    with pytest.raises(ConfigError, match="lr_decay"):
        section({"finetune": {"finetune": {"lr_decay": 0.5}}}, "finetune", FinetuneConfig)
