"""nf4 vs bf16 vs fp32 on the demo text model (CPU): tokens/s, peak memory, weight memory, and how far
the nf4 / bf16 states are from fp32.

Each quantization runs in a fresh subprocess so that its peak resident memory (ru_maxrss) is its own.
Texts are random token ids with a report-like length distribution, length-grouped as the stage does.

    python benchmarks/embed_quantization.py [--model data/models/text-model] [--n-texts 120]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np


def measure(model_dir: str, quantization: str, n_texts: int, batch_tokens: int, states: str) -> dict:
    import torch

    from cxrpipe.text.batching import length_grouped_batches
    from cxrpipe.text.embed import embed_batch
    from cxrpipe.text.model import bos_added, load_text_model

    t0 = time.perf_counter()
    model, tok = load_text_model(model_dir, quantization, device="cpu")
    load_s = time.perf_counter() - t0
    bos, pad = bos_added(tok), tok.pad_token_id
    rng = np.random.default_rng(0)
    lengths = np.clip(rng.lognormal(np.log(100), 0.5, n_texts).round(), 8, 512).astype(int)
    ids = [rng.integers(100, tok.vocab_size - 100, n).tolist() for n in lengths]
    batches = length_grouped_batches([n + (bos is not None) for n in lengths], batch_tokens)
    embed_batch(model, [ids[r] for r in batches[-1].rows], -1, bos, pad)  # warm-up
    out = [None] * len(ids)
    t0 = time.perf_counter()
    for b in batches:
        for r, h in zip(b.rows, embed_batch(model, [ids[r] for r in b.rows], -1, bos, pad)):
            out[r] = h
    secs = time.perf_counter() - t0
    np.save(f"{states}/{quantization}.npy", torch.cat(out).numpy())  # for the parent's cos-to-fp32
    return {
        "quantization": quantization,
        "tokens": int(lengths.sum()),
        "tokens_per_s": float(lengths.sum() / secs),
        "load_s": load_s,
        "weights_mib": model.get_memory_footprint() / 2**20,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="data/models/text-model")
    ap.add_argument("--n-texts", type=int, default=120)
    ap.add_argument("--batch-tokens", type=int, default=4096)
    ap.add_argument("--one", help=argparse.SUPPRESS)  # child mode: measure one quantization, print JSON
    ap.add_argument("--states", help=argparse.SUPPRESS)  # child mode: folder for its hidden states
    args = ap.parse_args()
    if args.one:
        print("RESULT " + json.dumps(measure(args.model, args.one, args.n_texts, args.batch_tokens, args.states)))
        return
    with tempfile.TemporaryDirectory() as states:
        report(args, states)


def report(args: argparse.Namespace, states: str) -> None:
    rows = []
    for q in ("fp32", "bf16", "nf4"):
        res = subprocess.run([sys.executable, __file__, "--model", args.model, "--n-texts", str(args.n_texts),
                              "--batch-tokens", str(args.batch_tokens), "--one", q, "--states", states],
                             capture_output=True, text=True, check=True)
        rows.append(json.loads(next(ln for ln in res.stdout.splitlines() if ln.startswith("RESULT "))[7:]))
    ref = np.load(f"{states}/fp32.npy")
    print(f"# {args.model} on CPU ({rows[0]['threads']} torch threads); {rows[0]['tokens']} tokens per run")
    print(f"{'quant':<6}{'tokens/s':>10}{'load s':>8}{'weights MiB':>13}{'peak RSS MiB':>14}{'cos to fp32':>13}")
    for r in rows:
        x = np.load(f"{states}/{r['quantization']}.npy")
        cos = (x * ref).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(ref, axis=1))
        print(f"{r['quantization']:<6}{r['tokens_per_s']:>10.0f}{r['load_s']:>8.1f}{r['weights_mib']:>13.0f}"
              f"{r['peak_rss_mib']:>14.0f}{cos.mean():>13.4f}")


if __name__ == "__main__":
    main()
