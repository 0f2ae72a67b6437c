"""Contrastive losses: Eq. 1 by hand, InfoNCE properties, pairwise inputs, and the 2-process gather."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cxrpipe.pretrain.losses import InfoNCELoss, MarginContrastiveLoss, pairwise


def test_margin_loss_eq1_by_hand():
    # N = 3, unnormalised 2-d embeddings, eps = 2
    u = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    v = torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 2.0]])
    # squared distances d[i, j] = ||u_i - v_j||^2
    #   i=0: v0 1, v1 1, v2 5
    #   i=1: v0 2, v1 0, v2 4
    #   i=2: v0 1, v1 5, v2 1
    # positives (1 + 0 + 1) / 3 = 2/3
    # negatives: max(0, 2 - d)^2 over i != j: d01=1 -> 1, d02=5 -> 0, d10=2 -> 0, d12=4 -> 0, d20=1 -> 1, d21=5 -> 0
    #   sum 2, / (N (N - 1) = 6) = 1/3
    out = MarginContrastiveLoss(margin=2.0, normalize=False)(u, v)
    assert out["contrastive_loss"].item() == pytest.approx(2 / 3 + 1 / 3)
    assert out["positive_distance"].item() == pytest.approx(2 / 3)
    assert out["negative_distance"].item() == pytest.approx((1 + 5 + 2 + 4 + 1 + 5) / 6)


def test_margin_loss_normalised_first():
    u = torch.tensor([[2.0, 0.0], [0.0, 3.0]])
    v = torch.tensor([[5.0, 0.0], [0.0, 0.5]])
    # after L2 normalisation u == v: positives 0, negatives d = 2 (orthogonal unit vectors)
    out = MarginContrastiveLoss(margin=3.0, normalize=True)(u, v)
    assert out["contrastive_loss"].item() == pytest.approx((3 - 2) ** 2)
    assert MarginContrastiveLoss(margin=1.0)(u, v)["contrastive_loss"].item() == pytest.approx(0.0)


def test_infonce_symmetric_and_lower_when_aligned():
    torch.manual_seed(0)
    loss = InfoNCELoss(temperature=0.1)
    u = torch.randn(8, 16)
    v = u + 0.1 * torch.randn(8, 16)
    aligned = loss(u, v)["contrastive_loss"]
    assert aligned.item() == pytest.approx(loss(v, u)["contrastive_loss"].item(), rel=1e-6)  # symmetric
    shuffled = loss(u, v[torch.randperm(8)])["contrastive_loss"]
    assert aligned < shuffled
    # by hand for N = 2, orthonormal aligned pairs, T = 0.1: CE = log(1 + exp(-10)) both ways
    e = torch.eye(2)
    assert loss(e, e)["contrastive_loss"].item() == pytest.approx(math.log(1 + math.exp(-10)), rel=2e-3)  # float32
    assert loss.logit_scale.requires_grad
    assert not InfoNCELoss(learn_temperature=False).logit_scale.requires_grad


def test_pairwise_features_match_per_image_features():
    torch.manual_seed(0)
    u, v = torch.randn(4, 8), torch.randn(4, 8)
    u3 = u[:, None, :].expand(-1, 4, -1)  # [N, M, D] that does not depend on the report
    for norm in (True, False):
        s2, d2 = pairwise(u, v, norm)
        s3, d3 = pairwise(u3, v, norm)
        torch.testing.assert_close(s2, s3)
        torch.testing.assert_close(d2, d3, atol=1e-5, rtol=1e-5)
    for loss in (MarginContrastiveLoss(), InfoNCELoss()):
        torch.testing.assert_close(loss(u, v)["contrastive_loss"], loss(u3, v)["contrastive_loss"])


@pytest.mark.slow
def test_two_process_gather_equals_one_process(tmp_path):
    """2 gloo processes, each with half the global batch: the loss and the gradients equal 1 process's."""
    out = tmp_path / "result.json"
    script = Path(__file__).with_name("dist_worker.py")
    subprocess.run([sys.executable, str(script), str(out)], check=True, timeout=120)
    result = json.loads(out.read_text())
    assert set(result) == {"margin", "infonce", "cross"}
    for name, r in result.items():
        assert r["world"] == 2
        assert r["loss_ranks"] == pytest.approx([r["loss_single"]] * 2, rel=1e-5), name
        assert r["max_grad_error"] < 1e-5, name
