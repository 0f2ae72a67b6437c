"""MAE parts: patchify round trip, masking, fixed sin-cos, the masked forward vs timm's, checkpoint init."""

import pytest
import torch

from cxrpipe.pretrain.mae import (
    MAEConfig,
    MaskedAutoencoder,
    load_pretrained_encoder,
    patchify,
    random_masking,
    sincos_pos_embed_2d,
    unpatchify,
)

CFG = MAEConfig(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2,
                decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2, mask_ratio=0.75)


def test_patchify_unpatchify_round_trip():
    imgs = torch.randn(3, 1, 32, 32)
    x = patchify(imgs, 8)
    assert x.shape == (3, 16, 64)
    # patch 1 is the second patch of the first row: rows 0..7, columns 8..15, row-major pixels
    assert torch.equal(x[0, 1], imgs[0, 0, 0:8, 8:16].reshape(-1))
    assert torch.equal(unpatchify(x, 8), imgs)
    with pytest.raises(ValueError, match="not divisible"):
        patchify(torch.zeros(1, 1, 30, 30), 8)


@pytest.mark.parametrize("ratio", [0.75, 0.5, 0.9])
def test_random_masking_ratio_and_restore(ratio):
    x = torch.arange(2 * 16, dtype=torch.float32).reshape(2, 16, 1).expand(-1, -1, 4)
    kept, mask, ids_restore = random_masking(x, ratio, noise=torch.rand(2, 16, generator=torch.Generator().manual_seed(0)))
    keep = int(16 * (1 - ratio))
    assert kept.shape == (2, keep, 4)
    assert mask.sum(1).tolist() == [16 - keep] * 2  # exactly the ratio, per sample
    for b in range(2):  # the kept tokens are exactly the unmasked positions
        assert sorted(kept[b, :, 0].long().tolist()) == [b * 16 + i for i in range(16) if mask[b, i] == 0]
    # ids_restore undoes the shuffle
    ids_shuffle = torch.argsort(ids_restore, dim=1)
    assert torch.equal(torch.gather(ids_shuffle, 1, ids_restore), torch.arange(16).expand(2, -1))


def test_sincos_is_fixed_and_shaped():
    pe = sincos_pos_embed_2d(32, 4)
    assert pe.shape == (17, 32) and torch.all(pe[0] == 0)
    assert torch.allclose(pe[1, :8], torch.zeros(8)) and torch.allclose(pe[1, 8:16], torch.ones(8))  # pos 0
    assert len({tuple(r.tolist()) for r in pe[1:]}) == 16  # every position distinct
    mae = MaskedAutoencoder(CFG)
    assert not mae.encoder.pos_embed.requires_grad and not mae.decoder_pos_embed.requires_grad
    assert torch.allclose(mae.encoder.pos_embed[0], pe)


def test_unmasked_forward_equals_timm_forward_features():
    mae = MaskedAutoencoder(CFG).eval()
    imgs = torch.randn(2, 1, 32, 32)
    latent, mask, _ = mae.forward_encoder(imgs, mask_ratio=0.0)
    assert mask.sum() == 0
    torch.testing.assert_close(latent, mae.encoder.forward_features(imgs))
    assert mae.encoder(imgs).shape == (2, 32)  # global_pool avg, num_classes 0


def test_mae_forward_shapes_and_loss_on_masked_patches_only():
    mae = MaskedAutoencoder(CFG)
    imgs = torch.randn(2, 1, 32, 32)
    out = mae(imgs)
    assert out.pred.shape == (2, 16, 64) and out.latent.shape == (2, 1 + 4, 32)
    assert out.mask.sum().item() == 2 * 12
    # changing the prediction of a kept patch does not change the loss; of a masked one does
    pred = out.pred.detach().clone()
    kept = (out.mask[0] == 0).nonzero()[0, 0]
    masked = (out.mask[0] == 1).nonzero()[0, 0]
    base = mae.reconstruction_loss(imgs, pred, out.mask)
    p2 = pred.clone(); p2[0, kept] += 5
    assert torch.allclose(mae.reconstruction_loss(imgs, p2, out.mask), base)
    p3 = pred.clone(); p3[0, masked] += 5
    assert mae.reconstruction_loss(imgs, p3, out.mask) > base
    out.loss.backward()
    assert mae.encoder.patch_embed.proj.weight.grad is not None and mae.encoder.pos_embed.grad is None


def test_init_from_local_rgb_checkpoint(tmp_path):
    import timm
    from safetensors.torch import save_file

    rgb = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, patch_size=8, embed_dim=32,
                            depth=2, num_heads=2, num_classes=5)
    state = {"model": {**rgb.state_dict(), "decoder_embed.weight": torch.zeros(1)}}  # MAE-style file
    torch.save(state, tmp_path / "mae.pth")
    mae = MaskedAutoencoder(CFG)
    load_pretrained_encoder(mae.encoder, str(tmp_path / "mae.pth"))
    torch.testing.assert_close(mae.encoder.blocks[1].mlp.fc2.weight, rgb.blocks[1].mlp.fc2.weight)
    torch.testing.assert_close(mae.encoder.patch_embed.proj.weight, rgb.patch_embed.proj.weight.sum(1, keepdim=True))
    torch.testing.assert_close(mae.encoder.pos_embed[0], sincos_pos_embed_2d(32, 4))  # kept fixed
    save_file({k: v for k, v in rgb.state_dict().items() if not k.startswith("blocks.1.")}, tmp_path / "partial.safetensors")
    with pytest.raises(ValueError, match="missing.*blocks.1"):
        load_pretrained_encoder(mae.encoder, str(tmp_path / "partial.safetensors"))
