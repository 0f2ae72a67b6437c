"""`cxrpipe results`: the generated blocks hold what the metrics say, a typed or stale number fails the check,
and the committed README/docs agree with the committed metrics."""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cxrpipe.cli import app
from cxrpipe.results import (
    BLOCKS,
    Metrics,
    ResultsError,
    build_block,
    find_pages,
    pval,
    render,
    stale_blocks,
    update_pages,
)

ROOT = Path(__file__).resolve().parent.parent


def _ci(x: float, w: float = 0.05) -> list[float]:
    return [round(x - w, 4), round(x + w, 4)]


def _delta(d: float, p: float) -> dict:
    return {"delta_mauc": d, "delta_ci95": _ci(d, 0.03), "p_value": p, "n_bootstrap_valid": 1000}


def _recalls(scale: float, n_candidates: int) -> dict:
    out: dict = {}
    for k in (1, 5, 10):
        out.update({f"recall@{k}": scale * k, f"recall@{k}_ci95": _ci(scale * k, 0.01), f"chance@{k}": k / n_candidates})
        out.update({f"hit@{k}": 0.3 + scale * k, f"hit@{k}_ci95": _ci(0.3 + scale * k, 0.01), f"hit_chance@{k}": 0.2 * k,
                    f"precision@{k}": 0.25 + scale * k / 2, f"precision@{k}_ci95": _ci(0.25 + scale * k / 2, 0.01)})
    return {**out, "n_label_queries": n_candidates - 7, "precision_prior": 0.25}


def write_metrics(folder: Path, seeds: tuple[int, ...] = (0,),
                  protocols: tuple[str, ...] = ("fc", "linear", "finetune")) -> Path:
    """Metrics JSONs shaped as the stages write them, every number distinct so a test can find it."""
    folder.mkdir(parents=True, exist_ok=True)
    dump = lambda name, d: (folder / f"{name}.json").write_text(json.dumps(d))  # noqa: E731
    labels = ["Atelectasis", "Cardiomegaly", "Edema", "Lung Opacity"]
    comparison: dict = {}
    for i, p in enumerate(protocols):
        acc = {"all_negative_accuracy": 0.868}
        comparison[p] = {"mae": {"mauc": 0.611 + i / 100, "mauc_ci95": _ci(0.611 + i / 100), "accuracy": 0.871, **acc},
                         "multimodal": {"mauc": 0.657 + i / 100, "mauc_ci95": _ci(0.657 + i / 100),
                                        "accuracy": 0.884 + i / 1000, **acc},
                         **_delta(0.046 + i / 1000, 0.0 if i == 0 else 0.2468), "n_bootstrap": 1000,
                         "bootstrap_unit": "patient", "n_test_images": 204, "n_test_studies": 193,
                         "n_test_patients": 121, "labels_in_mauc": labels}
    comparison["references"] = {"pixels": {"mauc": 0.777, "mauc_ci95": _ci(0.777)}}
    for i, p in enumerate(protocols):
        comparison["references"][p] = {"random": {"mauc": 0.593 + i / 100, "mauc_ci95": _ci(0.593 + i / 100)},
                                       "pixels": {"mauc": 0.777, "mauc_ci95": _ci(0.777)},
                                       "mae_vs_random": _delta(0.018 + i / 1000, 0.31),
                                       "multimodal_vs_random": _delta(0.064 + i / 1000, 0.002),
                                       "mae_vs_pixels": _delta(-0.166 - i / 1000, 0.0005),
                                       "multimodal_vs_pixels": _delta(-0.12 - i / 1000, 0.0005)}
    comparison["seeds"] = {"seeds": list(seeds)}
    for i, p in enumerate(protocols):
        per_seed = [{"seed": s, "mae": {"mauc": 0.6}, "multimodal": {"mauc": 0.65}, **_delta(0.041 + s / 100 + i / 1000, 0.01),
                     "random": {"mauc": 0.59}, "mae_vs_random": _delta(0.003 + s / 100, 0.5)} for s in seeds]
        ds = [r["delta_mauc"] for r in per_seed]
        comparison["seeds"][p] = {"per_seed": per_seed,
                                  "delta_mauc": {"n": len(ds), "mean": sum(ds) / len(ds), "sd": 0.0123 if len(ds) > 1 else None,
                                                 "min": min(ds), "max": max(ds)},
                                  "mae_vs_random": {"n": len(ds), "mean": 0.0135, "sd": 0.0101 if len(ds) > 1 else None,
                                                    "min": 0.003, "max": 0.003 + (len(ds) - 1) / 100}}
    dump("comparison", comparison)
    # encoders -> protocol -> fraction tag; the mae fc probe could learn no label at 5%: not estimable (null)
    runs = {e: {p: {f"f{t}": {"label_fraction": f, "n_train_studies": n, "estimable": (e, p, t) != ("mae", "fc", 0.05),
                               "mauc": None if (e, p, t) == ("mae", "fc", 0.05) else m + j + k / 1000,
                               "mauc_ci95": _ci(m + j + k / 1000)}
                    for t, f, n, m in ((0.05, 0.05, 34, 0.524), (1, 1.0, 688, 0.619))}
                for k, p in enumerate(("fc", "linear"))} for e, j in (("mae", 0), ("multimodal", 0.058))}
    deltas = {"fc": {"f0.05": {"label_fraction": 0.05, "delta_mauc": None, "delta_ci95": [None, None], "p_value": None,
                               "n_labels": 0},
                     "f1": {"label_fraction": 1.0, **_delta(0.0392, 0.0), "n_labels": 10}},
              "linear": {"f0.05": {"label_fraction": 0.05, **_delta(0.0581, 0.004), "n_labels": 7},
                         "f1": {"label_fraction": 1.0, **_delta(0.0382, 0.025), "n_labels": 10}}}
    dump("label_efficiency", {"n_bootstrap": 1000, "min_test_positives": 10, "encoders": runs, "delta": deltas})
    (folder / "label_efficiency.config.json").write_text(json.dumps(
        {"level": "study", "reference": "mae", "candidate": "multimodal", "bootstrap_unit": "patient"}))
    for e, m in (("mae", 0.472), ("multimodal", 0.505)):
        dump(f"zeroshot-{e}", {"mauc": m, "mauc_ci95": _ci(m), "mauc5": m + 0.01, "mauc5_ci95": _ci(m + 0.01),
                               "labels_in_mauc": labels, "n_studies": 193,
                               "per_label": {n: {"auroc": m + k / 100, "auroc_ci95": _ci(m + k / 100), "n_pos": 20 + k}
                                             for k, n in enumerate(labels)}})
        scale = 0.01 if e == "mae" else 0.02
        dump(f"retrieval-{e}", {"n_images": 204, "n_texts": 197, "n_studies": 197,
                                "image_to_report": _recalls(scale, 197), "report_to_image": _recalls(scale + 0.001, 197)})
        check = _recalls((0.121 if e == "mae" else 0.212) / 10, 97)
        dump(f"pretrain-{e}", {"retrieval": {"n_images": 99, "n_reports": 97, **check}})
        dump(f"zeroshot-nih_cxr14-{e}", {"mauc": m + 0.1, "mauc_ci95": _ci(m + 0.1), "mauc5": None, "mauc5_ci95": None,
                                         "labels_in_mauc": ["Effusion", "Mass"], "n_studies": 66, "n_patients": 48,
                                         "dataset": "NIH ChestX-ray14", "split_rule": "NIH's official split", "per_label": {}})
    dump("transfer", {"nih_cxr14": {"linear": {"f1": {
        "label_fraction": 0.01, "n_train_studies": 2, "n_test_studies": 66, "n_labels_in_mauc": 2,
        "mae": {"mauc": 0.595, "mauc_ci95": _ci(0.595)}, "multimodal": {"mauc": 0.549, "mauc_ci95": _ci(0.549)},
        "random": {"mauc": 0.529, "mauc_ci95": _ci(0.529)}, **_delta(-0.046, 0.44),
        "references": {"mae_vs_random": _delta(0.065, 0.12), "multimodal_vs_random": _delta(0.02, 0.7)}}}}})
    (folder / "transfer.config.json").write_text(json.dumps(
        {"reference": "mae", "candidate": "multimodal", "references": ["random"], "n_bootstrap": 1000,
         "bootstrap_unit": "patient", "datasets": {"nih_cxr14": {"title": "NIH ChestX-ray14 (official lists)"}}}))
    return folder


def page(*names: str) -> str:
    return "# results\n\n" + "".join(f"<!-- results:{n} (make results) -->\nold\n<!-- /results -->\n\ntext\n" for n in names)


def test_blocks_hold_the_planted_numbers(tmp_path):
    m = Metrics(write_metrics(tmp_path / "metrics"))
    cmp = build_block("comparison", m)
    assert "| FC head (frozen) | 0.777 [0.727, 0.827] | 0.593 [0.543, 0.643] | 0.611 [0.561, 0.661] | 0.657 [0.607, 0.707] |" in cmp
    # interval above 0: bold; p = 0 of 1000 valid replicates is the paired bootstrap's floor, 2 / 1000
    assert "**+0.046 [+0.016, +0.076]**, p < 0.002" in cmp
    assert "+0.047 [+0.017, +0.077]**, p = 0.247" in cmp  # linear: p printed to 3 decimals
    assert "193 test studies of 121 patients; 95% bootstrap intervals over test patients" in cmp
    assert "over the 4 labels" in cmp and "Consolidation" in cmp  # left out, named
    assert "One training seed" in cmp
    le = build_block("label_efficiency", m)
    assert "over test patients (1000 resamples)" in le
    assert le.index("FC head (frozen):") < le.index("linear probe:")  # a table per protocol
    assert "| 5% | 34 | 0 | not estimable | 0.582 [0.532, 0.632] | n/a |" in le  # fc at 5%: mae learned no label
    assert "| 100% | 688 | 10 | 0.619 [0.569, 0.669] | 0.677 [0.627, 0.727] | +0.039 [+0.009, +0.069], p < 0.002 |" in le
    assert "| 5% | 34 | 7 | 0.525 [0.475, 0.575] | 0.583 [0.533, 0.633] | +0.058 [+0.028, +0.088], p = 0.004 |" in le
    zs = build_block("zeroshot", m)
    assert "| multimodal | 0.505 [0.455, 0.555] | 0.515 [0.465, 0.565] |" in zs and "| Edema | 22 | 0.492" in zs
    zt = build_block("zeroshot_transfer", m)
    assert "| the project's own test split (no standard published protocol) | the pipeline's test split | 193 studies" in zt
    assert "| NIH ChestX-ray14 | NIH's official split | 66 studies of 48 patients | 2: Effusion, Mass | " \
           "0.572 [0.522, 0.622] | 0.605 [0.555, 0.655] | n/a |" in zt
    rt = build_block("retrieval", m)
    assert "| multimodal | 0.021 | 0.106 | 0.212 |" in rt and "| chance | 0.010 | 0.052 | 0.103 |" in rt
    assert "190 image queries with a finding" in rt and "intervals over test studies" in rt
    assert "| chance / prior | image -> report | 0.200 | 1.000 | 2.000 | 0.250 | 0.250 | 0.250 |" in rt
    assert "| multimodal | image -> report | 0.320 [0.310, 0.330] | 0.400 [0.390, 0.410] | 0.500 [0.490, 0.510] | " \
           "0.260 [0.250, 0.270] | 0.300 [0.290, 0.310] | 0.350 [0.340, 0.360] |" in rt
    tr = build_block("transfer", m)
    assert "NIH ChestX-ray14 (official lists): 95% intervals over test patients" in tr
    assert "| linear probe | 1% | 2 | 2 | 0.595 [0.545, 0.645] | 0.549" in tr and "+0.065 [+0.035, +0.095], p = 0.120" in tr
    sm = build_block("summary", m)
    assert "R@10: multimodal 0.212, mae's untrained heads 0.121, chance 0.103" in sm and "5%: +0.058" in sm
    assert "FC head (frozen) 5%: n/a, 100%: +0.039" in sm
    assert "negative everywhere 0.868, the runs 0.871 to 0.886" in sm


def test_three_seeds_lead_with_the_spread(tmp_path):
    one = build_block("comparison", Metrics(write_metrics(tmp_path / "one")))
    three = build_block("comparison", Metrics(write_metrics(tmp_path / "three", seeds=(0, 1, 2))))
    assert "multimodal - mae, seeds" not in one
    lines = three.splitlines()
    spread_at = next(i for i, ln in enumerate(lines) if "seeds 0 / 1 / 2" in ln)
    seed0_at = next(i for i, ln in enumerate(lines) if ln.startswith("| protocol | pixels"))
    assert spread_at < seed0_at and "One training seed" not in three
    assert "| FC head (frozen) | +0.041 / +0.051 / +0.061 | +0.051 (sd 0.012; +0.041 to +0.061) |" in three


def test_protocols_come_from_the_data(tmp_path):
    """A protocol renamed or added (fc beside a true linear probe) needs no change here."""
    m = Metrics(write_metrics(tmp_path / "m", protocols=("fc", "linear", "finetune", "mlp")))
    cmp = build_block("comparison", m)
    assert [ln.split(" | ")[0] for ln in cmp.splitlines() if ln.startswith("| ") and "[" in ln] == [
        "| FC head (frozen)", "| linear probe", "| finetune (LP-FT)", "| mlp"]


def test_a_typed_or_stale_number_fails_the_check(tmp_path):
    metrics = write_metrics(tmp_path / "metrics")
    m = Metrics(metrics)
    fresh = render(page(*BLOCKS), m)
    assert stale_blocks(fresh, m) == []
    assert stale_blocks(page("comparison"), m) == ["comparison"]  # never written
    typed = fresh.replace("0.657 [0.607, 0.707]", "0.667 [0.607, 0.707]", 1)
    assert typed != fresh and stale_blocks(typed, m) == ["comparison"]
    # the metrics move (another run): every block quoting them is stale
    cmp = json.loads((metrics / "comparison.json").read_text())
    cmp["linear"]["delta_mauc"] = 0.031
    (metrics / "comparison.json").write_text(json.dumps(cmp))
    assert stale_blocks(fresh, Metrics(metrics)) == ["comparison", "shuffled"]  # both quote multimodal - mae
    assert "outside" in render(page("summary") + "outside 0.123\n", m)  # text outside blocks is left alone


def test_update_pages_rewrites_then_checks_clean(tmp_path):
    metrics = write_metrics(tmp_path / "metrics")
    doc = tmp_path / "doc.md"
    doc.write_text(page("comparison", "transfer"))
    assert update_pages([doc], metrics, check=True) == [f"{doc}: comparison", f"{doc}: transfer"]
    assert "old" in doc.read_text()  # check writes nothing
    assert len(update_pages([doc], metrics)) == 2 and "old" not in doc.read_text()
    assert update_pages([doc], metrics, check=True) == []


def test_missing_metrics_say_so_and_bad_markers_fail(tmp_path):
    m = Metrics(tmp_path / "nothing")
    assert "Not in the committed metrics" in build_block("comparison", m) and "comparison.json" in build_block("comparison", m)
    with pytest.raises(ResultsError, match="unknown results block"):
        render(page("no_such_block"), m)
    with pytest.raises(ResultsError, match="closing"):
        render("<!-- results:comparison -->\nx\n", m)


def test_p_values_never_print_below_their_resolution():
    """As the stages' reports print p (fmt_p): the floor of B valid replicates is 2 / B."""
    assert pval(0.0, 1000) == "p < 0.002" and pval(0.002, 1000) == "p = 0.002" and pval(0.0254) == "p = 0.025"
    assert pval(0.0496, 1000) == "p = 0.0496"  # not "0.050": rounding never carries p across 0.05


def test_cli_check_exits_1_on_a_stale_block(tmp_path):
    metrics = write_metrics(tmp_path / "metrics")
    doc = tmp_path / "doc.md"
    doc.write_text(page("zeroshot"))
    res = CliRunner().invoke(app, ["results", "--metrics", str(metrics), "--check", str(doc)])
    assert res.exit_code == 1 and "stale" in res.output and "zeroshot" in res.output
    assert CliRunner().invoke(app, ["results", "--metrics", str(metrics), str(doc)]).exit_code == 0
    assert CliRunner().invoke(app, ["results", "--metrics", str(metrics), "--check", str(doc)]).exit_code == 0


def _committed_metrics(into: Path) -> Path | None:
    """data/metrics as the checkout's HEAD commits it, under ``into``/data/metrics with benchmarks/results beside it
    (what Metrics reads the committed runs from); None outside a git checkout."""
    try:
        tar = subprocess.run(["git", "-C", str(ROOT), "archive", "HEAD", "data/metrics"], check=True,
                             capture_output=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}  # Python 3.10 before 3.10.12 lacks it
    tarfile.open(fileobj=io.BytesIO(tar)).extractall(into, **safe)
    (into / "benchmarks").mkdir()
    (into / "benchmarks" / "results").symlink_to(ROOT / "benchmarks" / "results")
    return into / "data" / "metrics"


def test_committed_pages_agree_with_the_committed_metrics(tmp_path):
    """README.md and docs/*.md quote exactly what data/metrics holds (run `make results` after a new run), or,
    after `make demo` on another machine (whose numbers may differ in the last digits: docs/evaluations.md),
    exactly what the checkout's HEAD commits in data/metrics."""
    pages = find_pages(ROOT)
    assert any("<!-- results:" in p.read_text() for p in pages)
    stale = update_pages(pages, ROOT / "data" / "metrics", check=True)
    committed = _committed_metrics(tmp_path) if stale else None
    if committed is not None:
        assert update_pages(pages, committed, check=True) == [], f"stale against the workspace's data/metrics: {stale}"
    else:
        assert stale == []


def test_targets_and_the_shuffled_control_are_read_from_the_metrics(tmp_path):
    """Each target is marked from the numbers: planted above a threshold -> reached, below -> not reached."""
    folder = write_metrics(tmp_path / "metrics")
    m = Metrics(folder)
    t = build_block("targets", m)
    assert "| zero-shot mAUC >= 0.65, interval above 0.5 | 0.505 [0.455, 0.555] | **not reached** |" in t
    # multimodal R@10 0.2 vs chance 10/197 = 0.051: over 2x, interval [0.19, 0.21] above chance
    assert "| image -> report R@10 >= 2x chance, interval above chance | 0.200 [0.190, 0.210]; chance 0.051 | reached |" in t
    assert "| linear probe: mae - random > 0 | +0.019" in t and "multimodal - mae > 0 on every seed (1) | +0.041 | reached" in t
    assert "pixels 0.777 | **not reached** |" in t and "multimodal - shuffled" not in t  # no shuffled runs
    assert "| image -> report P@10 (label precision) above the label prior, interval above it | 0.350 [0.340, 0.360]; " \
           "prior 0.250 | reached |" in t
    r = json.loads((folder / "retrieval-multimodal.json").read_text())
    r["image_to_report"]["precision@10_ci95"] = [0.24, 0.36]  # the interval reaches the prior: not reached
    (folder / "retrieval-multimodal.json").write_text(json.dumps(r))
    assert "prior 0.250 | **not reached** |" in build_block("targets", Metrics(folder))
    comp = json.loads((folder / "comparison.json").read_text())
    comp["references"]["linear"]["shuffled"] = {"mauc": 0.6, "mauc_ci95": _ci(0.6)}
    comp["references"]["linear"]["multimodal_vs_shuffled"] = _delta(-0.01, 0.6)
    (folder / "comparison.json").write_text(json.dumps(comp))
    z = json.loads((folder / "zeroshot-multimodal.json").read_text())
    z.update(mauc=0.70, mauc_ci95=[0.66, 0.74])
    (folder / "zeroshot-multimodal.json").write_text(json.dumps(z))
    m = Metrics(folder)
    t = build_block("targets", m)
    assert "| zero-shot mAUC >= 0.65, interval above 0.5 | 0.700 [0.660, 0.740] | reached |" in t
    assert "| linear probe: multimodal - shuffled > 0, interval above 0 (1 seed(s)) | -0.010 [-0.040, +0.020], p = 0.600 | **not reached** |" in t
    s = build_block("shuffled", m)
    assert "| linear probe | 0.600 [0.550, 0.650] | 0.667 [0.617, 0.717] | -0.010 [-0.040, +0.020], p = 0.600 |" in s
    assert "| FC head (frozen) | n/a |" in s
    # two seeds, a comparison without the seed mean: its interval is bounded from the seeds' own. Each seed's
    # interval above 0 and p 0.010 (5 of 1000 replicates at or below 0 each): at most 10 of the mean's, fewer
    # than the rank 25 of its low end: above 0. p 0.024 each (12 + 12 = 24): still; 0.024 and 0.026 (12 + 13 = 25,
    # which may be the 25th replicate itself): not shown; 0.026 each (13 + 13): not shown.
    first = comp["seeds"]["linear"]["per_seed"][0]
    comp["seeds"]["linear"]["per_seed"] = [first, {**first, "seed": 1}]
    for lo, p0, p1, want in ((0.02, 0.01, 0.01, True), (-0.01, 0.01, 0.01, False), (0.02, 0.024, 0.024, True),
                             (0.02, 0.024, 0.026, False), (0.02, 0.026, 0.026, False)):
        for row in comp["seeds"]["linear"]["per_seed"]:
            row["multimodal_vs_shuffled"] = {**_delta(0.05, p1 if row["seed"] else p0),
                                             "delta_ci95": [lo if row["seed"] else 0.02, 0.08]}
        comp["seeds"]["seeds"] = [0, 1]
        (folder / "comparison.json").write_text(json.dumps(comp))
        t = build_block("targets", Metrics(folder))
        assert (f"seed-mean interval above 0 (2 seeds; bounded from each seed's interval and p) | +0.050 [+0.020, "
                f"+0.080], p = {p0:.3f} / +0.050 [{lo:+.3f}, +0.080], p = {p1:.3f} | "
                f"{'reached' if want else '**not reached**'} |") in t, (lo, p0, p1)
    # a comparison with the seed mean (compare's seed_mean): the target reads the mean's interval, whatever the
    # seeds' own intervals say (here seed 1's crosses 0)
    for lo in (0.004, -0.003):
        comp["seeds"]["linear"]["seed_mean"] = {"multimodal_vs_shuffled": {**_delta(0.05, 0.03), "delta_ci95": [lo, 0.09]}}
        (folder / "comparison.json").write_text(json.dumps(comp))
        m = Metrics(folder)
        t = build_block("targets", m)
        want = "reached" if lo > 0 else "**not reached**"
        assert (f"| linear probe: multimodal - shuffled > 0, seed-mean interval above 0 (2 seeds) | +0.050 [{lo:+.3f}, "
                f"+0.090], p = 0.030; seeds +0.050 / +0.050 | {want} |") in t
        assert "every seed's interval" not in t


def test_benchmark_blocks_read_the_committed_logs(tmp_path):
    bench = tmp_path / "bench"
    m = Metrics(tmp_path / "metrics", bench=bench)
    assert "benchmarks/results/recipe_search-demo.jsonl is missing" in build_block("recipes", m)
    bench.mkdir()
    row = {"recipe": "infonce", "variant": "multimodal", "overrides": {"loss.kind": "infonce"}, "probe": 0.7,
           "zeroshot": 0.5, "retrieval": {"R@10": 0.2, "chance@10": 0.1, "P@10": 0.4, "P@10_prior": 0.3},
           "clipped_share": {"total": 0.8}}
    lines = [row, {**row, "seed": 1, "probe": 0.8}, {**row, "recipe": "base", "overrides": {}, "probe": 0.6}]
    (bench / "recipe_search-demo.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    r = build_block("recipes", Metrics(tmp_path / "metrics", bench=bench))
    assert "| infonce | multimodal | 2 | loss.kind infonce | 0.750 | 0.500 | 0.200 | 0.100 | 0.400 | 0.300 | 0.800 |" in r
    assert "| base | multimodal | 1 | params as committed then | 0.600 |" in r
    rows = [{"pooling": p, "layer": k, "probe_validate_mauc": 0.9, "zeroshot_raw_validate_mauc": 0.5 + k / 100,
             "zeroshot_centred_validate_mauc": 0.6 - abs(k - 3) / 100, "pair_cos_centred": {"a": 0.8, "b": 0.6}}
            for p in ("last", "mean") for k in range(0, 9)]
    (bench / "text_diagnosis-demo.json").write_text(json.dumps({"rows": rows, "n_train": 10, "n_validate": 5,
                                                                "quantization": "fp32"}))
    d = build_block("text_diagnosis", Metrics(tmp_path / "metrics", bench=bench))
    assert "| last | 3 (best zero-shot) | 0.900 | 0.530 | 0.600 | 0.700 |" in d
    assert "| mean | 8 | 0.900 | 0.580 | 0.550 | 0.700 |" in d and "| last | 0 |" not in d and "| last | 5 |" not in d


def test_the_three_seed_experiment_blocks_read_their_own_folder(tmp_path):
    bench = tmp_path / "bench"
    m = Metrics(write_metrics(tmp_path / "metrics"), bench=bench)
    assert "demo-3seeds/comparison.json is missing" in build_block("seeds_comparison", m)
    run = write_metrics(bench / "demo-3seeds", seeds=(0, 1, 2))
    comp = json.loads((run / "comparison.json").read_text())
    for k, row in enumerate(comp["seeds"]["linear"]["per_seed"]):
        row["multimodal_vs_shuffled"] = _delta(0.01 * (k + 1), 0.3)
    comp["seeds"]["linear"]["multimodal_vs_shuffled"] = {"n": 3, "mean": 0.02, "sd": 0.01, "min": 0.01, "max": 0.03}
    (run / "comparison.json").write_text(json.dumps(comp))
    assert "seeds 0 / 1 / 2" in build_block("seeds_comparison", m)  # leads with the spread
    assert "multimodal - mae > 0 on every seed (3)" in build_block("seeds_targets", m)
    sh = build_block("seeds_shuffled", m)
    assert "| linear probe | +0.010 [-0.020, +0.040], p = 0.300 / +0.020" in sh and "+0.020 (sd 0.010" in sh
    assert "| FC head (frozen) | n/a | n/a |" in sh and "seed mean" not in sh  # written before the seed mean
    comp["seeds"]["linear"]["seed_mean"] = {"multimodal_vs_shuffled": _delta(0.02, 0.04)}
    (run / "comparison.json").write_text(json.dumps(comp))
    sh = build_block("seeds_shuffled", m)
    assert "| seed mean [95% CI], p |" in sh and "+0.020 (sd 0.010; +0.010 to +0.030) | +0.020 [" in sh
    assert "| FC head (frozen) | n/a | n/a | n/a |" in sh


@pytest.mark.parametrize("prefix, folder", [("bench", "bench-sentences"), ("bench_patch12", "bench-patch12")])
def test_the_bench_profile_blocks_read_their_own_folder(tmp_path, prefix, folder):
    """<prefix>_comparison / _targets / _shuffled read benchmarks/results/<folder> (the bench run with today's
    defaults; the one with patch 12), never the demo's data/metrics nor the other bench run."""
    bench = tmp_path / "bench"
    m = Metrics(write_metrics(tmp_path / "metrics"), bench=bench)
    assert f"{folder}/comparison.json is missing" in build_block(f"{prefix}_comparison", m)
    run = write_metrics(bench / folder)
    other = write_metrics(bench / ({"bench-sentences", "bench-patch12"} - {folder}).pop())
    comp = json.loads((run / "comparison.json").read_text())
    comp["linear"]["delta_mauc"] = 0.4321  # a value neither the demo's folder nor the other run holds
    (run / "comparison.json").write_text(json.dumps(comp))
    assert "+0.432" in build_block(f"{prefix}_comparison", m) and "+0.432" not in build_block("comparison", m)
    other_prefix = "bench_patch12" if prefix == "bench" else "bench"
    assert other.is_dir() and "+0.432" not in build_block(f"{other_prefix}_comparison", m)
    assert "zero-shot mAUC >= 0.65" in build_block(f"{prefix}_targets", m)
    comp["seeds"]["linear"]["multimodal_vs_shuffled"] = {"n": 3, "mean": 0.0771, "sd": 0.01, "min": 0.07, "max": 0.08}
    (run / "comparison.json").write_text(json.dumps(comp))
    assert "+0.077 (sd 0.010" in build_block(f"{prefix}_shuffled", m)
    assert "+0.077" not in build_block("seeds_shuffled", m)


def test_the_two_step_block_reads_its_run_beside_the_joint_reference(tmp_path):
    """two_step: multimodal of the joint reference run of the same encoder (patch 12: the committed
    demo-3seeds-patch12, never data/metrics) beside the two-step run's multimodal, continued and their deltas
    (benchmarks/results/demo-two-step)."""
    bench = tmp_path / "bench"
    m = Metrics(write_metrics(tmp_path / "metrics"), bench=bench)
    assert "demo-two-step/comparison.json is missing" in build_block("two_step", m)
    run = write_metrics(bench / "demo-two-step")
    comp = json.loads((run / "comparison.json").read_text())
    comp["linear"]["multimodal"]["mauc"] = 0.6543
    comp["references"]["linear"]["continued"] = {"mauc": 0.6111, "mauc_ci95": [0.55, 0.66]}
    comp["references"]["linear"]["multimodal_vs_continued"] = _delta(0.0432, 0.001)
    comp["references"]["linear"]["continued_vs_mae"] = _delta(-0.0123, 0.4)
    (run / "comparison.json").write_text(json.dumps(comp))
    assert "demo-3seeds-patch12/comparison.json is missing" in build_block("two_step", m)
    joint_run = write_metrics(bench / "demo-3seeds-patch12")
    comp = json.loads((joint_run / "comparison.json").read_text())
    comp["linear"]["multimodal"]["mauc"] = 0.7777
    (joint_run / "comparison.json").write_text(json.dumps(comp))
    row = next(line for line in build_block("two_step", m).splitlines() if line.startswith("| linear probe"))
    assert Metrics(tmp_path / "metrics").mauc("linear", "multimodal").value != 0.7777
    assert row.split(" | ")[1].startswith("0.778") and row.split(" | ")[2].startswith("0.654")
    assert "0.611 [0.550, 0.660]" in row and "**+0.043" in row and "-0.012" in row


@pytest.mark.parametrize("block, folder", [("text_layers", "text-layers"), ("bench_text_layers", "bench-text-layers")])
def test_the_text_layer_block_groups_seeds_by_layer(tmp_path, block, folder):
    """text_layers: one row per embed.layer, the mean over its seeds then each seed, that layer's stage-one
    speed from its own embed report (benchmarks/results/text-layers; the bench profile's in its own folder)."""
    bench = tmp_path / "bench"
    m = Metrics(tmp_path / "metrics", bench=bench)
    assert f"{folder}/recipes.jsonl is missing" in build_block(block, m)
    (bench / folder).mkdir(parents=True)
    rows = [{"recipe": "default", "variant": "multimodal", "seed": s, "embed_layer": layer, "probe": p,
             "zeroshot": 0.6, "retrieval": {"R@10": 0.2, "chance@10": 0.1, "P@10": 0.5, "P@10_prior": 0.3}}
            for layer, probes in ((-1, (0.70, 0.72, 0.74)), (15, (0.80, 0.81, 0.85))) for s, p in zip((2, 0, 1), probes)]
    (bench / folder / "recipes.jsonl").write_text("\n".join(map(json.dumps, rows)) + "\n")
    for layer, tps in ((-1, 580.0), (15, 1160.0)):
        (bench / folder / f"embed-layer{layer}.json").write_text(json.dumps({"tokens_per_second": tps}))
    out = build_block(block, m).splitlines()
    last, mid = next(r for r in out if r.startswith("| -1 ")), next(r for r in out if r.startswith("| 15 "))
    assert "| 580 | 0, 1, 2 |" in last and "0.720 (0.720 / 0.740 / 0.700)" in last  # mean, then seeds 0 / 1 / 2
    assert "| 1160 |" in mid and "0.820 (0.810 / 0.850 / 0.800)" in mid


@pytest.mark.parametrize("block, log", [("projectors", "projectors/recipes.jsonl"),
                                        ("encoders_multimodal", "encoders/multimodal.jsonl")])
def test_the_recipe_seed_blocks_group_seeds_by_recipe(tmp_path, block, log):
    """projectors (and the chosen encoder under multimodal): one row per recipe in log order, its overrides,
    the mean over its seeds then each seed."""
    bench = tmp_path / "bench"
    m = Metrics(tmp_path / "metrics", bench=bench)
    assert f"{log} is missing" in build_block(block, m)
    (bench / log).parent.mkdir(parents=True)
    rows = [{"recipe": name, "variant": "multimodal", "seed": s, "overrides": over, "probe": p, "zeroshot": z,
             "retrieval": {"R@10": 0.2, "chance@10": 0.1, "P@10": 0.5, "P@10_prior": 0.3}}
            for name, over, z in (("default", {}, 0.5), ("proj_dim64", {"pool.dim": 64}, 0.6))
            for s, p in zip((1, 0, 2), (0.70, 0.72, 0.77))]
    (bench / log).write_text("\n".join(map(json.dumps, rows)) + "\n")
    out = build_block(block, m).splitlines()
    default, dim = next(r for r in out if r.startswith("| default ")), next(r for r in out if r.startswith("| proj_dim64 "))
    assert out.index(default) < out.index(dim)
    assert "| base params | 0, 1, 2 | 0.730 (0.720 / 0.700 / 0.770) | 0.500 (0.500 / 0.500 / 0.500) |" in default
    assert "| pool.dim 64 | 0, 1, 2 |" in dim and "| 0.600 (0.600 / 0.600 / 0.600) | 0.200 (" in dim


def test_the_encoder_block_sets_each_recipe_beside_the_pixels(tmp_path):
    """encoders: the mae probe per recipe (mean, then each seed in seed order), its mean pretraining time, and
    a last row with the 32 px pixels reference."""
    bench = tmp_path / "bench"
    m = Metrics(tmp_path / "metrics", bench=bench)
    assert "encoders/recipes.jsonl is missing" in build_block("encoders", m)
    (bench / "encoders").mkdir(parents=True)
    rows = [{"recipe": "patch8", "variant": "mae", "seed": s, "overrides": {"model.patch_size": 8}, "probe": p,
             "seconds": t} for s, p, t in ((1, 0.70, 300.0), (0, 0.66, 340.0))]
    (bench / "encoders" / "recipes.jsonl").write_text("\n".join(map(json.dumps, rows)) + "\n")
    assert "encoders/pixels.json is missing" in build_block("encoders", m)
    (bench / "encoders" / "pixels.json").write_text(json.dumps({"pixels32_probe_validate": 0.777}))
    out = build_block("encoders", m)
    assert "| patch8 | model.patch_size 8 | 0, 1 | 0.680 (0.660 / 0.700) | 320 |" in out
    assert "| _pixels_ | logistic regression on 32 px raw pixels |  | 0.777 |  |" in out


def test_the_stage_times_block_sets_the_runs_side_by_side(tmp_path):
    """stage_times: every committed timed run a column, in STAGE_TIME_RUNS' order; a stage missing from a run
    says so; skipped stages are left out."""
    bench = tmp_path / "bench"
    m = Metrics(tmp_path / "metrics", bench=bench)
    assert "stage-times/before.json is missing" in build_block("stage_times", m)
    (bench / "stage-times").mkdir(parents=True)

    def run(walls: dict, total: float, imp: float = 1.5) -> dict:
        return {"wall_s": total, "import_s": 9.0, "dvc_overhead_s": 3.0,
                "stages": [{"name": n, "status": "ran", "wall_s": w, "import_s": imp} for n, w in walls.items()]
                + [{"name": "skipped-one", "status": "skipped", "wall_s": 0.0, "import_s": 0.0}]}

    (bench / "stage-times" / "before.json").write_text(json.dumps(run({"embed": 120.0, "gone": 5.0}, 900.0)))
    (bench / "stage-times" / "after.json").write_text(json.dumps(run({"embed": 60.25, "new": 7.0}, 450.0)))
    assert "stage-times/patch8.json is missing" in build_block("stage_times", m)
    (bench / "stage-times" / "patch8.json").write_text(json.dumps(run({"embed": 61.0, "new": 9.5}, 700.0, 2.5)))
    assert "stage-times/sentences.json is missing" in build_block("stage_times", m)
    (bench / "stage-times" / "sentences.json").write_text(json.dumps(run({"embed": 59.0, "new": 9.0}, 650.0, 2.0)))
    out = build_block("stage_times", m)
    assert "| stage | wall s, before | wall s, after | wall s, patch 8 | wall s, sentence term | import s, before |" in out
    assert "| embed | 120.0 | 60.2 | 61.0 | 59.0 | 1.5 | 1.5 | 2.5 | 2.0 |" in out
    assert "| gone | 5.0 | not run | not run | not run |" in out and "| new | not run | 7.0 | 9.5 | 9.0 |" in out
    assert "skipped-one" not in out and "**900** | **450** | **700** | **650** |" in out


def test_the_demo_time_sentence_reads_the_timed_run(tmp_path):
    bench = tmp_path / "bench"
    m = Metrics(tmp_path / "metrics", bench=bench)
    assert "stage-times/sentences.json is missing" in build_block("demo_time", m)  # the latest timed run
    (bench / "stage-times").mkdir(parents=True)
    (bench / "stage-times" / "patch8.json").write_text(json.dumps({"wall_s": 60.0, "stages_run": 1}))
    (bench / "stage-times" / "sentences.json").write_text(json.dumps({"wall_s": 1488.4, "stages_run": 40}))
    out = build_block("demo_time", m)
    assert "took **25 min** (40 stages" in out


def test_the_before_blocks_read_their_own_committed_runs(tmp_path):
    """patch12_targets reads the earlier encoder's three-seed run, never data/metrics; bench_encoders its own log."""
    bench = tmp_path / "bench"
    m = Metrics(write_metrics(tmp_path / "metrics"), bench=bench)
    assert "demo-3seeds-patch12/zeroshot-multimodal.json is missing" in build_block("patch12_targets", m)
    assert "bench-encoders/multimodal.jsonl is missing" in build_block("bench_encoders", m)


def _prompt_rows(dataset: str, sets: dict[str, tuple[float, ...]], seeds: tuple[int, ...]) -> list[dict]:
    """benchmarks/zeroshot_prompts.py log rows: per set, one row per seed with its mAUC and two labels' AUROCs
    (Edema at the mAUC, Fracture at 1 - mAUC; Fracture scored on seed 0 only when ``dataset`` is bench)."""
    return [{"dataset": dataset, "set": name, "seed": s, "zeroshot": z,
             "per_label": {"Edema": z, **({"Fracture": 1 - z} if dataset == "demo" or s == 0 else {})}}
            for name, zs in sets.items() for s, z in zip(seeds, zs)]


def test_the_prompt_blocks_set_each_prompt_set_beside_on_both_data_sets(tmp_path):
    """zeroshot_prompts: one row per prompt set in log order, each data set's seeds and mean then each seed's
    (seed order); a set one data set did not run says so. zeroshot_prompt_labels: per data set, the labels
    every run scored, each set's mean AUROC over the seeds."""
    bench = tmp_path / "bench"
    m = Metrics(tmp_path / "metrics", bench=bench)
    assert "zeroshot-prompts/demo.jsonl is missing" in build_block("zeroshot_prompts", m)
    (bench / "zeroshot-prompts").mkdir(parents=True)
    demo = _prompt_rows("demo", {"default": (0.60, 0.56, 0.64), "terse": (0.70, 0.66, 0.68)}, (1, 0, 2))
    (bench / "zeroshot-prompts" / "demo.jsonl").write_text("\n".join(map(json.dumps, demo)) + "\n")
    assert "zeroshot-prompts/bench.jsonl is missing" in build_block("zeroshot_prompts", m)
    real = _prompt_rows("bench", {"default": (0.76, 0.74)}, (0, 1))
    (bench / "zeroshot-prompts" / "bench.jsonl").write_text("\n".join(map(json.dumps, real)) + "\n")
    out = build_block("zeroshot_prompts", m).splitlines()
    default, terse = next(r for r in out if r.startswith("| default ")), next(r for r in out if r.startswith("| terse "))
    assert out.index(default) < out.index(terse)
    assert default == "| default | 0, 1, 2 | 0.600 (0.560 / 0.600 / 0.640) | 0, 1 | 0.750 (0.760 / 0.740) |"
    assert terse == "| terse | 0, 1, 2 | 0.680 (0.660 / 0.700 / 0.680) |  | not run |"
    labels = build_block("zeroshot_prompt_labels", m)
    demo_part, bench_part = labels.split("Bench")
    assert "Demo, seeds 0, 1, 2:" in demo_part and "| label | default | terse |" in demo_part
    assert "| Edema | 0.600 | 0.680 |" in demo_part and "| Fracture | 0.400 | 0.320 |" in demo_part
    assert "| Edema | 0.750 |" in bench_part and "Fracture" not in bench_part  # not scored on every bench run
    one = _prompt_rows("bench", {"default": (0.76,)}, (0,))
    (bench / "zeroshot-prompts" / "bench.jsonl").write_text("\n".join(map(json.dumps, one)) + "\n")
    assert "Bench (real report text), seed 0:" in build_block("zeroshot_prompt_labels", m)


def test_the_bench_targets_by_seed_set_each_single_seed_run_side_by_side(tmp_path):
    """bench_targets_by_seed: one column per committed single-seed run (seed 0's folder, seed 1's, seed 2's), each cell
    that run's own number and verdict; the last column says "**no**" when one run misses a target."""
    bench = tmp_path / "bench"
    m = Metrics(write_metrics(tmp_path / "metrics"), bench=bench)
    assert "bench-sentences/zeroshot-multimodal.json is missing" in build_block("bench_targets_by_seed", m)
    seed0, seed1 = write_metrics(bench / "bench-sentences"), write_metrics(bench / "bench-sentences-seed1")
    assert "bench-sentences-seed2/" in build_block("bench_targets_by_seed", m)  # every run's folder is read
    write_metrics(bench / "bench-sentences-seed2")
    comp = json.loads((seed1 / "comparison.json").read_text())
    comp["seeds"]["linear"]["per_seed"][0]["delta_mauc"] = -0.0123  # seed 1's multimodal - mae < 0, linear probe
    (seed1 / "comparison.json").write_text(json.dumps(comp))
    b = build_block("bench_targets_by_seed", m)
    assert "| target (test split) | seed 0 | seed 1 | seed 2 | reached in all 3 |" in b
    row = next(line for line in b.splitlines() if line.startswith("| linear probe: multimodal - mae > 0 |"))
    assert "-0.012 (**not reached**)" in row and row.endswith("| **no** |") and seed0.is_dir()
    fc = next(line for line in b.splitlines() if line.startswith("| FC head (frozen): multimodal - mae > 0 |"))
    assert fc.endswith("| yes |")


def test_the_reproduce_block_reads_the_joint_runs_check(tmp_path):
    """bench_3seeds_reproduce: joint_seeds.py's reproduce.json as a table, one row per file compared."""
    bench = tmp_path / "bench"
    m = Metrics(write_metrics(tmp_path / "metrics"), bench=bench)
    assert "bench-3seeds/reproduce.json is missing" in build_block("bench_3seeds_reproduce", m)
    (bench / "bench-3seeds").mkdir(parents=True)
    rep = {"pretrain-mae.json": {"numbers": 92, "differ": 9, "max_abs_diff": 0.00523, "only_in_one": 0,
                                 "first_differences": ["final.loss", "clipped_share", "a", "b"]},
           "zeroshot-mae.json": {"numbers": 40, "differ": 0, "max_abs_diff": 0.0, "only_in_one": 0,
                                 "first_differences": []}}
    (bench / "bench-3seeds" / "reproduce.json").write_text(json.dumps(rep))
    b = build_block("bench_3seeds_reproduce", m)
    assert "| `pretrain-mae.json` | 92 | 9 | 0.00523 | `final.loss`, `clipped_share`, `a` |" in b
    assert "| `zeroshot-mae.json` | 40 | 0 | 0 | none |" in b


def test_the_fresh_demo_block_sets_the_fresh_run_beside_the_metrics_it_is_given(tmp_path):
    """fresh_demo_targets: the targets of the metrics folder itself (the committed reference) beside the committed
    fresh-clone run's; a target the fresh run misses is "**no**" in the last column."""
    bench = tmp_path / "bench"
    m = Metrics(write_metrics(tmp_path / "metrics"), bench=bench)
    assert "fresh-demo-zen5/" in build_block("fresh_demo_targets", m)
    fresh = write_metrics(bench / "fresh-demo-zen5")
    z = json.loads((fresh / "zeroshot-multimodal.json").read_text())
    z.update(mauc=0.7123, mauc_ci95=[0.68, 0.74])  # reached in the fresh run only
    (fresh / "zeroshot-multimodal.json").write_text(json.dumps(z))
    b = build_block("fresh_demo_targets", m)
    assert "| target (test split) | committed reference | fresh clone | reached in all 2 |" in b
    assert ("| zero-shot mAUC >= 0.65, interval above 0.5 | 0.505 [0.455, 0.555] (**not reached**) | "
            "0.712 [0.680, 0.740] (reached) | **no** |") in b


def test_the_small_demo_block_adds_back_the_stages_it_did_not_rerun(tmp_path):
    """small_demo: its pipeline wall, the stages it skipped with their wall in the latest full timed run (added for
    the from-scratch estimate), and its targets beside the committed reference's."""
    bench = tmp_path / "bench"
    m = Metrics(write_metrics(tmp_path / "metrics"), bench=bench)
    assert "demo-small/stage-times.json is missing" in build_block("small_demo", m)
    small = write_metrics(bench / "demo-small")
    (small / "stage-times.json").write_text(json.dumps({
        "wall_s": 500.4, "stages_run": 35, "stages_skipped": ["text_model@text-model", "random_encoder"],
        "stages_cached": [], "stages": []}))
    (bench / "stage-times").mkdir()
    (bench / "stage-times" / "sentences.json").write_text(json.dumps({"stages": [
        {"name": "text_model@text-model", "status": "ran", "wall_s": 18.8},
        {"name": "random_encoder", "status": "ran", "wall_s": 4.1}, {"name": "embed", "status": "ran", "wall_s": 88.6}]}))
    b = build_block("small_demo", m)
    assert ("Pipeline wall 500 s for the 35 stages it ran; not rerun (their inputs unchanged by the two params): "
            "`text_model@text-model`, `random_encoder`, 23 s in the `sentence term` run above, so about 523 s from "
            "scratch.") in b
    assert "| target (test split) | committed reference | smaller demo | reached in all 2 |" in b
