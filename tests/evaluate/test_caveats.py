"""comparison.md's own caveats: chance intervals, encoders below references, low-positive labels."""

from __future__ import annotations

import numpy as np

from cxrpipe.evaluate.stats.caveats import caveat_section, interval_caveats, low_positive_caveat, mauc_entries
from cxrpipe.evaluate.stats.plots import roc_title


def entry(m, lo, hi):
    return {"mauc": m, "mauc_ci95": [lo, hi], "accuracy": 0.9}


def test_interval_covering_chance_is_flagged_and_a_clear_one_is_not():
    result = {"linear": {"mae": entry(0.501, 0.45, 0.554), "multimodal": entry(0.636, 0.588, 0.683),
                         "delta_mauc": 0.135, "delta_ci95": [0.06, 0.21]}}
    lines = interval_caveats(result)
    assert len(lines) == 1 and "mae, linear" in lines[0] and "covers 0.5" in lines[0]


def test_below_a_reference_wherever_the_references_are_kept():
    """References nested per protocol, under a top-level key, or named like one beside the encoders."""
    enc = {"mae": entry(0.60, 0.56, 0.64), "multimodal": entry(0.70, 0.66, 0.74)}
    layouts = [
        {"linear": {**enc, "references": {"random-init": entry(0.65, 0.61, 0.69)}}},
        {"linear": enc, "references": {"linear": {"random-init": entry(0.65, 0.61, 0.69)}}},
        {"linear": {**enc, "pixels": entry(0.65, 0.61, 0.69)}},
    ]
    for result in layouts:
        refs = [name for _, name, is_ref, _ in mauc_entries(result) if is_ref]
        assert len(refs) == 1, result
        lines = interval_caveats(result)
        assert len(lines) == 1 and "mae, linear" in lines[0] and f"**{refs[0]}**" in lines[0]
        assert "intervals overlap" in lines[0]
    far = {"linear": {"mae": entry(0.55, 0.52, 0.58), "pixels": entry(0.72, 0.69, 0.75)}}
    assert "do not overlap" in interval_caveats(far)[0]
    other_protocol = {"linear": enc, "references": {"finetune": {"random-init": entry(0.9, 0.88, 0.92)}}}
    assert interval_caveats(other_protocol) == []
    # compare keeps pixels both protocol-free and per protocol: one warning per encoder, not two
    both = {"linear": enc, "references": {"pixels": entry(0.8, 0.77, 0.83), "linear": {"pixels": entry(0.8, 0.77, 0.83)}}}
    assert len([x for x in interval_caveats(both) if "**mae, linear**" in x]) == 1


def test_low_positive_labels_are_named_with_counts_and_the_section_is_always_there():
    block = {"labels_low_positive": ["Pleural Other"], "min_test_positives": 10,
             "per_label": [{"label": "Pleural Other", "n_pos": 4}]}
    line = low_positive_caveat({"mae-linear": {"study": block}}, "study")[0]
    assert "fewer than 10 test positives" in line and "Pleural Other (4 positives)" in line
    clean = {"linear": {"mae": entry(0.8, 0.75, 0.85)}}
    lines = caveat_section(clean, {"mae-linear": {"study": {"labels_low_positive": [], "min_test_positives": 10}}},
                           "study")
    assert lines[0].startswith("## Caveats") and "No automatic check fired" in lines[2]


def test_roc_title_gives_positive_counts_and_flags_low_ones():
    targets = np.zeros((20, 2), dtype=np.float32)
    targets[:4, 0] = 1.0
    targets[:12, 1] = 1.0
    mask = np.ones_like(targets, dtype=bool)
    mask[19, 0] = False
    runs = {"mae-linear": (targets, targets, mask)}
    assert roc_title("Pleural Other", " (study level, test)", runs, 0, 10) == (
        "Pleural Other (study level, test)\n4 positives / 19: fewer than 10, not in mAUC"
    )
    assert roc_title("Edema", "", runs, 1, 10) == "Edema\n12 positives / 20"


def test_roc_plots_one_colour_per_encoder_one_style_per_protocol():
    """No two runs of a plot are drawn alike (random-fc used to be drawn exactly as mae-fc); an encoder keeps its
    colour across protocols and a protocol its style across encoders."""
    from cxrpipe.evaluate.stats.plots import run_style

    runs = [f"{e}-{p}" for e in ("mae", "multimodal", "random") for p in ("fc", "linear", "finetune")] + ["pixels"]
    styles = {r: run_style(r) for r in runs}
    assert len(set(styles.values())) == len(runs)
    for e in ("mae", "multimodal", "random"):
        assert len({styles[f"{e}-{p}"][0] for p in ("fc", "linear", "finetune")}) == 1
    for p in ("fc", "linear", "finetune"):
        assert len({styles[f"{e}-{p}"][1] for e in ("mae", "multimodal", "random")}) == 1
