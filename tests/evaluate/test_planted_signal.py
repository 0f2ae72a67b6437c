"""Tests that catch a broken learner: a planted signal must be learned, shuffled labels must score chance.

The prepared set (:func:`conftest.make_planted`) marks two labels with textures in the image; a tiny random
ViT sees them. If images and labels were misaligned anywhere (splits, rows, study/image order, predictions
written in another order than their targets), the planted AUROC would fall to chance; if labels leaked into
the predictions, the shuffled run would score above chance.
"""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch

from cxrpipe.config import section
from cxrpipe.evaluate.probe.finetune import FinetuneConfig, run_finetune
from cxrpipe.evaluate.probe.frozen import InputNorm
from cxrpipe.evaluate.stats.metrics import load_predictions
from cxrpipe.evaluate.probe.pixels import PixelsConfig, run_pixels
from cxrpipe.evaluate.stats.rules import StatsConfig

pytestmark = pytest.mark.slow  # whole runs (seconds each)

PLANTED = ("Cardiomegaly", "Pleural Effusion")  # conftest.make_planted's labels


def _cfg(tiny_params: dict, **finetune) -> FinetuneConfig:
    params = copy.deepcopy(tiny_params)
    for probe in ("fc", "linear"):  # 240 training studies: 120 steps of 16 are 8 passes
        params["finetune"][probe].update({"steps": 120, "eval_every": 20, "batch_size": 16})
    params["finetune"]["finetune"].update({"epochs": 2, **finetune})
    return section(params, "finetune", FinetuneConfig)


def _planted_aurocs(m: dict) -> dict[str, float]:
    return {p["label"]: p["auroc"] for p in m["study"]["per_label"] if p["label"] in PLANTED}


def test_fixture_plants_these_labels(planted):
    assert planted["labels"] == PLANTED


RUNS = [
    ("fc", {}),
    ("linear", {}),  # BatchNorm + one linear layer
    ("finetune", {"init_head": "random"}),  # plain fine-tuning: the encoder and a fresh head learn it
    ("finetune", {"init_head": "fc_probe", "freeze_input_norm": True}),  # LP-FT
]
IDS = ["fc", "linear", "finetune", "lp-ft"]


@pytest.mark.parametrize(("protocol", "options"), RUNS, ids=IDS)
def test_protocols_learn_the_planted_signal(planted, tiny_params, tmp_path, protocol, options):
    m = run_finetune(_cfg(tiny_params, **options), planted["encoder"], protocol, planted["signal"], tmp_path / "run.json")
    assert sorted(m["study"]["labels_in_mauc"]) == sorted(PLANTED)  # every other label is negative only
    assert m["study"]["mauc"] > 0.9, m["study"]["mauc"]
    assert min(_planted_aurocs(m).values()) > 0.9, _planted_aurocs(m)


@pytest.mark.parametrize(("protocol", "options"), RUNS, ids=IDS)
def test_protocols_score_chance_with_shuffled_labels(planted, tiny_params, tmp_path, protocol, options):
    m = run_finetune(_cfg(tiny_params, **options), planted["encoder"], protocol, planted["shuffled"], tmp_path / "run.json")
    assert abs(m["study"]["mauc"] - 0.5) < 0.15, m["study"]["mauc"]


def test_pixels_reference_learns_the_signal_and_not_shuffled_labels(planted, tiny_params, tmp_path):
    cfg, ft, stats = PixelsConfig(size=16, c_grid=(0.01, 1.0)), _cfg(tiny_params), StatsConfig(min_test_positives=2)
    m = run_pixels(cfg, ft, planted["signal"], tmp_path / "m" / "pixels.json", stats=stats)
    assert m["encoder"] == "pixels" and m["c"] in (0.01, 1.0) and len(m["history"]) == 2
    assert m["study"]["mauc"] > 0.9 and min(_planted_aurocs(m).values()) > 0.9
    p, meta = load_predictions(tmp_path / "predictions" / "pixels.npz")  # default: <out dir>/../predictions
    assert meta == {"encoder": "pixels", "protocol": "reference"} and p.probs.shape == (len(p.image_ids), 14)
    # the low-positive rule of the finetune runs applies to the reference too (same labels in its mean)
    assert m["study"]["min_test_positives"] == stats.min_test_positives > 0
    assert (m["study"]["n_patients"], m["study"]["n_studies"]) == (100, 100)  # one study per patient here
    written = json.loads((tmp_path / "m" / "pixels.json").read_text())
    assert "encoder" not in written and "dataset" in json.loads((tmp_path / "m" / "pixels.config.json").read_text())
    shuffled = run_pixels(cfg, ft, planted["shuffled"], tmp_path / "s" / "pixels.json")
    assert abs(shuffled["study"]["mauc"] - 0.5) < 0.15, shuffled["study"]["mauc"]


def test_lp_ft_starts_from_the_fc_probe_and_never_ends_below_it_on_validate(planted, tiny_params, tmp_path):
    """LP-FT's epoch 0 is exactly the `fc` protocol's model; selection keeps it unless fine-tuning beats it."""
    cfg = _cfg(tiny_params, init_head="fc_probe", freeze_input_norm=True, lr=0.0)  # lr 0: nothing can improve
    lin = run_finetune(cfg, planted["encoder"], "fc", planted["shuffled"], tmp_path / "linear.json",
                       predictions_out=tmp_path / "linear.npz")
    ft = run_finetune(cfg, planted["encoder"], "finetune", planted["shuffled"], tmp_path / "finetune.json",
                      predictions_out=tmp_path / "finetune.npz")
    assert ft["history"][0]["epoch"] == 0 and ft["history"][0]["train_loss"] is None
    assert ft["fc_probe"]["selected"] == lin["selected"]  # the very same probe
    assert ft["fc_probe"]["validate_mauc"] == lin["validate_mauc"]
    assert ft["history"][0]["validate_mauc"] == pytest.approx(lin["validate_mauc"], abs=1e-9)
    assert ft["validate_mauc"] >= lin["validate_mauc"] - 1e-9
    assert ft["fc_probe"]["test_mauc"] == pytest.approx(lin["study"]["mauc"], abs=1e-9)  # reported beside
    # lr 0 + frozen input statistics: the model never changes, so epoch 0 is kept and the test predictions
    # are the fc run's (computed through the encoder instead of from cached features)
    assert ft["best_epoch"] == 0
    a = load_predictions(tmp_path / "linear.npz")[0]
    b = load_predictions(tmp_path / "finetune.npz")[0]
    torch.testing.assert_close(torch.from_numpy(b.probs), torch.from_numpy(a.probs), atol=1e-5, rtol=0)
    assert ft["study"]["mauc"] == pytest.approx(lin["study"]["mauc"], abs=1e-4)


def test_frozen_input_norm_keeps_its_statistics_in_train_mode():
    from cxrpipe.evaluate.probe.finetune import Classifier, ClassifierHead, HeadConfig

    head = ClassifierHead(8, HeadConfig(hidden=(4,)))
    bn = head.net[0]
    bn.running_mean.fill_(3.0)
    model = Classifier(torch.nn.Flatten(), head, freeze_input_norm=True).train()
    assert not bn.training and head.net[1].training  # the rest of the head still trains
    model(torch.randn(16, 8))
    assert torch.all(bn.running_mean == 3.0)
    free = Classifier(torch.nn.Flatten(), ClassifierHead(8, HeadConfig(hidden=(4,))), freeze_input_norm=False)
    assert free.train().head.net[0].training


def test_lp_ft_grid_keeps_the_validate_best_point_and_every_point_starts_alike(planted, tiny_params, tmp_path):
    """The LP-FT grid [lr 0, lr 1e-3, lr 0] from a random head: lr 1e-3 learns the planted signal, lr 0 cannot;
    the grid keeps the lr-1e-3 point although it is not the first, and records all three. Every point starts
    from the same encoder, head and random stream: each point scores exactly as a lone run at its lr (the
    second lr-0 point would score high had it started from the trained weights, the lr-1e-3 point otherwise
    had another dropout stream), and the selected point's test numbers are the lone lr-1e-3 run's."""
    opts = {"init_head": "random", "freeze_input_norm": True, "epochs": 1}
    grid = run_finetune(_cfg(tiny_params, lrs=[0.0, 1e-3, 0.0], **opts), planted["encoder"], "finetune",
                        planted["signal"], tmp_path / "grid.json", plot_out=tmp_path / "grid.png")
    assert (tmp_path / "grid.png").stat().st_size > 0  # the curves of the kept point, its grid values named
    alone = {lr: run_finetune(_cfg(tiny_params, lr=lr, **opts), planted["encoder"], "finetune", planted["signal"],
                              tmp_path / f"lr{lr}.json") for lr in (1e-3, 0.0)}
    assert "grid" not in alone[0.0] and "selected" not in alone[0.0]  # a single point writes what it always wrote
    assert [p["lr"] for p in grid["grid"]] == [0.0, 1e-3, 0.0]
    assert {p["head_norm"] for p in grid["grid"]} == {"batchnorm"} and {p["layer_decay"] for p in grid["grid"]} == {0.75}
    for point in grid["grid"]:
        assert point["validate_mauc"] == alone[point["lr"]]["validate_mauc"]
        assert point["best_epoch"] == alone[point["lr"]]["best_epoch"]
    assert alone[1e-3]["validate_mauc"] > 0.9 > alone[0.0]["validate_mauc"]
    assert grid["selected"] == {"head_norm": "batchnorm", "lr": 1e-3, "layer_decay": 0.75}
    assert grid["study"]["mauc"] == alone[1e-3]["study"]["mauc"] and grid["history"] == alone[1e-3]["history"]


def test_lp_ft_grid_fits_one_probe_per_head_norm_and_layernorm_learns(planted, tiny_params, tmp_path):
    """head_norms [batchnorm, layernorm]: each norm gets its own fc probe (LP-FT's start, "epoch 0"), a
    LayerNorm head learns the planted signal, and the reported fc_probe is the selected norm's."""
    cfg = _cfg(tiny_params, init_head="fc_probe", head_norms=["batchnorm", "layernorm"], epochs=1)
    m = run_finetune(cfg, planted["encoder"], "finetune", planted["signal"], tmp_path / "grid.json")
    assert [p["head_norm"] for p in m["grid"]] == ["batchnorm", "layernorm"]
    assert m["study"]["mauc"] > 0.9 and min(_planted_aurocs(m).values()) > 0.9
    best = max(m["grid"], key=lambda p: p["validate_mauc"])
    assert m["validate_mauc"] == best["validate_mauc"] and m["selected"]["head_norm"] == best["head_norm"]
    probes = {}
    for norm in InputNorm:
        probe_cfg = dataclasses.replace(cfg, head=dataclasses.replace(cfg.head, norm=norm))
        probes[norm.value] = run_finetune(probe_cfg, planted["encoder"], "fc", planted["signal"], tmp_path / "fc.json")
    assert probes["layernorm"]["study"]["mauc"] > 0.8  # the LayerNorm fc probe learns on its own (chance: 0.5)
    assert probes["layernorm"]["validate_mauc"] != probes["batchnorm"]["validate_mauc"]  # another head
    assert m["fc_probe"]["validate_mauc"] == probes[m["selected"]["head_norm"]]["validate_mauc"]


def test_layernorm_head_normalises_each_row_and_trains_its_affine():
    from cxrpipe.evaluate.probe.finetune import Classifier, ClassifierHead, HeadConfig

    head = ClassifierHead(8, HeadConfig(hidden=(), norm=InputNorm.LAYERNORM), n_out=2)
    norm = head.net[0]
    assert isinstance(norm, torch.nn.LayerNorm) and norm.weight.requires_grad
    x = torch.randn(4, 8) * 5 + 3
    torch.testing.assert_close(norm(x), (x - x.mean(1, keepdim=True)) / (x.var(1, unbiased=False, keepdim=True) + 1e-6).sqrt())
    # LP-FT's freeze_input_norm concerns BatchNorm statistics only: a LayerNorm head trains as it is
    assert Classifier(torch.nn.Flatten(), head, freeze_input_norm=True).train().head.net[0].training


def test_the_pixels_fit_runs_on_one_blas_thread(planted, monkeypatch):
    """lbfgs on a small problem is several times slower on a threaded BLAS and sums in an order that depends on
    the core count: every per-label fit sees one BLAS thread, and the limit ends with the fit."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_info, threadpool_limits

    from cxrpipe.evaluate.probe.data import labelled_splits
    from cxrpipe.evaluate.probe.pixels import fit_predict

    def blas_threads() -> list[int]:
        return [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]

    seen, fit = [], LogisticRegression.fit
    monkeypatch.setattr(LogisticRegression, "fit", lambda self, *a, **k: seen.append(blas_threads()) or fit(self, *a, **k))
    train = labelled_splits(planted["signal"], ["AP", "PA"], "ignore", "zeros")["train"]
    x = np.random.default_rng(0).normal(size=(len(train), 8))
    with threadpool_limits(limits=2, user_api="blas"):  # two threads before the fit, even on a 1-core machine
        before = blas_threads()
        if not before or max(before) < 2:
            pytest.skip(f"this BLAS does not take 2 threads ({before}): the limit cannot be seen")
        fit_predict(x, train, [x], 1.0, 100)
        assert blas_threads() == before
    assert seen and all(t == [1] * len(t) for t in seen)
