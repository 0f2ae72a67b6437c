"""The alignment recipe's options (issue 19): loss variants by hand, the token pools, the shuffled control's
derangement, per-term gradient clipping, and the two-step flow's hand-over."""

import math

import numpy as np
import pytest
import torch

from cxrpipe.config import build
from cxrpipe.pretrain.data import Pair, derange_texts
from cxrpipe.pretrain.losses import MarginContrastiveLoss, SigmoidLoss
from cxrpipe.pretrain.pooling import TokenPool
from cxrpipe.pretrain.train import PretrainConfig, for_variant, run_pretrain

from .synthetic import TINY
from .test_losses import EPS, IDS, U, V

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


# ------------------------------------------------------------------------------------------------ losses


def test_hardest_negative_by_hand():
    # U, V, IDS of test_losses: the hinge (2.5 - D)^2 of each negative; per image (row) the hardest is
    # a = (2.5 - sqrt5)^2, 0.25, 2.25, 0.25 and per report (column) 2.25, 0.25, 0.25, a
    a = (EPS - math.sqrt(5)) ** 2
    out = MarginContrastiveLoss(margin=EPS, normalize=False, negatives="hardest")(U, V, ids=IDS)
    assert out["contrastive_loss"].item() == pytest.approx(3 + (a + 2.75) / 4, rel=1e-6)
    mean = MarginContrastiveLoss(margin=EPS, normalize=False)(U, V, ids=IDS)["contrastive_loss"].item()
    assert out["contrastive_loss"].item() > mean  # the hardest negative outweighs the mean over negatives


def test_anchor_weighting_pulls_a_duplicate_group_once():
    # items 0-3 share one report (a group of k = 4), item 4 is alone; every positive pair sits at D^2 = 1
    # except item 4's own (D^2 = 9). Pair weighting: mean over the 17 positive pairs = (16 + 9) / 17;
    # anchor weighting: each image's positives averaged first, then the images: (4 * 1 + 9) / 5.
    u = torch.zeros(5, 1)
    v = torch.tensor([[1.0], [1.0], [1.0], [1.0], [3.0]])
    ids = torch.tensor([[7, 0], [7, 1], [7, 2], [7, 3], [8, 4]])
    # (no negative is inside the margin 0.5: the loss is the positive term alone)
    pair = MarginContrastiveLoss(margin=0.5, normalize=False)(u, v, ids=ids)["contrastive_loss"].item()
    anchor = MarginContrastiveLoss(margin=0.5, normalize=False, positive_weighting="anchor")(u, v, ids=ids)
    assert pair == pytest.approx(25 / 17, rel=1e-6)
    assert anchor["contrastive_loss"].item() == pytest.approx(13 / 5, rel=1e-6)
    # the gradient on the group's images: 4x the lone image's under pair weighting, equal under anchor
    for weighting, ratio in (("pair", 4.0), ("anchor", 1.0)):
        uu = torch.tensor([[0.0], [0.0], [0.0], [0.0], [2.0]], requires_grad=True)
        MarginContrastiveLoss(margin=0.5, normalize=False, positive_weighting=weighting)(
            uu, v, ids=ids)["contrastive_loss"].backward()
        g = uu.grad[:, 0].abs()
        assert (g[0] / g[4]).item() == pytest.approx(ratio, rel=1e-5)


def test_sigmoid_loss_by_hand():
    loss = SigmoidLoss(temperature=0.5, bias=-1.0, normalize=False)
    out = loss(U, V, ids=IDS)
    sim = (U @ V.T).numpy()
    pos = np.eye(4, dtype=bool)
    ids = IDS.numpy()
    pos |= (ids[:, None, :] == ids[None, :, :]).any(-1)
    expected = 0.0
    for i in range(4):
        for j in range(4):
            z = 1.0 if pos[i, j] else -1.0
            expected += math.log1p(math.exp(-z * (2.0 * sim[i, j] - 1.0)))
    assert out["contrastive_loss"].item() == pytest.approx(expected / 4, rel=1e-5)
    assert out["temperature"].item() == pytest.approx(0.5)
    # aligned pairs score lower loss than the same vectors mismatched
    assert loss(V, V)["contrastive_loss"] < loss(V, V.flip(0))["contrastive_loss"]


# ------------------------------------------------------------------------------------------------ pools


def test_token_pool_reads_the_last_real_token_only():
    torch.manual_seed(0)
    x = torch.randn(3, 6, 8)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0]], dtype=torch.bool)
    last = TokenPool(8, 4, "last").eval()
    mean = TokenPool(8, 4, "mean").eval()
    y = x.clone()
    y[:, 0] += 5.0  # change the first token: only sequences whose last real token is it move ("last")
    y[~mask] = 99.0  # and garbage in the padding: neither pool may read it
    same_last = (last(x, mask) - last(y, mask)).abs().amax(dim=1)
    assert same_last[:2].max() < 1e-6 and same_last[2] > 1e-3
    assert ((mean(x, mask) - mean(y, mask)).abs().amax(dim=1) > 1e-3).all()
    x2 = x.clone()
    x2[~mask] = -7.0
    assert torch.allclose(mean(x, mask), mean(x2, mask))


# ------------------------------------------------------------------------------------- shuffled control


def _pairs(texts: list[int], images_per_study: int = 2) -> list[Pair]:
    return [Pair(row=len(texts) * k + i, study_id=1000 + i, text_row=t) for k in range(images_per_study)
            for i, t in enumerate(texts)]


def test_derangement_respects_duplicates_and_keeps_studies_together():
    texts = [0, 0, 0, 1, 2, 3, 4, 5, 6, 6]  # a report shared by 3 studies, one by 2
    pairs = _pairs(texts)
    out, report = derange_texts(pairs, seed=3)
    own = {p.study_id: p.text_row for p in pairs}
    new = {}
    for p in out:
        assert new.setdefault(p.study_id, p.text_row) == p.text_row  # a study's images share one report
        assert p.text_row != own[p.study_id]  # never its own text, nor an identical one
    assert sorted(new.values()) == sorted(own.values())  # the same reports, redistributed
    assert report == {"studies": 10, "own_text": 0, "seed": 3}
    assert out == derange_texts(pairs, seed=3)[0] and out != derange_texts(pairs, seed=4)[0]


def test_derangement_counts_what_it_cannot_move():
    out, report = derange_texts(_pairs([0, 0, 0, 0, 1]), seed=0)  # one text holds 4 of 5 studies
    assert report["own_text"] == 3


# -------------------------------------------------------------------------------------- clipping, flow


def test_separate_clipping_keeps_the_mae_update_whatever_the_text(tmp_path, data):
    """With clip_mode separate, the MAE term's clipped gradient is the same whether or not a text term is
    added: the text variant's step minus its contrastive part equals the image-only step."""
    from accelerate import Accelerator

    from cxrpipe.pretrain.model import PretrainModel
    from cxrpipe.pretrain.train import TrainRun, backward_and_clip

    cfg = build(PretrainConfig, {**TINY, "optim": {"clip_grad": 0.05, "clip_mode": "separate"}})
    torch.manual_seed(0)
    images, text = torch.randn(4, 1, 32, 32), torch.randn(4, 5, 24)
    mask = torch.ones(4, 5, dtype=torch.bool)
    grads = {}
    for variant in ("mae", "multimodal", "contrastive_only"):
        c = for_variant(cfg, "mae" if variant == "mae" else "multimodal")
        if variant == "contrastive_only":
            c = build(PretrainConfig, {**TINY, "optim": {"clip_grad": 0.05, "clip_mode": "separate"},
                                       "loss": {"weight_mae": 0.0}})
        torch.manual_seed(1)
        model = PretrainModel(c.model, c.pool, c.loss, 24)
        run = TrainRun(c, variant, Accelerator(cpu=True), model, None, None, None, 1, tmp_path / "x", {})
        losses = model(images, text, mask, noise=torch.rand(4, 16, generator=torch.Generator().manual_seed(2)))
        norms = backward_and_clip(run, losses)
        grads[variant] = torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.requires_grad])
        grads[variant + "_norms"] = norms
    assert grads["mae_norms"]["grad_norm_mae"] > 0.05  # the clip is active
    assert torch.allclose(grads["multimodal"], grads["mae"] + grads["contrastive_only"], atol=1e-6)
    assert not torch.allclose(grads["multimodal"], grads["mae"], atol=1e-6)


def test_two_step_flow_continues_the_exported_mae(tmp_path, data):
    prepared, text = data
    cfg = build(PretrainConfig, {**TINY, "epochs": 1, "batch_size": 8, "flow": "two_step",
                                 "align": {"epochs": 1, "encoder_lr_scale": 0.0}})
    kw = dict(metrics_path=tmp_path / "m.json", plots_dir=tmp_path / "plots")
    run_pretrain(cfg, "mae", prepared, text, tmp_path / "mae", **kw)
    assert (tmp_path / "mae" / "decoder.safetensors").exists()
    with pytest.raises(ValueError, match="--init"):
        run_pretrain(cfg, "multimodal", prepared, text, tmp_path / "mm", **kw)
    m = run_pretrain(cfg, "multimodal", prepared, text, tmp_path / "mm", init_from=tmp_path / "mae", **kw)
    from safetensors.torch import load_file

    a, b = load_file(str(tmp_path / "mae" / "encoder.safetensors")), load_file(str(tmp_path / "mm" / "encoder.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)  # encoder_lr_scale 0: the tower is frozen, exactly
    assert m["steps"] == for_variant(cfg, "multimodal").epochs * (m["train_pairs"] // 8)
    with pytest.raises(ValueError, match="two-step"):
        for_variant(build(PretrainConfig, TINY), "continued")


@pytest.mark.slow
@pytest.mark.parametrize("signal", [True, False], ids=["planted", "no-shared-signal"])
def test_shuffled_control_loses_only_where_the_report_carries_signal(tmp_path, signal):
    """Clustered pairs (a blob's place in the image, the report near a cluster direction: tests/pretrain
    /synthetic.py). Where the training pairs share that signal, multimodal learns it and the shuffled control
    (each study given another study's report) cannot: its validate retrieval stays near chance (10/47). Where
    the training reports were already shuffled (no shared signal), multimodal must not beat the control."""
    from .test_pretrain_learns import CLUSTERED
    from .synthetic import make_pairs

    prepared, text = make_pairs(tmp_path, n_train=96, n_val=48, shuffle_train_text=not signal)
    r = {}
    for variant in ("multimodal", "shuffled"):
        m = run_pretrain(build(PretrainConfig, CLUSTERED), variant, prepared, text, tmp_path / variant,
                         metrics_path=tmp_path / f"{variant}.json", plots_dir=tmp_path / f"{variant}-plots")
        r[variant] = m["retrieval"]["recall@10"]
        if variant == "shuffled":
            assert m["shuffled"]["own_text"] == 0
    print(f"validate R@10 ({'planted' if signal else 'no shared signal'}): {r}")
    assert r["shuffled"] < 0.4
    if signal:
        assert r["multimodal"] > 0.5 and r["multimodal"] - r["shuffled"] > 0.25
    else:
        assert r["multimodal"] < 0.4 and abs(r["multimodal"] - r["shuffled"]) < 0.2
