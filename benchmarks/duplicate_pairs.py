"""Off-diagonal positive pairs per pretraining batch: two images of one study, or two studies whose cleaned
report text is identical (one text.h5 row). Eq. 1 treats them as positives and InfoNCE masks them; this
counts how many a batch holds.

For groups of sizes k_g among N items, a uniformly drawn batch of B holds on average
sum_g C(k_g, 2) x B (B - 1) / (N (N - 1)) pairs of one group (:func:`cxrpipe.pretrain.data.expected_pairs`).

    # measured on a prepared data set (train split, the pretrain views), beside the closed form
    python benchmarks/duplicate_pairs.py prepared [--prepared data/prepared] [--text-cache data/cache/text.h5]
    # MIMIC-CXR estimate under stated assumptions (see --help and docs/pretrain-loss.md)
    python benchmarks/duplicate_pairs.py mimic [--top-copies 1000 3000 10000] [--batch-size 256]
"""

from __future__ import annotations

import argparse
import json
import math

from cxrpipe.pretrain.data import expected_pairs


def from_prepared(args: argparse.Namespace) -> dict:
    from cxrpipe.config import load_params, section
    from cxrpipe.pretrain.data import batch_duplicate_pairs, find_pairs, group_sizes
    from cxrpipe.pretrain.train import PretrainConfig
    from cxrpipe.text.cache import TextCache

    cfg = section(load_params(args.params), "pretrain", PretrainConfig)
    batch = args.batch_size or cfg.batch_size
    pairs = find_pairs(args.prepared, TextCache(args.text_cache), "train", cfg.data.views)
    g = group_sizes(pairs)
    measured = batch_duplicate_pairs(pairs, batch, cfg.seed, cfg.epochs)
    return {
        "items": len(pairs),
        "studies": len(g["same_study"]),
        "text_rows": len(g["same_text"]),
        "largest_text_groups": g["same_text"][:5],
        "studies_with_2plus_images": sum(k > 1 for k in g["same_study"]),
        "batch_size": batch,
        "epochs": cfg.epochs,
        "expected_per_batch": measured["expected_per_batch"],
        "measured_mean_per_batch": measured["mean_per_batch"],
    }


def mimic(args: argparse.Namespace) -> dict:
    """Assumptions (flags): ``studies`` train studies with a report, each with 1 or 2 frontal images so that
    the mean is ``frontal_per_study``; exact-duplicate cleaned reports follow a Zipf law, the r-th commonest
    text occurring ``top_copies / r**zipf`` times (down to 2 copies); a duplicated study's images count like any
    study's (mean frontal_per_study each)."""
    s, m, b = args.studies, args.frontal_per_study, args.batch_size
    n = round(s * m)
    second = s * (m - 1)  # studies with a second frontal image: one same-study pair each
    out = {"assumptions": {"train_studies": s, "frontal_per_study": m, "images": n, "batch_size": b,
                           "zipf_exponent": args.zipf}, "same_study_per_batch": expected_pairs([2] * round(second), n, b)}
    scenarios = {}
    for top in args.top_copies:
        copies = [c for r in range(1, top + 1) if (c := math.floor(top / r**args.zipf)) >= 2]
        study_pairs = sum(c * (c - 1) / 2 for c in copies)
        image_pairs = study_pairs * m * m  # each pair of studies: m x m image pairs on average
        per_batch = image_pairs * b * (b - 1) / (n * (n - 1))
        top_only = copies[0] * (copies[0] - 1) / 2 * m * m * b * (b - 1) / (n * (n - 1))
        scenarios[str(top)] = {
            "duplicate_texts": len(copies),
            "studies_in_them": sum(copies),
            "same_text_per_batch": round(per_batch, 3),
            "of_which_commonest_text": round(top_only, 3),
            "false_negatives_per_anchor_naive": round(2 * per_batch / b, 4),
        }
    out["same_text_by_top_copies"] = scenarios
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="mode", required=True)
    a = sub.add_parser("prepared", help="measure on data/prepared + the text cache (train split)")
    a.add_argument("--prepared", default="data/prepared")
    a.add_argument("--text-cache", default="data/cache/text.h5")
    a.add_argument("--params", default="params.yaml")
    a.add_argument("--batch-size", type=int, default=0, help="0 = pretrain.batch_size")
    m = sub.add_parser("mimic", help="closed-form MIMIC-CXR estimate under the stated assumptions")
    m.add_argument("--studies", type=int, default=222_758, help="train studies (MIMIC-CXR-JPG split)")
    m.add_argument("--frontal-per-study", type=float, default=1.15, help="mean AP/PA images per study (1.1-1.2)")
    m.add_argument("--top-copies", type=int, nargs="+", default=[1000, 3000, 10000],
                   help="copies of the commonest cleaned report text (an ASSUMPTION; scenarios)")
    m.add_argument("--zipf", type=float, default=1.0, help="r-th commonest text: top_copies / r**zipf copies")
    m.add_argument("--batch-size", type=int, default=256)
    args = p.parse_args()
    print(json.dumps(from_prepared(args) if args.mode == "prepared" else mimic(args), indent=2))


if __name__ == "__main__":
    main()
