"""Text cache size options (embed.store_dtype): float16 clipping per layer, bytes/token, error vs float16.

    python benchmarks/cache_size.py [--n-texts 40]                     # tables 1-3 (demo model + demo cache)
    python benchmarks/cache_size.py --recode int8,bfloat16 --out data/tmp   # + variant caches for pretraining

1. The demo LM (params embed.model / embed.quantization) over --n-texts demo reports, every hidden_states
   layer: values beyond float16's range (+-65504) that a float16 cache would clip, the largest |value|, and
   the same at position 0 (BOS for LLaMA-2, dropped from the cache; SmolLM2 adds no BOS: its first token).
2. Bytes per token of each option at the demo's width and at LLaMA-2-7b's (4096), and the MIMIC-CXR cache
   size for 27-46 M tokens; and what keeping only the last pretrain.data.max_text_tokens tokens saves on
   MIMIC-like report lengths (lognormal, median 110 LLaMA tokens, sigma 0.6: synthetic, not MIMIC's own).
3. Each option's error against the float16 cache (data/cache/text.h5, re-encoded): relative L2 error per
   token, and the cosine between the per-report mean of normalised tokens (what the pooling sees, roughly).
--recode writes data/tmp/text-<store>/text.h5 from the float16 parts (no LM run): bfloat16 from float16 values
equals bfloat16 from the float32 ones except where float16 clipped (table 1: nothing at the cached layer).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np

MIMIC_TOKENS = (27e6, 46e6)


def clip_table(n_texts: int) -> None:
    import torch

    from cxrpipe.config import load_params, section
    from cxrpipe.data.manifest import read_studies
    from cxrpipe.data.reports import apply_prompt
    from cxrpipe.text.embed import EmbedConfig
    from cxrpipe.text.model import bos_added, load_text_model

    cfg = section(load_params("params.yaml"), "embed", EmbedConfig)
    model, tok = load_text_model(cfg.model, cfg.quantization, device="cpu")
    studies = [s for s in read_studies("data/prepared") if s.text][:n_texts]
    n_layers = model.config.num_hidden_layers + 1
    clipped, top, bos_top, n_values = np.zeros(n_layers, int), np.zeros(n_layers), np.zeros(n_layers), 0
    for s in studies:
        ids = tok(apply_prompt(s.text, cfg.prompt), add_special_tokens=False)["input_ids"][: cfg.max_tokens]
        bos = bos_added(tok)  # SmolLM2 adds none; LLaMA-2 does (its state is not cached, but shown)
        start = int(bos is not None)
        x = torch.tensor([[bos] * start + ids])
        with torch.inference_mode():
            hs = model.base_model(input_ids=x, output_hidden_states=True).hidden_states
        for k, h in enumerate(hs):
            h = h[0].float()
            kept = h[start:].abs()
            clipped[k] += int((kept > 65504).sum())
            top[k] = max(top[k], float(kept.max()))
            bos_top[k] = max(bos_top[k], float(h[0].abs().max()))  # BOS, or the first token without one
        n_values += len(ids) * model.config.hidden_size
    print(f"## 1. float16 clipping per hidden_states layer: {cfg.model} ({cfg.quantization}), {len(studies)} demo "
          f"reports, {n_values // model.config.hidden_size} tokens (BOS excluded, as cached)")
    print(f"{'layer':>6}{'clipped':>9}{'max |x|':>10}{'max |x| at position 0':>23}")
    for k in range(n_layers):
        name = f"{k}" + (" (-1)" if k == n_layers - 1 else "")
        print(f"{name:>6}{clipped[k]:>9}{top[k]:>10.1f}{bos_top[k]:>23.1f}")
    print(f"# clipped in all layers: {clipped.sum()} of {n_values * n_layers} values; "
          f"the last layer (-1, after the final norm) is what embed.layer = -1 caches")


def size_table(demo_hidden: int, max_text_tokens: int) -> None:
    from cxrpipe.text.store import StoreDtype, bytes_per_token

    rng = np.random.default_rng(0)
    lengths = np.clip(rng.lognormal(np.log(110), 0.6, 200_000).round(), 8, 512)
    kept = np.minimum(lengths, max_text_tokens).sum() / lengths.sum()
    print(f"\n## 2. Bytes per token (token id excluded) and MIMIC-CXR cache size ({MIMIC_TOKENS[0] / 1e6:.0f}-"
          f"{MIMIC_TOKENS[1] / 1e6:.0f} M tokens at 4096 dims)")
    print(f"{'store':<30}{'B/token demo':>13}{'B/token 4096':>13}{'MIMIC GiB':>14}{'vs float16':>11}")
    for s in StoreDtype:
        b = bytes_per_token(s, 4096)
        lo, hi = (t * b / 2**30 for t in MIMIC_TOKENS)
        print(f"{s.value:<30}{bytes_per_token(s, demo_hidden):>13}{b:>13}{lo:>8.0f}-{hi:<5.0f}"
              f"{b / bytes_per_token('float16', 4096):>10.2f}")
    b = bytes_per_token("float16", 4096) * kept
    print(f"{f'float16, last {max_text_tokens} tokens only':<30}{'':>13}{b:>13.0f}"
          f"{MIMIC_TOKENS[0] * b / 2**30:>8.0f}-{MIMIC_TOKENS[1] * b / 2**30:<5.0f}{kept:>10.2f}")
    print(f"# last-{max_text_tokens}: share of tokens kept on synthetic MIMIC-like lengths (median 110, "
          f"{100 * np.mean(lengths > max_text_tokens):.1f}% of reports longer); the demo's reports are all shorter")


def error_table(src: Path, max_rows: int = 400) -> None:
    from cxrpipe.text.cache import TextCache
    from cxrpipe.text.store import StoreDtype, decode, encode

    cache = TextCache(src)
    rows = range(min(cache.n_texts, max_rows))
    print(f"\n## 3. Error against the float16 cache ({src}, {len(rows)} reports, re-encoded from float16)")
    print(f"{'store':<10}{'rel. L2 err/token mean':>24}{'max':>9}{'pooled cosine min':>19}")
    for s in (StoreDtype.bfloat16, StoreDtype.int8):
        errs, cos = [], []
        for r in rows:
            x = cache.text_row(r).astype(np.float32)
            y = decode(encode(x, s)[0], s)
            errs.append(np.linalg.norm(y - x, axis=1) / np.maximum(np.linalg.norm(x, axis=1), 1e-12))
            px = (x / np.linalg.norm(x, axis=1, keepdims=True)).mean(0)
            py = (y / np.linalg.norm(y, axis=1, keepdims=True)).mean(0)
            cos.append(px @ py / np.linalg.norm(px) / np.linalg.norm(py))
        e = np.concatenate(errs)
        print(f"{s.value:<10}{e.mean():>24.2e}{e.max():>9.2e}{min(cos):>19.6f}")


def recode(src: Path, out: Path, store: str) -> Path:
    """A linked cache in form ``store`` from the float16 cache ``src`` (same parts, rows and fingerprint but
    ``store_dtype``), written as the embed stage writes one."""
    import h5py

    from cxrpipe.text.cache import TextCache, dataset, read_part, write_linked_text_cache, write_part
    from cxrpipe.text.embed import parts_dir
    from cxrpipe.text.store import EXTRA_ARRAYS, encode

    cache = TextCache(src)
    dst = out / f"text-{store}" / "text.h5"
    parts_dir(dst).mkdir(parents=True, exist_ok=True)
    files = []
    for f in sorted(parts_dir(src).glob("part-*.h5")):
        with h5py.File(f, "r") as h:
            t = {k: h[k][:] for k in ("offsets", "embeddings", "token_ids", "rows")}
        offs = t["offsets"]
        embs, extra = [], {n: [] for n in EXTRA_ARRAYS[store]}
        for a, b in zip(offs[:-1], offs[1:]):
            enc, _ = encode(t["embeddings"][a:b].astype(np.float32), store)
            embs.append(enc["embeddings"])
            for n in extra:
                extra[n].append(enc[n])
        ids = [t["token_ids"][a:b] for a, b in zip(offs[:-1], offs[1:])]
        files.append(parts_dir(dst) / f.name)
        write_part(files[-1], t["rows"].tolist(), embs, ids, 0, extra)
    with h5py.File(src, "r") as f:
        offsets, sids, srows = (dataset(f, k)[:] for k in ("offsets", "study_ids", "study_rows"))
    fp = dataclasses.replace(cache.fingerprint, store_dtype=store)
    write_linked_text_cache(dst, [read_part(p)[0] for p in files], offsets, sids, srows, fp, cache.hidden_size)
    size = sum(p.stat().st_size for p in files)
    print(f"# wrote {dst}: {size / 1e6:.1f} MB of parts")
    return dst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-texts", type=int, default=40)
    ap.add_argument("--cache", type=Path, default=Path("data/cache/text.h5"))
    ap.add_argument("--recode", default="", help="comma list of stores to write variant caches for")
    ap.add_argument("--out", type=Path, default=Path("data/tmp"))
    ap.add_argument("--skip-clip", action="store_true")
    args = ap.parse_args()
    from cxrpipe.config import load_params
    from cxrpipe.text.cache import TextCache

    if not args.skip_clip:
        clip_table(args.n_texts)
    size_table(TextCache(args.cache).hidden_size, load_params("params.yaml")["pretrain"]["data"]["max_text_tokens"])
    error_table(args.cache)
    for s in filter(None, args.recode.split(",")):
        recode(args.cache, args.out, s)


if __name__ == "__main__":
    main()
