"""Length-grouped batching vs naive fixed-order batching, side by side, on the demo text model (CPU).

Prints, for the same texts and the same model: batches, padding fraction, real tokens/s and padded
slots/s; then the text cache's bytes per token (written with the real writer) and what that means at
MIMIC-CXR scale. Texts are random token ids with a report-like length distribution (lognormal, median
~100 tokens, clipped to 8..512): throughput does not depend on which tokens they are.

    python benchmarks/embed_batching.py [--model data/models/text-model] [--n-texts 300]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cxrpipe.text.batching import fixed_order_batches, length_grouped_batches, padding_fraction
from cxrpipe.text.cache import Fingerprint, write_text_cache
from cxrpipe.text.embed import embed_batch, to_float16
from cxrpipe.text.model import bos_added, load_text_model

MIMIC_STUDIES = 227_835


def report_lengths(n: int, seed: int = 0) -> list[int]:
    rng = np.random.default_rng(seed)
    return np.clip(rng.lognormal(np.log(100), 0.5, n).round(), 8, 512).astype(int).tolist()


def run(model, batches, ids, bos, pad) -> tuple[float, list]:
    out = [None] * len(ids)
    t0 = time.perf_counter()
    for b in batches:
        for r, h in zip(b.rows, embed_batch(model, [ids[r] for r in b.rows], -1, bos, pad)):
            out[r] = h
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="data/models/text-model")
    ap.add_argument("--quantization", default="bf16", choices=["nf4", "bf16", "fp32"])
    ap.add_argument("--n-texts", type=int, default=300)
    ap.add_argument("--batch-tokens", type=int, default=4096)
    args = ap.parse_args()

    model, tok = load_text_model(args.model, args.quantization, device="cpu")
    bos, pad = bos_added(tok), tok.pad_token_id
    lengths = report_lengths(args.n_texts)
    rng = np.random.default_rng(1)
    ids = [rng.integers(100, tok.vocab_size - 100, n).tolist() for n in lengths]
    seq = [n + (bos is not None) for n in lengths]
    grouped = length_grouped_batches(seq, args.batch_tokens)
    naive = fixed_order_batches(seq, max(1, round(len(seq) / len(grouped))))  # same number of forwards
    run(model, grouped[-2:], ids, bos, pad)  # warm-up
    real = sum(lengths)
    print(f"# {args.model} ({args.quantization}) on CPU, torch threads {torch.get_num_threads()}; "
          f"{len(ids)} texts, {real} tokens (mean {np.mean(lengths):.0f}, max {max(lengths)}); "
          f"batch_tokens {args.batch_tokens}")
    print(f"{'batching':<22}{'batches':>8}{'padding':>9}{'tokens/s':>10}{'slots/s':>10}{'seconds':>9}")
    results = {}
    for name, batches in (("length-grouped", grouped), ("naive fixed-order", naive)):
        secs, out = run(model, batches, ids, bos, pad)
        slots = sum(b.padded_tokens for b in batches)
        results[name] = (secs, out)
        print(f"{name:<22}{len(batches):>8}{padding_fraction(batches, seq):>9.1%}{real / secs:>10.0f}"
              f"{slots / secs:>10.0f}{secs:>9.1f}")
    print(f"speed-up of grouping: {results['naive fixed-order'][0] / results['length-grouped'][0]:.2f}x")

    embs = [to_float16(h.numpy())[0] for h in results["length-grouped"][1]]
    hidden = embs[0].shape[1]
    fp = Fingerprint(str(args.model), "", args.quantization, -1, "", ("findings", "impression"), 512, "-")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "text.h5"
        write_text_cache(path, embs, [np.asarray(x, dtype=np.int32) for x in ids], list(range(len(ids))),
                         list(range(len(ids))), fp)
        size = path.stat().st_size
    per_token = size / real
    print(f"cache: {size / 2**20:.1f} MiB for {real} tokens x {hidden} = {per_token:.0f} bytes/token "
          f"(float16 {2 * hidden} + token id 4 + index/attrs {per_token - 2 * hidden - 4:.0f})")
    for h, name in ((hidden, "this model"), (4096, "LLaMA-2-7b")):
        tot = MIMIC_STUDIES * np.mean(lengths) * (2 * h + 4)
        print(f"at MIMIC-CXR scale ({MIMIC_STUDIES} reports x {np.mean(lengths):.0f} tokens), {name} "
              f"(hidden {h}): {tot / 2**30:.0f} GiB")


if __name__ == "__main__":
    main()
