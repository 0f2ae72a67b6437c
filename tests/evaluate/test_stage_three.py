"""The finetune matrix (2 encoders x 2 protocols) and compare, in-process on a tiny synthetic set."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from cxrpipe.config import section
from cxrpipe.evaluate.probe.finetune import FinetuneConfig, run_finetune
from cxrpipe.labels import CHEXPERT_LABELS

pytestmark = pytest.mark.slow  # whole stages end to end (seconds)


def _cli(main) -> typer.Typer:
    app = typer.Typer()
    app.command()(main)
    return app


@pytest.fixture(scope="module")
def pipeline(synthetic, params_file, tmp_path_factory) -> Path:
    """Run the four finetune runs and compare through their CLIs, as dvc would; return the work folder."""
    from stages.compare import main as compare_main
    from stages.finetune import main as finetune_main

    work = tmp_path_factory.mktemp("stage-three")
    params = params_file
    runner = CliRunner()
    for encoder in ("mae", "multimodal"):
        for protocol in ("linear", "finetune"):
            res = runner.invoke(_cli(finetune_main), [
                "--params", str(params), "--encoder", str(synthetic[encoder]), "--protocol", protocol,
                "--prepared", str(synthetic["prepared"]), "--out", str(work / "metrics" / f"{encoder}-{protocol}.json"),
                "--predictions", str(work / "predictions"), "--plots", str(work / "plots" / "finetune"),
            ])
            assert res.exit_code == 0, res.output
    res = runner.invoke(_cli(compare_main), [
        "--params", str(params), "--metrics", str(work / "metrics"), "--predictions", str(work / "predictions"),
        "--out", str(work / "metrics" / "comparison.json"), "--report", str(work / "reports" / "comparison.md"),
        "--plots", str(work / "plots" / "roc"),
    ])
    assert res.exit_code == 0, res.output
    return work


def test_matrix_writes_metrics_config_predictions_and_curves(pipeline):
    for run in ("mae-linear", "mae-finetune", "multimodal-linear", "multimodal-finetune"):
        m = json.loads((pipeline / "metrics" / f"{run}.json").read_text())
        leaves = []  # `dvc metrics show` prints every string leaf: the metrics file holds numbers only

        def walk(x):
            if isinstance(x, dict):
                [walk(v) for v in x.values()]
            elif not isinstance(x, list):
                leaves.append(x)

        walk(m)
        assert not [x for x in leaves if isinstance(x, str)]
        for level in ("image", "study"):
            b = m[level]
            assert 0.0 <= b["mauc"] <= 1.0 and b["mauc_ci95"][0] <= b["mauc_ci95"][1]
            assert b["all_negative_accuracy"] is not None and b["accuracy"] is not None
            assert [p["label"] for p in b["per_label"]] == list(CHEXPERT_LABELS)
            assert sorted(b["labels_in_mauc"] + b["labels_excluded"] + b["labels_low_positive"]) == sorted(
                CHEXPERT_LABELS
            )
            assert b["min_test_positives"] == 2
            for pl in b["per_label"]:  # reported apart: an AUROC with its interval, not in the mean
                assert pl["low_positive"] == (pl["label"] in b["labels_low_positive"])
                assert not pl["low_positive"] or (pl["n_pos"] < 2 and pl["auroc_ci95"] is not None)
        # frontal images of labelled studies only: 10 test studies, laterals left out
        assert m["n_test_studies"] == 10 and m["study"]["n"] == 10 and m["image"]["n"] == m["n_test_images"]
        assert m["n_train_studies"] == 27  # study 5 has no label row
        # LP-FT (the finetune default) may keep its probed head: epoch 0
        first = 0 if run.endswith("finetune") else 1
        assert [h["epoch"] for h in m["history"]][0] == first and first <= m["best_epoch"] <= m["history"][-1]["epoch"]
        cfg = json.loads((pipeline / "metrics" / f"{run}.config.json").read_text())
        assert cfg["protocol"] == run.split("-")[1] and cfg["finetune"]["seed"] == 0
        assert cfg["encoder_variant"] == run.split("-")[0] and cfg["dataset"]["demo"] is True
        assert (pipeline / "predictions" / f"{run}.npz").stat().st_size > 0
        assert (pipeline / "plots" / "finetune" / f"{run}.png").read_bytes()[:4] == b"\x89PNG"


def test_compare_schema_report_and_roc_pngs(pipeline):
    comp = json.loads((pipeline / "metrics" / "comparison.json").read_text())
    # no random/pixels runs here: no "references"; one seed: the seed summary of the default run
    assert set(comp) == {"linear", "finetune", "seeds"}
    assert comp["seeds"]["seeds"] == ["default"]  # these encoders' config.json record no pretraining seed
    assert comp["seeds"]["linear"]["delta_mauc"]["mean"] == pytest.approx(comp["linear"]["delta_mauc"])
    for protocol in ("linear", "finetune"):
        r = comp[protocol]
        assert {"mae", "multimodal", "delta_mauc", "delta_ci95", "p_value"} <= set(r)
        assert r["delta_mauc"] == pytest.approx(r["multimodal"]["mauc"] - r["mae"]["mauc"])
        lo, hi = r["delta_ci95"]
        assert lo <= hi and 0 < r["p_value"] <= 1
        # compare's mAUC (numpy kernel) equals finetune's (scikit-learn) at the same level
        m = json.loads((pipeline / "metrics" / f"mae-{protocol}.json").read_text())
        assert r["mae"]["mauc"] == pytest.approx(m["study"]["mauc"], abs=1e-12)
    md = (pipeline / "reports" / "comparison.md").read_text()
    assert "## Caveats (read before quoting these numbers)" in md
    low = json.loads((pipeline / "metrics" / "mae-linear.json").read_text())["study"]["labels_low_positive"]
    assert low and all(f"{n} (" in md for n in low) and "† too few test positives" in md
    assert "0.6801" in md and "0.7235" in md and "**Different dataset**" in md  # the demo marker is set
    assert "all-negative" in md and "| linear |" in md and "| finetune |" in md
    pngs = sorted((pipeline / "plots" / "roc").glob("*.png"))
    assert len(pngs) == len(CHEXPERT_LABELS)


def test_same_seed_same_numbers_other_seed_other_numbers(synthetic, pipeline, tmp_path, tiny_params):
    cfg = section(tiny_params, "finetune", FinetuneConfig)
    first = {}
    for protocol in ("linear", "finetune"):
        first[protocol] = json.loads((pipeline / "metrics" / f"mae-{protocol}.json").read_text())
        again = run_finetune(cfg, synthetic["mae"], protocol, synthetic["prepared"], tmp_path / f"{protocol}.json")
        assert again == first[protocol]
    tiny_params["finetune"]["seed"] = 1
    other = section(tiny_params, "finetune", FinetuneConfig)
    moved = run_finetune(other, synthetic["mae"], "linear", synthetic["prepared"], tmp_path / "seed1.json")
    assert moved["study"]["mauc"] != first["linear"]["study"]["mauc"]


def test_label_fraction_samples_training_studies(synthetic, tmp_path, tiny_params):
    params = {**tiny_params["finetune"], "label_fraction": 0.5}
    cfg = section({"finetune": params}, "finetune", FinetuneConfig)
    m = run_finetune(cfg, synthetic["mae"], "linear", synthetic["prepared"], tmp_path / "half.json")
    assert m["n_train_studies"] == round(0.5 * 27) and m["label_fraction"] == 0.5
    assert m["n_test_studies"] == 10  # test is never subsampled


def test_compare_refuses_runs_on_different_test_sets(pipeline, tmp_path):
    from cxrpipe.evaluate.compare import CompareConfig, run_compare
    from cxrpipe.evaluate.stats.metrics import Predictions, load_predictions, save_predictions

    metrics, preds = tmp_path / "metrics", tmp_path / "predictions"
    metrics.mkdir()
    for run in ("mae-linear", "multimodal-linear"):
        (metrics / f"{run}.json").write_text((pipeline / "metrics" / f"{run}.json").read_text())
        p, meta = load_predictions(pipeline / "predictions" / f"{run}.npz")
        if run.startswith("multimodal"):
            mask = p.mask.copy()
            mask[0, 0] = not mask[0, 0]  # another label policy
            p = Predictions(p.image_ids, p.study_ids, p.probs, p.targets, mask)
        save_predictions(p, preds / f"{run}.npz", **meta)
    with pytest.raises(ValueError, match="different test"):
        run_compare(CompareConfig(n_bootstrap=10), metrics, tmp_path / "c.json", predictions_dir=preds)
    with pytest.raises(FileNotFoundError):
        run_compare(CompareConfig(n_bootstrap=10), tmp_path / "nothing", tmp_path / "c.json")


def test_bad_protocol_is_a_clear_error(params_file):
    from stages.finetune import main as finetune_main

    res = CliRunner().invoke(_cli(finetune_main), ["--params", str(params_file), "--protocol", "probe"])
    assert res.exit_code == 2 and "'probe' is not one of linear, finetune" in " ".join(res.output.split())


def test_predictions_are_probabilities(pipeline):
    from cxrpipe.evaluate.stats.metrics import load_predictions

    p, meta = load_predictions(pipeline / "predictions" / "multimodal-finetune.npz")
    assert meta == {"encoder": "multimodal", "protocol": "finetune"}
    assert p.probs.shape == (len(p.image_ids), 14) and np.all((p.probs >= 0) & (p.probs <= 1))
