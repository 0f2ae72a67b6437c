"""One compare over training seeds that ran as separate runs: the seed-mean interval of a profile.

    python benchmarks/joint_seeds.py --workspace /path/to/seed0-run \\
        --seed-run benchmarks/results/bench-sentences-seed1 --seed-run benchmarks/results/bench-sentences-seed2 \\
        --reference benchmarks/results/bench-sentences --out benchmarks/results/bench-3seeds

`dvc exp run -S 'compare.extra_seeds=[1,2]'` runs the seed repeats inside one workspace (the demo's three seeds).
A profile whose seeds ran one per workspace (the bench: ~2 h of 2 cores each) is joined here instead:

- ``--workspace``: a workspace where ``dvc repro`` ran the profile at its default seed (``data/metrics``,
  ``data/predictions``); its ``params.yaml`` gives the ``compare`` and ``stats`` sections. Its runs must share
  one training seed (their ``.config.json``'s ``encoder_seed``: checked), not one of the ``--seed-run``'s.
- ``--seed-run`` (repeatable): a committed run folder whose ``predictions/`` holds ``<run>-seed<k>.npz`` (the
  names the seed repeats write), e.g. a run made with ``pretrain.seed`` and ``finetune.seed`` set to k.
- ``--reference`` (optional): the committed metrics of an earlier run at the workspace's seed. Every number of
  its JSON files is compared with the workspace's own (durations and rates left out): a reproducibility check,
  printed and written as ``reproduce.json``.

Writes into ``--out``: ``comparison.json`` and ``comparison.md`` of ``cxrpipe compare`` with
``compare.extra_seeds`` set to the seeds found (the per-seed deltas, their spread and every seed's paired
interval on the same resampled test patients), and the workspace's zero-shot and retrieval metrics (the default
seed's), so that the run reads like ``data/metrics`` in ``cxrpipe results``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

SEED_FILE = re.compile(r"^(?P<run>.+)-seed(?P<seed>\d+)\.npz$")
TIMING = re.compile(r"seconds|per_second|_time|wall")  # keys whose values are durations or rates, not results
# the default seed's metrics the results blocks read besides (named, not globbed: a workspace cloned from this
# repository also holds the demo's committed metrics of stages its profile does not run, e.g. zeroshot-nih_cxr14-*)
CARRIED = tuple(f"{stage}-{encoder}{ext}" for stage in ("zeroshot", "retrieval") for encoder in ("mae", "multimodal")
                for ext in (".json", ".config.json"))


def numbers(node: Any, path: str = "") -> Iterator[tuple[str, float]]:
    """Every number of a JSON tree as (path, value), keys matching TIMING left out."""
    if isinstance(node, dict):
        for k, v in node.items():
            if not TIMING.search(str(k)):
                yield from numbers(v, f"{path}.{k}" if path else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from numbers(v, f"{path}[{i}]")
    elif isinstance(node, (int, float)) and not isinstance(node, bool):
        yield path, float(node)


def compare_trees(a: Any, b: Any) -> dict[str, Any]:
    """How two JSON trees' numbers differ: counts, the largest absolute difference and where the first ones are."""
    na, nb = dict(numbers(a)), dict(numbers(b))
    shared = sorted(set(na) & set(nb))
    diff = [(p, abs(na[p] - nb[p])) for p in shared
            if not (na[p] == nb[p] or (math.isnan(na[p]) and math.isnan(nb[p])))]
    return {"numbers": len(shared), "differ": len(diff), "max_abs_diff": max((d for _, d in diff), default=0.0),
            "only_in_one": len(set(na) ^ set(nb)), "first_differences": [p for p, _ in diff[:10]]}


def reproduce(reference: Path, metrics: Path) -> dict[str, dict[str, Any]]:
    """compare_trees for every JSON file of ``reference`` that ``metrics`` also has and that holds a number."""
    out = {}
    for ref in sorted(reference.glob("*.json")):
        mine = metrics / ref.name
        if mine.exists() and (found := compare_trees(json.loads(ref.read_text()), json.loads(mine.read_text())))["numbers"]:
            out[ref.name] = found  # files without a number (the .config.json strings) left out
    return out


def gather(workspace_predictions: Path, seed_runs: list[Path], into: Path) -> tuple[tuple[int, ...], list[str]]:
    """The workspace's default-seed predictions and every seed run's ``*-seed<k>.npz``, linked into ``into``;
    returns the seeds found and the workspace's runs linked. A seed given twice, or a seed run without
    predictions, is an error."""
    into.mkdir(parents=True, exist_ok=True)
    own = [f for f in sorted(workspace_predictions.glob("*.npz")) if not SEED_FILE.match(f.name)]
    for f in own:
        (into / f.name).symlink_to(f.resolve())
    seeds: list[int] = []
    for run in seed_runs:
        found = {int(m["seed"]) for f in (run / "predictions").glob("*.npz") if (m := SEED_FILE.match(f.name))}
        if len(found) != 1:
            raise SystemExit(f"{run}/predictions: expected the files of one seed (<run>-seed<k>.npz), found seeds "
                             f"{sorted(found) or 'none'}")
        (seed,) = found
        if seed in seeds:
            raise SystemExit(f"seed {seed} is given twice ({run})")
        seeds.append(seed)
        for f in sorted((run / "predictions").glob(f"*-seed{seed}.npz")):
            (into / f.name).symlink_to(f.resolve())
    return tuple(seeds), [f.stem for f in own]


def workspace_seed(metrics: Path, names: list[str]) -> Any:
    """The one training seed (``encoder_seed``) of the workspace's runs ``names`` (their ``.config.json``); a
    workspace whose runs were trained with different seeds (a ``dvc repro`` under another seed not finished)
    is an error."""
    seeds: dict[Any, list[str]] = {}
    for name in names:
        path = metrics / f"{name}.config.json"
        if path.is_file() and (seed := json.loads(path.read_text()).get("encoder_seed")) is not None:
            seeds.setdefault(seed, []).append(name)
    if len(seeds) > 1:
        raise SystemExit(f"{metrics}: the runs were trained with different seeds ({ {k: v[:3] for k, v in seeds.items()} }): "
                         "finish the workspace's dvc repro first")
    return next(iter(seeds), None)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workspace", type=Path, required=True, help="the default seed's workspace (dvc repro ran)")
    ap.add_argument("--seed-run", type=Path, action="append", default=[], help="committed run of one more seed")
    ap.add_argument("--reference", type=Path, help="committed metrics of an earlier run at the workspace's seed")
    ap.add_argument("--out", type=Path, required=True, help="folder for comparison.json/.md and the carried metrics")
    ap.add_argument("--params", type=Path, help="params file (default: the workspace's params.yaml)")
    args = ap.parse_args(argv)

    from cxrpipe.config import load_params, section
    from cxrpipe.evaluate.compare import CompareConfig, run_compare
    from cxrpipe.evaluate.stats.rules import StatsConfig

    metrics = args.workspace / "data" / "metrics"
    args.out.mkdir(parents=True, exist_ok=True)
    if args.reference is not None:
        rep = reproduce(args.reference, metrics)
        (args.out / "reproduce.json").write_text(json.dumps(rep, indent=1) + "\n")
        for name, r in rep.items():
            print(f"reproduce {name}: {r['differ']} of {r['numbers']} numbers differ (max |diff| "
                  f"{r['max_abs_diff']:.3g}){'; first: ' + ', '.join(r['first_differences'][:3]) if r['differ'] else ''}")
    raw = load_params(args.params or args.workspace / "params.yaml")
    with tempfile.TemporaryDirectory() as tmp:
        seeds, linked = gather(args.workspace / "data" / "predictions", args.seed_run, Path(tmp))
        own = workspace_seed(metrics, linked + [n.removesuffix(".json") for n in CARRIED
                                                if not n.endswith(".config.json")])
        if own in seeds:
            raise SystemExit(f"the workspace's seed {own} is also a --seed-run's")
        cfg = dataclasses.replace(section(raw, "compare", CompareConfig), extra_seeds=seeds)
        run_compare(cfg, metrics, args.out / "comparison.json", predictions_dir=Path(tmp),
                    report_md=args.out / "comparison.md", stats=section(raw, "stats", StatsConfig))
    for name in CARRIED:
        if (metrics / name).is_file():
            shutil.copyfile(metrics / name, args.out / name)
    print(f"joint compare of the default seed and seeds {list(seeds)}: {args.out / 'comparison.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
