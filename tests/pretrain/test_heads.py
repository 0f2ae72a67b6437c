"""The exported text side (text_head.safetensors + text_head.json) reloads and scores as during training."""

import pytest
import torch

from cxrpipe.config import build
from cxrpipe.pretrain.heads import HEADS_CONFIG, HEADS_FILE, cross_attention, latent_attention, load_heads, save_heads
from cxrpipe.pretrain.losses import LossConfig
from cxrpipe.pretrain.mae import MAEConfig
from cxrpipe.pretrain.model import PretrainModel
from cxrpipe.pretrain.pooling import PoolConfig

from .synthetic import TINY

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _model(kind: str, loss: str) -> tuple[PretrainModel, PoolConfig, LossConfig, MAEConfig]:
    torch.manual_seed(0)
    mae = build(MAEConfig, TINY["model"])
    pool = build(PoolConfig, {**TINY["pool"], "kind": kind})
    lc = build(LossConfig, {"kind": loss, "temperature": 0.2})
    model = PretrainModel(mae, pool, lc, text_hidden=24)
    with torch.no_grad():  # perturb every weight: a load that silently kept the init would not match
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval(), pool, lc, mae


@pytest.mark.parametrize("kind,loss", [("latent", "margin"), ("latent", "infonce"), ("cross", "margin")])
def test_exported_heads_reload_and_score_as_in_training(tmp_path, kind, loss):
    model, pool, lc, mae = _model(kind, loss)
    save_heads(model, tmp_path, {"pool": pool, "loss": lc, "text_hidden": 24, "embed_dim": mae.embed_dim,
                                 "max_text_tokens": 8})
    assert (tmp_path / HEADS_FILE).exists() and (tmp_path / HEADS_CONFIG).exists()
    heads, cfg = load_heads(tmp_path)
    assert cfg["max_text_tokens"] == 8 and heads.pool_kind == kind
    images = torch.randn(3, 1, 32, 32)
    text = torch.randn(4, 6, 24)
    mask = torch.ones(4, 6, dtype=torch.bool)
    mask[1, 4:] = False
    with torch.no_grad():
        patches = model.patch_tokens(images)
        want_img, want_txt = model.embed_pairs(patches, text, mask)
        want = model.contrastive.scores(want_img, want_txt)
        assert torch.allclose(heads.embed_text(text, mask), want_txt, atol=1e-6)
        assert torch.allclose(heads.scores(patches, text, mask), want, atol=1e-5)
        if kind == "latent":
            assert torch.allclose(heads.embed_image(patches), want_img, atol=1e-6)


def test_load_without_export_names_the_cause(tmp_path):
    with pytest.raises(FileNotFoundError, match="re-run pretrain"):
        load_heads(tmp_path)


def test_attention_rows_sum_to_one_over_real_tokens():
    model, *_ = _model("latent", "margin")
    x = torch.randn(2, 5, 16)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    a = latent_attention(model.text_pool, x, mask)  # [B, H, N]
    assert torch.allclose(a.sum(-1), torch.ones(2, a.shape[1]), atol=1e-5)
    assert a[1, :, 3:].abs().max() < 1e-6  # padded tokens receive nothing
    # the recomputed weights give timm's own pooled output (same attention, same values)
    p = model.text_pool.pool
    v = p.kv(x).reshape(2, 5, 2, p.num_heads, p.head_dim).permute(2, 0, 3, 1, 4)[1]  # [B, H, N, hd]
    out = p.proj((a[:, :, None, :] @ v).transpose(1, 2).reshape(2, 1, -1))
    out = (out + p.mlp(p.norm(out)))[:, 0]
    assert torch.allclose(out, model.text_pool(x, mask), atol=1e-5)
    cross, *_ = _model("cross", "margin")
    c = cross_attention(cross.cross_pool, torch.randn(7, 16), torch.randn(16, 32))  # [H, L, P]
    assert c.shape == (2, 7, 16) and torch.allclose(c.sum(-1), torch.ones(2, 7), atol=1e-5)


@pytest.mark.parametrize("kind,loss", [("latent", "margin"), ("latent", "infonce"), ("cross", "margin")])
def test_exported_heads_score_what_the_training_forward_fed_its_loss(tmp_path, kind, loss):
    """Not the evaluation path on both sides: the embeddings `PretrainModel.forward` hands its contrastive loss
    during training (captured from the loss call; unmasked patches, `visible_tokens: false`) give the same
    scores as the exported heads reloaded from disk, and the loss on them is the forward's loss."""
    torch.manual_seed(0)
    mae = build(MAEConfig, TINY["model"])
    pool = build(PoolConfig, {**TINY["pool"], "kind": kind})
    lc = build(LossConfig, {"kind": loss, "temperature": 0.2, "visible_tokens": False})
    model = PretrainModel(mae, pool, lc, text_hidden=24).train()
    with torch.no_grad():  # perturb every weight: a load that silently kept the init would not match
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    save_heads(model, tmp_path, {"pool": pool, "loss": lc, "text_hidden": 24, "embed_dim": mae.embed_dim})
    heads, _ = load_heads(tmp_path)
    images, text = torch.randn(4, 1, 32, 32), torch.randn(4, 6, 24)
    mask = torch.ones(4, 6, dtype=torch.bool)
    mask[2, 3:] = False
    ids = torch.tensor([[0, 0], [1, 1], [1, 2], [3, 3]])  # a duplicate text
    seen = {}
    real = model.contrastive.forward

    def spy(image, text_emb, **kw):
        seen.update(image=image.detach(), text=text_emb.detach())
        out = real(image, text_emb, **kw)
        seen["loss"] = out["contrastive_loss"].detach()
        return out

    model.contrastive.forward = spy
    with torch.no_grad():
        trained = model(images, text, mask, ids=ids)["contrastive_loss"]
        model.eval()
        patches = model.patch_tokens(images)
        exported = heads.scores(patches, text, mask)  # the evaluation path, from the files on disk
    assert torch.allclose(trained, seen["loss"])
    # dropout-free heads: training mode changes nothing the scores depend on
    assert torch.allclose(model.contrastive.scores(seen["image"], seen["text"]), exported, atol=1e-5)
    if kind == "latent":
        assert torch.allclose(heads.embed_image(patches), seen["image"], atol=1e-6)
        assert torch.allclose(heads.embed_text(text, mask), seen["text"], atol=1e-6)
