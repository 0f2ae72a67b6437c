"""Zero-shot prompt phrasings on VALIDATE (issue 19): does the wording of the prompts move zero-shot, and does
any wording win on both data sets?

Each prompt set of ``--grid`` (``benchmarks/recipes/prompts.yaml``: every CheXpert label's [positive,
negative] pair; ``default: params`` is params.yaml's ``zeroshot.prompts``) goes through stage one's code path
(:func:`cxrpipe.text.prompts.write_prompt_cache`: the same frozen LM, quantization, layer and prompt suffix as
the reports, from ``--params``) into a prompt cache of its own under ``--work``. Every exported encoder given
with ``--model SEED=DIR`` (a multimodal variant with its text head) then scores the VALIDATE images against
each set exactly as the ``zeroshot`` stage does (the pair's score difference; test is never read), and the
image-level mAUC over the labels with >= 5 validate positives and negatives is logged, per label too, by
``recipe_search.py``'s own rule (its ``label_aucs``). The row ``ensemble`` is CLIP's prompt ensembling over
all the sets: the mean of each label's pair difference over the sets.

    python benchmarks/zeroshot_prompts.py --grid benchmarks/recipes/prompts.yaml --dataset demo \
        --model 0=data/sweep/runs/multimodal-1b5dce5dc3ad/model --log data/sweep/prompts.jsonl
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `benchmarks.*` from any working directory
from benchmarks.recipe_search import label_aucs  # noqa: E402  (recipe_search's validate label rule, as logged there)


def prompt_sets(grid: Path, params: dict) -> dict[str, dict[str, list[str]]]:
    """The grid's sets, ``default: params`` read from the params' ``zeroshot.prompts``; each checked to give
    every CheXpert label a [positive, negative] pair (the zeroshot section's own check)."""
    from cxrpipe.evaluate.alignment.zeroshot import ZeroShotConfig

    sets = {}
    for name, spec in yaml.safe_load(grid.read_text()).items():
        prompts = params["zeroshot"]["prompts"] if spec == "params" else spec
        sets[name] = {k: list(v) for k, v in ZeroShotConfig(prompts=prompts).prompts.items()}
    return sets


def pair_differences(model_dir: Path, prepared: Path, caches: dict[str, Path], split) -> dict[str, np.ndarray]:
    """Per prompt set, score(positive) - score(negative) ``[N, L]`` of every image of ``split``."""
    from cxrpipe.data.image_cache import ImageCache
    from cxrpipe.evaluate.alignment.scorer import load_aligned, score_matrix
    from cxrpipe.labels import CHEXPERT_LABELS
    from cxrpipe.text.cache import TextCache

    model = load_aligned(model_dir)
    images = ImageCache(prepared / "images.h5")
    out = {}
    for name, path in caches.items():
        texts = TextCache(path)
        s = score_matrix(model, images, split.rows, texts, [texts.row_of(i) for i in range(2 * len(CHEXPERT_LABELS))])
        out[name] = s[:, 0::2] - s[:, 1::2]
    return out


def run(args) -> None:
    from cxrpipe.config import load_params, section
    from cxrpipe.data.prepare import DataConfig
    from cxrpipe.evaluate.probe.data import labelled_splits
    from cxrpipe.labels import CHEXPERT_LABELS, BlankPolicy, UncertainPolicy
    from cxrpipe.text.embed import EmbedConfig
    from cxrpipe.text.prompts import write_prompt_cache

    raw = load_params(args.params)
    sets = prompt_sets(args.grid, raw)
    embed, sections = section(raw, "embed", EmbedConfig), section(raw, "data", DataConfig).sections
    args.work.mkdir(parents=True, exist_ok=True)
    caches = {}
    for name, prompts in sets.items():
        caches[name] = args.work / f"prompts-{name}.h5"
        write_prompt_cache(embed, [t for n in CHEXPERT_LABELS for t in prompts[n]], caches[name], sections)
    va = labelled_splits(args.prepared, ("AP", "PA"), UncertainPolicy.IGNORE, BlankPolicy.ZEROS)["validate"]
    names = list(CHEXPERT_LABELS)
    args.log.parent.mkdir(parents=True, exist_ok=True)
    with args.log.open("a") as log:
        for spec in args.model:
            seed, model_dir = spec.split("=", 1)
            diffs = pair_differences(Path(model_dir), args.prepared, caches, va)
            diffs["ensemble"] = np.mean(list(diffs.values()), axis=0)
            for name, d in diffs.items():
                aucs = label_aucs(va.targets, d, va.mask, names)
                row = {"dataset": args.dataset, "set": name, "seed": int(seed), "model": model_dir,
                       "zeroshot": float(np.mean(list(aucs.values()))), "per_label": aucs,
                       "n_images": len(va.rows), "members": list(sets) if name == "ensemble" else [name]}
                log.write(json.dumps(row) + "\n")
                print(f"{args.dataset} seed {seed} {name:18s} zero-shot {row['zeroshot']:.3f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--prepared", type=Path, default=Path("data/prepared"))
    ap.add_argument("--grid", type=Path, default=Path("benchmarks/recipes/prompts.yaml"))
    ap.add_argument("--dataset", required=True, help="the data set's name in the log (demo, bench)")
    ap.add_argument("--model", nargs="+", required=True, help="SEED=DIR: an exported multimodal encoder")
    ap.add_argument("--work", type=Path, default=Path("data/sweep/prompts"), help="the prompt caches")
    ap.add_argument("--log", type=Path, default=Path("data/sweep/prompts.jsonl"))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run(ap.parse_args())


if __name__ == "__main__":
    main()
