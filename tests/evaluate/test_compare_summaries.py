"""compare's references and seed aggregation against a case worked by hand.

Test set: 8 studies, one image each; one label (Atelectasis) valid, positives = studies 0, 1, 4, 5 (the
pattern [pos, pos, neg, neg] twice). Probabilities per run repeat one 4-value pattern twice, so each AUROC
is the fraction of (positive, negative) pairs of the pattern ranked right (no positive-negative ties):

    pattern [p0, p1, n0, n1]   pairs won      AUROC
    A = [.9, .2, .5, .1]       .9>.5 .9>.1 .2>.1   3/4 = 0.75
    B = [.9, .8, .5, .1]       all four        1.00
    R = [.4, .2, .3, .5]       .4>.3           1/4 = 0.25
    P = [.6, .55, .5, .7]      .6>.5 .55>.5    2/4 = 0.50

Seed 0 (default paths): mae A, multimodal B, random R; seed 1: mae B, multimodal A, random R; pixels P.
Patients: studies 2k and 2k + 1 are one patient's (the bootstrap draws them together; no point estimate moves).
multimodal - mae: seed 0 +0.25, seed 1 -0.25 -> mean 0, sd (n-1) sqrt(2 x 0.25^2 / 1) = 0.353553, min-max
-0.25..+0.25. mae - random: seed 0 0.50, seed 1 0.75 -> mean 0.625, sd sqrt(2 x 0.125^2) = 0.176777.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from cxrpipe.evaluate.compare import CompareConfig, run_compare
from cxrpipe.evaluate.stats.metrics import Predictions, evaluate, jsonable, save_predictions
from cxrpipe.evaluate.stats.rules import StatsConfig
from cxrpipe.evaluate.stats.summaries import spread

A, B, R, P = [.9, .2, .5, .1], [.9, .8, .5, .1], [.4, .2, .3, .5], [.6, .55, .5, .7]
STATS = StatsConfig(min_test_positives=0)  # 4 test positives: the label rule off, resampling patients


def _pred(pattern: list[float]) -> Predictions:
    n = 8
    probs = np.full((n, 14), 0.5, np.float32)
    probs[:, 0] = pattern * 2
    targets = np.zeros((n, 14), np.float32)
    targets[[0, 1, 4, 5], 0] = 1.0
    mask = np.zeros((n, 14), bool)
    mask[:, 0] = True
    return Predictions(np.array([f"i{k}" for k in range(n)]), np.arange(100, 100 + n, dtype=np.int64), probs,
                       targets, mask, subject_ids=np.arange(n) // 2)


def _write(metrics, preds, name: str, pattern: list[float], encoder_seed=None) -> None:
    p = _pred(pattern)
    save_predictions(p, preds / f"{name}.npz", encoder=name.split("-")[0], protocol="linear")
    if name.endswith("-seed1"):
        return  # seed repeats: compare reads their predictions only
    m = {"encoder": name.split("-")[0], "dataset": {"source": "mimic-cxr-jpg", "demo": True},
         **evaluate(p, p, n_bootstrap=20, seed=0)}
    (metrics / f"{name}.json").write_text(json.dumps(jsonable(m)))
    if encoder_seed is not None:
        (metrics / f"{name}.config.json").write_text(json.dumps({"encoder_seed": encoder_seed}))


@pytest.fixture
def hand_case(tmp_path):
    metrics, preds = tmp_path / "metrics", tmp_path / "predictions"
    metrics.mkdir()
    for name, pattern in [("mae-linear", A), ("multimodal-linear", B), ("random-linear", R), ("pixels", P),
                          ("mae-linear-seed1", B), ("multimodal-linear-seed1", A), ("random-linear-seed1", R)]:
        _write(metrics, preds, name, pattern, encoder_seed=0 if name == "mae-linear" else None)
    return metrics, preds, tmp_path


def test_references_and_seeds_against_the_hand_worked_case(hand_case):
    metrics, preds, tmp = hand_case
    cfg = CompareConfig(n_bootstrap=200, seed=0, extra_seeds=(1,))
    comp = run_compare(cfg, metrics, tmp / "comparison.json", predictions_dir=preds, report_md=tmp / "c.md",
                       stats=STATS)
    assert set(comp) == {"linear", "references", "seeds"}  # no finetune runs: that protocol is left out
    lin = comp["linear"]
    assert (lin["mae"]["mauc"], lin["multimodal"]["mauc"], lin["delta_mauc"]) == pytest.approx((0.75, 1.0, 0.25))

    refs = comp["references"]
    assert refs["pixels"]["mauc"] == pytest.approx(0.5)
    r = refs["linear"]
    assert r["random"]["mauc"] == pytest.approx(0.25) and r["pixels"]["mauc"] == pytest.approx(0.5)
    expect = {"mae_vs_random": 0.5, "multimodal_vs_random": 0.75, "mae_vs_pixels": 0.25, "multimodal_vs_pixels": 0.5}
    for key, delta in expect.items():
        assert r[key]["delta_mauc"] == pytest.approx(delta), key
        lo, hi = r[key]["delta_ci95"]
        assert lo <= delta <= hi and 0 <= r[key]["p_value"] <= 1 and (lo > 0) == (r[key]["p_value"] < 0.05)

    s = comp["seeds"]
    assert s["seeds"] == [0, 1]
    rows = s["linear"]["per_seed"]
    assert [row["seed"] for row in rows] == [0, 1]
    assert [row["delta_mauc"] for row in rows] == pytest.approx([0.25, -0.25])
    assert rows[0]["delta_ci95"] == lin["delta_ci95"] and rows[0]["p_value"] == lin["p_value"]  # same resamples
    assert [row["mae_vs_random"]["delta_mauc"] for row in rows] == pytest.approx([0.5, 0.75])
    d = s["linear"]["delta_mauc"]
    assert (d["n"], d["mean"], d["sd"], d["min"], d["max"]) == pytest.approx((2, 0.0, 0.353553, -0.25, 0.25), abs=1e-6)
    m = s["linear"]["mae_vs_random"]
    assert (m["mean"], m["sd"], m["min"], m["max"]) == pytest.approx((0.625, 0.176777, 0.5, 0.75), abs=1e-6)
    assert s["linear"]["mae"]["mean"] == pytest.approx(0.875) and s["linear"]["random"]["sd"] == pytest.approx(0.0)
    # the seed means, replicate by replicate: seed 1 swaps mae and multimodal, so every replicate of the main
    # delta's mean is 0; mae - random is +0.5 and +0.75 in every replicate (perfect rankings), mean +0.625
    sm = s["linear"]["seed_mean"]
    main = sm["multimodal_vs_mae"]
    assert (main["delta_mauc"], main["delta_ci95"], main["p_value"], main["n_seeds"]) == (
        pytest.approx(0.0, abs=1e-12), [0.0, 0.0], 1.0, 2)
    assert sm["mae_vs_random"]["delta_mauc"] == pytest.approx(0.625)
    assert sm["mae_vs_random"]["delta_ci95"][0] > 0 and sm["mae_vs_random"]["p_value"] < 0.05
    assert "multimodal_vs_shuffled" not in sm  # no shuffled runs here

    md = (tmp / "c.md").read_text()
    assert "| linear | 0.500" in md  # side by side: pixels first
    assert "| linear | 0 | 0.750 | 1.000 | +0.250" in md and "| linear | 1 | 1.000 | 0.750 | -0.250" in md
    assert "+0.000 (sd 0.354; min-max -0.250 to +0.250)" in md
    assert "4 patients, 8 studies" in md and "resamples of the test patients" in md


def test_a_missing_seed_run_is_left_out_not_fatal(hand_case):
    metrics, preds, tmp = hand_case
    (preds / "multimodal-linear-seed1.npz").unlink()
    comp = run_compare(CompareConfig(n_bootstrap=50, extra_seeds=(1,)), metrics, tmp / "c.json", predictions_dir=preds,
                       stats=STATS)
    assert comp["seeds"]["seeds"] == [0, 1] and len(comp["seeds"]["linear"]["per_seed"]) == 1
    assert comp["seeds"]["linear"]["delta_mauc"]["sd"] is None  # one seed: no spread
    assert "seed_mean" not in comp["seeds"]["linear"]  # nor a seed mean


def test_spread_by_hand():
    s = spread([0.1, 0.2, 0.6])
    assert s["mean"] == pytest.approx(0.3) and s["sd"] == pytest.approx(math.sqrt((0.04 + 0.01 + 0.09) / 2))
    assert (s["min"], s["max"], s["n"]) == (0.1, 0.6, 3)
    assert spread([]) == {"n": 0, "mean": None, "sd": None, "min": None, "max": None}
    assert spread([0.4])["sd"] is None


def test_the_shuffled_control_is_paired_with_multimodal(hand_case):
    """shuffled-<protocol> runs (issue 19's control) give multimodal - shuffled; without them, no such key."""
    metrics, preds, tmp = hand_case
    cfg = CompareConfig(n_bootstrap=200, seed=0)
    comp = run_compare(cfg, metrics, tmp / "c.json", predictions_dir=preds, report_md=tmp / "c.md", stats=STATS)
    assert "shuffled" not in comp["references"]["linear"] and "shuffled-report control" not in (tmp / "c.md").read_text()
    _write(metrics, preds, "shuffled-linear", R)  # shuffled 0.25, multimodal (B) 1.00
    comp = run_compare(cfg, metrics, tmp / "c.json", predictions_dir=preds, report_md=tmp / "c.md", stats=STATS)
    r = comp["references"]["linear"]
    assert r["shuffled"]["mauc"] == pytest.approx(0.25)
    assert r["multimodal_vs_shuffled"]["delta_mauc"] == pytest.approx(0.75)
    assert (r["multimodal_vs_shuffled"]["delta_ci95"][0] > 0) == (r["multimodal_vs_shuffled"]["p_value"] < 0.05)
    md = (tmp / "c.md").read_text()
    assert "### The shuffled-report control" in md and "| linear | 0.250" in md and "+0.750" in md


def test_the_shuffled_control_is_summarised_over_seeds(hand_case):
    """Seed 0: multimodal B vs shuffled R (+0.75); seed 1: multimodal A vs shuffled B (-0.25): mean +0.25."""
    metrics, preds, tmp = hand_case
    _write(metrics, preds, "shuffled-linear", R)
    _write(metrics, preds, "shuffled-linear-seed1", B)
    comp = run_compare(CompareConfig(n_bootstrap=100, extra_seeds=(1,)), metrics, tmp / "c.json",
                       predictions_dir=preds, report_md=tmp / "c.md", stats=STATS)
    rows = comp["seeds"]["linear"]["per_seed"]
    assert [r["multimodal_vs_shuffled"]["delta_mauc"] for r in rows] == pytest.approx([0.75, -0.25])
    s = comp["seeds"]["linear"]["multimodal_vs_shuffled"]
    assert (s["mean"], s["min"], s["max"]) == pytest.approx((0.25, -0.25, 0.75))
    assert "+0.250 (sd 0.707; min-max -0.250 to +0.750)" in (tmp / "c.md").read_text()
    m = comp["seeds"]["linear"]["seed_mean"]["multimodal_vs_shuffled"]
    lo, hi = m["delta_ci95"]
    assert m["delta_mauc"] == pytest.approx(0.25) and lo <= 0.25 <= hi and (lo > 0) == (m["p_value"] < 0.05)
    assert "seed mean [95% CI]" in (tmp / "c.md").read_text()


def test_a_pair_not_every_seed_has_gets_no_seed_mean(hand_case):
    """shuffled-linear for seed 0 only: no seed mean of multimodal - shuffled (it would be one seed's, labelled
    the mean of two), while multimodal - mae keeps its own over both seeds."""
    metrics, preds, tmp = hand_case
    _write(metrics, preds, "shuffled-linear", R)
    comp = run_compare(CompareConfig(n_bootstrap=50, extra_seeds=(1,)), metrics, tmp / "c.json",
                       predictions_dir=preds, stats=STATS)
    sm = comp["seeds"]["linear"]["seed_mean"]
    assert "multimodal_vs_shuffled" not in sm and sm["multimodal_vs_mae"]["n_seeds"] == 2


def test_the_two_step_control_is_paired_with_multimodal_and_with_mae(hand_case):
    """continued-<protocol> runs (the two-step flow's control: mae continued without text) give multimodal -
    continued and continued - mae, by hand: continued R 0.25, multimodal B 1.00, mae A 0.75; without them no
    such key, no section and no warning; seeds: seed 1's continued B against multimodal A (-0.25)."""
    metrics, preds, tmp = hand_case
    cfg = CompareConfig(n_bootstrap=200, seed=0)
    comp = run_compare(cfg, metrics, tmp / "c.json", predictions_dir=preds, report_md=tmp / "c.md", stats=STATS)
    assert "continued" not in comp["references"]["linear"] and "two-step" not in (tmp / "c.md").read_text()
    _write(metrics, preds, "continued-linear", R)
    _write(metrics, preds, "continued-linear-seed1", B)
    comp = run_compare(CompareConfig(n_bootstrap=200, extra_seeds=(1,)), metrics, tmp / "c.json",
                       predictions_dir=preds, report_md=tmp / "c.md", stats=STATS)
    r = comp["references"]["linear"]
    assert r["continued"]["mauc"] == pytest.approx(0.25) and "mae" not in r  # mae's own score stays compare's
    assert r["multimodal_vs_continued"]["delta_mauc"] == pytest.approx(0.75)
    assert r["continued_vs_mae"]["delta_mauc"] == pytest.approx(-0.5)
    assert (r["continued_vs_mae"]["delta_ci95"][1] < 0) == (r["continued_vs_mae"]["p_value"] < 0.05)
    rows = comp["seeds"]["linear"]["per_seed"]
    assert [row["multimodal_vs_continued"]["delta_mauc"] for row in rows] == pytest.approx([0.75, -0.25])
    assert comp["seeds"]["linear"]["multimodal_vs_continued"]["mean"] == pytest.approx(0.25)
    md = (tmp / "c.md").read_text()
    assert "### The two-step flow's control" in md and "| linear | 0.250" in md and "-0.500" in md
