"""Attention pooling: shapes, key padding masks, per-token text normalisation."""

import torch

from cxrpipe.pretrain.pooling import AttentionPool, CrossAttentionPool, TextProjection, additive_mask


def test_additive_mask():
    m = additive_mask(torch.tensor([[True, False]]), torch.float32)
    assert m.shape == (1, 1, 1, 2) and m[0, 0, 0, 0] == 0 and m[0, 0, 0, 1] < -1e30


def test_attention_pool_shape_and_padding_is_ignored():
    torch.manual_seed(0)
    pool = AttentionPool(in_dim=32, dim=16, num_heads=4).eval()
    x = torch.randn(3, 7, 32)
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[0, 4:] = False
    mask[1, 2:] = False
    out = pool(x, mask)
    assert out.shape == (3, 16)
    x2 = x.clone()
    x2[0, 4:] = 1e3 * torch.randn(3, 32)  # padded positions: any values
    x2[1, 2:] = 0
    torch.testing.assert_close(pool(x2, mask), out)
    # and the mask matters: without it, padding changes the output
    assert not torch.allclose(pool(x2), out, atol=1e-3)
    # one sequence padded = the same sequence alone, unpadded
    torch.testing.assert_close(pool(x[1:2, :2]), out[1:2])


def test_cross_attention_pool_pairs_and_mask():
    torch.manual_seed(0)
    pool = CrossAttentionPool(img_dim=32, dim=16, num_heads=2).eval()
    text = torch.randn(4, 6, 16)
    mask = torch.ones(4, 6, dtype=torch.bool)
    mask[2, 3:] = False
    patches = torch.randn(5, 9, 32)
    u = pool(text, mask, patches)
    assert u.shape == (5, 4, 16)  # one image embedding per (image, report) pair
    text2 = text.clone()
    text2[2, 3:] = 100.0
    torch.testing.assert_close(pool(text2, mask, patches), u)
    torch.testing.assert_close(pool(text[2:3, :3], None, patches[1:2]), u[1:2, 2:3])  # pair (1, 2) alone
    torch.testing.assert_close(pool(text, mask, patches, chunk=2), u)  # chunking changes nothing


def test_text_projection_normalises_each_token():
    torch.manual_seed(0)
    proj = TextProjection(hidden=24, dim=8)
    t = torch.randn(2, 5, 24)
    out = proj(t)
    t2 = t.clone()
    t2[0, 0] *= 1e4  # a "massive activation" token: same direction, huge scale
    t2[1, 3] = t2[1, 3] * 3 + 7  # any affine change of a token
    torch.testing.assert_close(proj(t2), out, atol=1e-4, rtol=1e-4)
    assert out.shape == (2, 5, 8)
