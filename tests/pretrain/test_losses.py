"""Contrastive losses: Eq. 1 by hand, InfoNCE properties, pairwise inputs, and the 2-process gather."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cxrpipe.pretrain.losses import InfoNCELoss, MarginContrastiveLoss, pairwise


# N = 4 unnormalised 2-d pairs; ids (text row, study): items 0, 1 share a report text (other studies),
# items 2, 3 are two images of one study (given other text rows here, to test the study column alone)
U = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [3.0, 0.0]])
V = torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 2.0], [3.0, 1.0]])
IDS = torch.tensor([[10, 100], [10, 101], [11, 102], [12, 102]])
# squared distances D^2[i, j] = ||u_i - v_j||^2
#   i=0: v0 1, v1 1, v2 5, v3 10
#   i=1: v0 2, v1 0, v2 4, v3 5
#   i=2: v0 1, v1 5, v2 1, v3 10
#   i=3: v0 10, v1 4, v2 8, v3 1
# positives P: the diagonal (1, 0, 1, 1) + same text (0,1) 1, (1,0) 2 + same study (2,3) 10, (3,2) 8:
#   mean D^2 = 24 / 8 = 3
# negatives Q (8): D^2 = (0,2) 5, (0,3) 10, (1,2) 4, (1,3) 5, (2,0) 1, (2,1) 5, (3,0) 10, (3,1) 4
EPS = 2.5
#   Eq. 1, hinge on D: (2.5 - sqrt5)^2 three times, (2.5 - 2)^2 twice, (2.5 - 1)^2 once, 0 for sqrt10
EQ1_NEG = (3 * (EPS - math.sqrt(5)) ** 2 + 2 * 0.5**2 + 1.5**2) / 8
#   old form, hinge on D^2: only (2,0) with D^2 = 1 is inside 2.5: (2.5 - 1)^2
SQ_NEG = (EPS - 1) ** 2 / 8


def test_margin_loss_eq1_by_hand_with_duplicates():
    out = MarginContrastiveLoss(margin=EPS, normalize=False)(U, V, ids=IDS)
    assert out["contrastive_loss"].item() == pytest.approx(3 + EQ1_NEG, rel=1e-6)
    assert out["pairs_same_text"].item() == 1 and out["pairs_same_study"].item() == 1
    d_pos = [1, 0, 1, 1, 1, math.sqrt(2), math.sqrt(10), math.sqrt(8)]
    assert out["positive_distance"].item() == pytest.approx(sum(d_pos) / 8, rel=1e-6)
    # without ids the duplicates are negatives: P = the diagonal (mean 3/4), Q gains (0,1) (1,0) (2,3) (3,2)
    naive = MarginContrastiveLoss(margin=EPS, normalize=False)(U, V)
    neg = (8 * EQ1_NEG + (EPS - 1) ** 2 + (EPS - math.sqrt(2)) ** 2) / 12  # sqrt10, sqrt8 are beyond eps
    assert naive["contrastive_loss"].item() == pytest.approx(3 / 4 + neg, rel=1e-6)


def test_old_squared_distance_hinge_differs_from_eq1():
    old = MarginContrastiveLoss(margin=EPS, normalize=False, squared_hinge=True)(U, V, ids=IDS)
    assert old["contrastive_loss"].item() == pytest.approx(3 + SQ_NEG, rel=1e-6)
    assert 3 + SQ_NEG != pytest.approx(3 + EQ1_NEG, rel=1e-3)
    # a negative almost collapsed onto its anchor (D = 0.01, eps = 1): Eq. 1 pushes it away with
    # |dL/dD| = 2 (eps - D) / |Q|, the old form barely, 4 D (eps - D^2) / |Q| (|Q| = 2)
    grads = {}
    for name, sq in (("eq1", False), ("old", True)):
        u = torch.tensor([[0.0, 0.0], [10.0, 5.0]], requires_grad=True)
        v = torch.tensor([[10.0, 0.0], [0.0, 0.01]])  # u0's negative v1 sits at D = 0.01; the rest far
        MarginContrastiveLoss(margin=1.0, normalize=False, squared_hinge=sq)(u, v)["contrastive_loss"].backward()
        grads[name] = u.grad[0, 1].item()  # along the u0 -> v1 direction
    assert grads["eq1"] == pytest.approx(2 * (1 - 0.01) / 2, rel=1e-4)
    assert grads["old"] == pytest.approx(4 * 0.01 * (1 - 0.01**2) / 2, rel=1e-4)


def test_margin_loss_normalised_first():
    u = torch.tensor([[2.0, 0.0], [0.0, 3.0]])
    v = torch.tensor([[5.0, 0.0], [0.0, 0.5]])
    # after L2 normalisation u == v: positives 0, negatives D = sqrt(2) (orthogonal unit vectors)
    out = MarginContrastiveLoss(margin=1.5, normalize=True)(u, v)
    assert out["contrastive_loss"].item() == pytest.approx((1.5 - math.sqrt(2)) ** 2, rel=1e-5)
    assert MarginContrastiveLoss(margin=1.0)(u, v)["contrastive_loss"].item() == pytest.approx(0.0)
    # all items duplicates of each other: no negatives, the loss is the positives' mean D^2 alone
    same = torch.tensor([[1, 1], [1, 2]])
    assert MarginContrastiveLoss(margin=1.5)(u, v, ids=same)["contrastive_loss"].item() == pytest.approx(1.0)


def test_infonce_duplicate_is_masked_not_a_negative():
    """N = 3 unit vectors, T = 1; reports 0 and 1 are the same text (so, as the latent pool gives, v0 == v1)."""
    loss = InfoNCELoss(temperature=1.0, learn_temperature=False)
    u = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    v = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    ids = torch.tensor([[7, 1], [7, 2], [8, 3]])
    # sim = u v^T: rows [1, 1, 0], [0, 0, 1], [-1, -1, 0]; (0,1) and (1,0) masked (-inf) in both directions
    e = math.e
    img2txt = [math.log(e + 1) - 1, math.log(1 + e), math.log(1 + 2 / e)]  # rows 0, 1, 2
    txt2img = [math.log(e + 1 / e) - 1, math.log(1 + 1 / e), math.log(2 + e)]  # columns 0, 1, 2
    hand = (sum(img2txt) / 3 + sum(txt2img) / 3) / 2
    out = loss(u, v, ids=ids)
    assert out["contrastive_loss"].item() == pytest.approx(hand, rel=1e-6)
    assert out["pairs_same_text"].item() == 1 and out["pairs_same_study"].item() == 0
    # naive CLIP: the duplicate counts as a negative of each
    naive_rows = [math.log(2 * e + 1) - 1, math.log(2 + e), math.log(1 + 2 / e)]
    naive_cols = [math.log(e + 1 + 1 / e) - 1, math.log(e + 1 + 1 / e), math.log(2 + e)]
    naive = (sum(naive_rows) / 3 + sum(naive_cols) / 3) / 2
    assert loss(u, v)["contrastive_loss"].item() == pytest.approx(naive, rel=1e-6)
    assert abs(hand - naive) > 0.1
    # the masked (-inf) logits leave finite gradients
    vv = v.clone().requires_grad_()
    loss(u, vv, ids=ids)["contrastive_loss"].backward()
    assert torch.isfinite(vv.grad).all()


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
    ids = torch.tensor([[0, 0], [0, 1], [2, 2], [3, 2]])  # a duplicate text and a same-study pair
    for loss in (MarginContrastiveLoss(), MarginContrastiveLoss(squared_hinge=True), InfoNCELoss()):
        for i in (None, ids):
            torch.testing.assert_close(loss(u, v, ids=i)["contrastive_loss"], loss(u3, v, ids=i)["contrastive_loss"])


@pytest.mark.slow
def test_two_process_gather_equals_one_process(tmp_path):
    """2 gloo processes, each with half the global batch (duplicate texts and a same-study pair, one of them
    across the ranks): the loss and the gradients equal 1 process's, and differ from the loss without ids."""
    out = tmp_path / "result.json"
    script = Path(__file__).with_name("dist_worker.py")
    subprocess.run([sys.executable, str(script), str(out)], check=True, timeout=300)
    result = json.loads(out.read_text())
    assert set(result) == {"margin", "margin_sqdist", "infonce", "cross", "cross_infonce"}
    for name, r in result.items():
        assert r["world"] == 2
        assert r["loss_ranks"] == pytest.approx([r["loss_single"]] * 2, rel=1e-5), name
        assert r["max_grad_error"] < 1e-5, name
        assert abs(r["loss_single"] - r["loss_no_ids"]) > 1e-4, name  # the duplicates did change the loss
