"""Choose the shared pretraining settings on VALIDATE, for the `mae` variant (issue: a baseline that learns).

For each setting (``--set key=value`` overrides of the ``pretrain`` section, several per run) this trains the `mae` variant (text weight 0) on the train split,
then fits the `fc` protocol (the FC head) on the frozen encoder and prints its **validate** study-level mAUC
(the score the probe selects its step on). Test numbers are never printed or used: the chosen setting
is then written to params.yaml by hand and the pipeline runs both variants with it.

    python benchmarks/mae_sweep.py --tag base
    python benchmarks/mae_sweep.py --tag m75 --set model.mask_ratio=0.75 --set model.norm_pix_loss=false

Each run appends one JSON line to ``--log`` (default data/sweep/mae_sweep.jsonl). Needs the demo's
``data/prepared`` and ``data/cache/text.h5`` (``dvc repro embed``).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import tempfile
import time
from pathlib import Path

import yaml


def _set(d: dict, dotted: str, value: str) -> None:
    keys = dotted.split(".")
    for k in keys[:-1]:
        d = d.setdefault(k, {})
    d[keys[-1]] = yaml.safe_load(value)


def run_one(params_path: Path, overrides: list[str], tag: str, prepared: Path, text_cache: Path,
            variant: str = "mae") -> dict:
    from cxrpipe.config import build, load_params, section
    from cxrpipe.data.manifest import read_studies
    from cxrpipe.data.prepare import DataConfig
    from cxrpipe.evaluate.probe.finetune import FinetuneConfig, run_finetune
    from cxrpipe.pretrain.train import PretrainConfig, run_pretrain
    from cxrpipe.text.embed import EmbedConfig, expected_fingerprint

    raw = load_params(params_path)
    pre = copy.deepcopy(raw["pretrain"])
    for o in overrides:
        key, value = o.split("=", 1)
        _set(pre, key, value)
    cfg = build(PretrainConfig, pre, where="pretrain")
    expect = expected_fingerprint(
        section(raw, "embed", EmbedConfig), [s.text for s in read_studies(prepared)], section(raw, "data", DataConfig).sections
    )
    ft = section(raw, "finetune", FinetuneConfig)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.time()
        pre_metrics = run_pretrain(cfg, variant, prepared, text_cache, tmp / variant, expect=expect,
                                   metrics_path=tmp / "m.json", plots_dir=tmp / "plots")
        seconds = time.time() - t0
        res = run_finetune(ft, tmp / variant, "fc", prepared, tmp / "fc.json", predictions_out=tmp / "p.npz")
    retrieval = {k: v for k, v in (pre_metrics or {}).get("retrieval", {}).items() if k.startswith("recall")}
    return {"tag": tag, "variant": variant, "set": overrides, "validate_retrieval": retrieval, "validate_mauc": res["validate_mauc"], "selected": res["selected"],
            "pretrain_seconds": round(seconds, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--prepared", type=Path, default=Path("data/prepared"))
    ap.add_argument("--text-cache", type=Path, default=Path("data/cache/text.h5"))
    ap.add_argument("--set", action="append", default=[], help="pretrain override key=value (repeatable)")
    ap.add_argument("--tag", default="run")
    ap.add_argument("--variant", default="mae", help="mae (choosing the shared settings) | multimodal (the text side only)")
    ap.add_argument("--log", type=Path, default=Path("data/sweep/mae_sweep.jsonl"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    out = run_one(args.params, args.set, args.tag, args.prepared, args.text_cache, args.variant)
    args.log.parent.mkdir(parents=True, exist_ok=True)
    with args.log.open("a") as f:
        f.write(json.dumps(out) + "\n")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
