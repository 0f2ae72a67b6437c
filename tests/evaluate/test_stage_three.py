"""The finetune matrix (2 encoders x 3 protocols) and compare, in-process on a tiny synthetic set."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from cxrpipe.config import section
from cxrpipe.evaluate.probe.finetune import FinetuneConfig, run_finetune
from cxrpipe.evaluate.stats.rules import StatsConfig
from cxrpipe.labels import CHEXPERT_LABELS

PROTOCOLS = ("fc", "linear", "finetune")
RUNS = [f"{e}-{p}" for e in ("mae", "multimodal") for p in PROTOCOLS]

pytestmark = pytest.mark.slow  # whole stages end to end (seconds)


def _cli(main) -> typer.Typer:
    app = typer.Typer()
    app.command()(main)
    return app


@pytest.fixture(scope="module")
def pipeline(synthetic, params_file, tmp_path_factory) -> Path:
    """Run the six finetune runs and compare through their CLIs, as dvc would; return the work folder."""
    from stages.compare import main as compare_main
    from stages.finetune import main as finetune_main

    work = tmp_path_factory.mktemp("stage-three")
    params = params_file
    runner = CliRunner()
    for encoder in ("mae", "multimodal"):
        for protocol in PROTOCOLS:
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


def _walk_leaves(x, leaves: list) -> list:
    """The scalar leaves `dvc metrics show` prints (it does not descend into lists)."""
    if isinstance(x, dict):
        [_walk_leaves(v, leaves) for v in x.values()]
    elif not isinstance(x, list):
        leaves.append(x)
    return leaves


def test_matrix_writes_metrics_config_predictions_and_curves(pipeline, synthetic):
    """Every run's numbers are the ones its predictions give (recomputed here with scikit-learn), on the units
    the manifest says (test studies and patients, frontal images of labelled studies)."""
    from sklearn.metrics import roc_auc_score

    from cxrpipe.data.manifest import read_images
    from cxrpipe.evaluate.stats.metrics import load_predictions

    test_images = [r for r in read_images(synthetic["prepared"]) if r.split == "test" and r.view in ("AP", "PA")]
    for run in RUNS:
        m = json.loads((pipeline / "metrics" / f"{run}.json").read_text())
        # `dvc metrics show` prints every string leaf: the metrics file holds numbers only
        assert not [x for x in _walk_leaves(m, []) if isinstance(x, str)]
        pred, _ = load_predictions(pipeline / "predictions" / f"{run}.npz")
        assert list(pred.image_ids) == [r.dicom_id for r in test_images]
        assert list(pred.subject_ids) == [r.subject_id for r in test_images]
        study = pred.at_level("study")
        b = m["study"]
        mine = [roc_auc_score(study.targets[study.mask[:, j], j] > 0.5, study.probs[study.mask[:, j], j])
                for j in (CHEXPERT_LABELS.index(n) for n in b["labels_in_mauc"])]
        assert b["mauc"] == pytest.approx(np.mean(mine), abs=1e-9)
        lo, hi = b["mauc_ci95"]
        assert lo < b["mauc"] < hi
        correct = ((study.probs >= 0.5) == (study.targets > 0.5))[study.mask]
        assert b["accuracy"] == pytest.approx(correct.mean(), abs=1e-9)
        assert b["all_negative_accuracy"] == pytest.approx((study.targets[study.mask] <= 0.5).mean(), abs=1e-9)
        assert [p["label"] for p in b["per_label"]] == list(CHEXPERT_LABELS)
        assert sorted(b["labels_in_mauc"] + b["labels_excluded"] + b["labels_low_positive"]) == sorted(CHEXPERT_LABELS)
        assert b["min_test_positives"] == 2 and b["labels_low_positive"]  # some labels have one test positive
        for pl in b["per_label"]:  # reported apart: an AUROC with its interval, not in the mean
            assert pl["low_positive"] == (pl["label"] in b["labels_low_positive"])
            assert not pl["low_positive"] or (pl["n_pos"] < 2 and pl["auroc_ci95"] is not None)
        # frontal images of labelled studies only: 10 test studies of 5 patients, laterals left out
        assert m["n_test_studies"] == 10 and b["n"] == 10 and (b["n_studies"], b["n_patients"]) == (10, 5)
        assert m["image"]["n"] == m["n_test_images"] == len(test_images)
        assert m["n_train_studies"] == 27  # study 5 has no label row
        protocol = run.split("-")[1]
        if protocol == "finetune":  # LP-FT may keep its probed head: epoch 0
            assert [h["epoch"] for h in m["history"]][0] == 0 and 0 <= m["best_epoch"] <= m["history"][-1]["epoch"]
            assert m["validate_mauc"] == max(h["validate_mauc"] for h in m["history"])
        else:  # the probes: the (lr, weight decay, step) with the best validate mAUC, from the params' grid
            grid = {"fc": ([0.01], [0.0001]), "linear": ([0.01, 0.03], [0.0001])}[protocol]
            sel = m["selected"]
            assert sel["lr"] in grid[0] and sel["weight_decay"] in grid[1] and sel["step"] in (4, 8, 12)
            assert len(m["history"]) == 3 * len(grid[0]) * len(grid[1])  # every grid point, every 4th step
            best = max(m["history"], key=lambda h: h["validate_mauc"])
            assert m["validate_mauc"] == best["validate_mauc"]
        cfg = json.loads((pipeline / "metrics" / f"{run}.config.json").read_text())
        assert cfg["protocol"] == protocol and cfg["finetune"]["seed"] == 0
        assert cfg["stats"] == {"bootstrap_unit": "patient", "min_test_positives": 2}
        assert cfg["encoder_variant"] == run.split("-")[0] and cfg["dataset"]["demo"] is True
        assert (pipeline / "plots" / "finetune" / f"{run}.png").read_bytes()[:4] == b"\x89PNG"


def test_the_linear_protocol_is_one_linear_layer_and_its_predictions_are_its_heads(synthetic, tiny_params, tmp_path,
                                                                                     monkeypatch):
    """`linear` trains BatchNorm (no affine) + one nn.Linear on the features, `fc` the hidden layers; the saved
    test predictions are exactly the selected head's probabilities on the frozen encoder's test features."""
    import torch

    from cxrpipe.data.image_cache import ImageCache
    from cxrpipe.encoder import load_encoder
    from cxrpipe.evaluate.probe import finetune, frozen
    from cxrpipe.evaluate.probe.data import ImageRows, labelled_splits
    from cxrpipe.evaluate.stats.metrics import load_predictions

    heads = []
    real = frozen.fit_probe

    def spy(*args):
        fit = real(*args)
        heads.append(fit.head)
        return fit

    monkeypatch.setattr(finetune, "fit_probe", spy)
    cfg = section(tiny_params, "finetune", FinetuneConfig)
    for protocol in ("linear", "fc"):
        run_finetune(cfg, synthetic["mae"], protocol, synthetic["prepared"], tmp_path / f"{protocol}.json",
                     predictions_out=tmp_path / f"{protocol}.npz")
    kinds = [[type(m).__name__ for m in h.net] for h in heads]
    assert kinds[0] == ["BatchNorm1d", "Linear"] and not heads[0].net[0].affine
    assert kinds[1] == ["BatchNorm1d", "Linear", "GELU", "Dropout", "Linear"]
    encoder, enc_cfg = load_encoder(synthetic["mae"])
    test = labelled_splits(synthetic["prepared"], cfg.views, cfg.uncertain, cfg.blank)["test"]
    loader = frozen.make_loader(ImageRows(ImageCache(synthetic["prepared"] / "images.h5"), test), 16, False, 0, 0)
    feats = torch.from_numpy(frozen.predict_logits(encoder, loader, finetune._Inputs(enc_cfg, torch.device("cpu"))))
    for head, protocol in zip(heads, ("linear", "fc")):
        with torch.inference_mode():
            expect = torch.sigmoid(head.eval()(feats)).numpy()
        saved = load_predictions(tmp_path / f"{protocol}.npz")[0].probs
        np.testing.assert_allclose(saved, expect, atol=1e-6)


def test_permuting_test_labels_changes_no_selection_and_no_prediction(synthetic, tiny_params, tmp_path):
    """Selection reads validate only: the same prepared set with its TEST labels permuted over the test studies
    gives the same selected step / grid point / epoch and the same test predictions, only other test scores."""
    import shutil

    from cxrpipe.data.manifest import read_images, read_label_names, read_studies, write_manifest
    from cxrpipe.evaluate.stats.metrics import load_predictions

    permuted = tmp_path / "permuted"
    shutil.copytree(synthetic["prepared"], permuted)
    studies = read_studies(permuted)
    test = [i for i, s in enumerate(studies) if s.split == "test" and s.has_labels]
    order = np.random.default_rng(0).permutation(len(test))
    labels = [studies[test[k]].labels for k in order]
    for i, lab in zip(test, labels):
        studies[i] = dataclasses.replace(studies[i], labels=lab)
    write_manifest(permuted, read_images(permuted), studies, read_label_names(permuted))
    cfg = section(tiny_params, "finetune", FinetuneConfig)
    stats = StatsConfig(min_test_positives=2)
    for protocol in PROTOCOLS:
        runs = {}
        for name, prepared in (("orig", synthetic["prepared"]), ("perm", permuted)):
            npz = tmp_path / name / f"{protocol}.npz"
            m = run_finetune(cfg, synthetic["mae"], protocol, prepared, tmp_path / name / f"{protocol}.json",
                             predictions_out=npz, stats=stats)
            runs[name] = (m, load_predictions(npz)[0])
        (a, pa), (b, pb) = runs["orig"], runs["perm"]
        for key in ("selected", "best_epoch", "validate_mauc", "history"):
            assert a.get(key) == b.get(key), (protocol, key)
        if protocol == "finetune":  # LP-FT's probe: the same head chosen (its test score moves with the labels)
            assert a["fc_probe"]["selected"] == b["fc_probe"]["selected"]
        np.testing.assert_array_equal(pa.probs, pb.probs)
        assert not np.array_equal(pa.targets, pb.targets)  # the permutation reached the test labels
        assert a["study"]["mauc"] != b["study"]["mauc"]


def test_compare_schema_report_and_roc_pngs(pipeline):
    comp = json.loads((pipeline / "metrics" / "comparison.json").read_text())
    # no random/pixels runs here: no "references"; one seed: the seed summary of the default run
    assert set(comp) == {*PROTOCOLS, "seeds"}
    assert comp["seeds"]["seeds"] == ["default"]  # these encoders' config.json record no pretraining seed
    assert comp["seeds"]["fc"]["delta_mauc"]["mean"] == pytest.approx(comp["fc"]["delta_mauc"])
    for protocol in PROTOCOLS:
        r = comp[protocol]
        assert {"mae", "multimodal", "delta_mauc", "delta_ci95", "p_value"} <= set(r)
        assert r["delta_mauc"] == pytest.approx(r["multimodal"]["mauc"] - r["mae"]["mauc"])
        lo, hi = r["delta_ci95"]
        assert lo <= hi and 0 <= r["p_value"] <= 1 and (lo > 0 or hi < 0) == (r["p_value"] < 0.05)
        assert (r["n_test_patients"], r["n_test_studies"]) == (5, 10)
        assert r["bootstrap_unit"] == "patient"  # what the replicates resampled (cxrpipe results quotes it)
        # compare's mAUC (numpy kernel) equals finetune's (scikit-learn) at the same level, on the same labels
        m = json.loads((pipeline / "metrics" / f"mae-{protocol}.json").read_text())
        assert r["mae"]["mauc"] == pytest.approx(m["study"]["mauc"], abs=1e-12)
        assert r["labels_in_mauc"] == m["study"]["labels_in_mauc"]
    md = (pipeline / "reports" / "comparison.md").read_text()
    assert "## Caveats (read before quoting these numbers)" in md
    low = json.loads((pipeline / "metrics" / "mae-fc.json").read_text())["study"]["labels_low_positive"]
    assert low and all(f"{n} (" in md for n in low) and "† too few test positives" in md
    assert "0.6801" in md and "0.7235" in md and "**Different dataset**" in md  # the demo marker is set
    assert "this run: mae-fc" in md  # the report's FC-head baseline beside this run's fc protocol
    assert "all-negative" in md and all(f"| {p} |" in md for p in PROTOCOLS)
    assert "5 patients, 10 studies" in md and "100 resamples of the test patients" in md
    assert "interval excludes 0 exactly when p < 0.05" in md and "at least 2 test positives" in md
    pngs = sorted((pipeline / "plots" / "roc").glob("*.png"))
    assert len(pngs) == len(CHEXPERT_LABELS)


def test_same_seed_same_numbers_other_seed_other_numbers(synthetic, pipeline, tmp_path, tiny_params):
    cfg = section(tiny_params, "finetune", FinetuneConfig)
    first = {}
    for protocol in PROTOCOLS:
        first[protocol] = json.loads((pipeline / "metrics" / f"mae-{protocol}.json").read_text())
        again = run_finetune(cfg, synthetic["mae"], protocol, synthetic["prepared"], tmp_path / f"{protocol}.json",
                             stats=section(tiny_params, "stats", StatsConfig))
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
    assert res.exit_code == 2 and "'probe' is not one of fc, linear, finetune" in " ".join(res.output.split())
