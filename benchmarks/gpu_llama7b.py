"""Stage one at LLaMA-2-7b's exact shape on a GPU: nf4 vs bf16 tokens/s and peak GPU memory, and the hours
that implies for all of MIMIC-CXR. No download: the weights are random (a LlamaConfig with LLaMA-2-7b's
sizes); throughput and memory do not depend on their values.

The random bf16 checkpoint is saved once to --workdir (13 GB) and loaded through the stage's own loader
(`load_text_model`), so nf4 is quantized exactly as the stage quantizes a real checkpoint. Texts: random
token ids, report-like lengths (lognormal, median 110 LLaMA tokens, sigma 0.6, clipped to 8..512), batched
as the stage batches them (length-grouped under --batch-tokens).

    python benchmarks/gpu_llama7b.py [--workdir /tmp/llama7b-random] [--n-texts 2000] [--batch-tokens 16384]
    python benchmarks/gpu_llama7b.py --tiny      # a shrunken config: checks the script itself, on CPU too
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from cxrpipe.text.batching import length_grouped_batches, padding_fraction
from cxrpipe.text.embed import embed_batch
from cxrpipe.text.model import load_text_model

MIMIC_STUDIES = 227_835  # reports (studies) in MIMIC-CXR 2.0.0

LLAMA2_7B = dict(
    vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
    num_key_value_heads=32, max_position_embeddings=4096, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2,
    tie_word_embeddings=False,
)
TINY = dict(LLAMA2_7B, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=4)


def make_checkpoint(folder: Path, shape: dict) -> None:
    """A random LlamaForCausalLM of ``shape`` in bf16 safetensors, with a stand-in tokenizer (BOS id 1)."""
    from tokenizers import Tokenizer, models, processors
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    if (folder / "config.json").exists():
        return
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = LlamaForCausalLM(LlamaConfig(**shape)).to(torch.bfloat16)
    model.save_pretrained(tmp)
    del model
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"t{i}": i for i in range(3, shape["vocab_size"])}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(tmp)
    tmp.rename(folder)


def bench(folder: Path, quantization: str, ids: list, batch_tokens: int, device: torch.device) -> dict:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    model, tok = load_text_model(folder, quantization, device=device)
    load_s = time.perf_counter() - t0
    weights = torch.cuda.memory_allocated() if device.type == "cuda" else model.get_memory_footprint()
    lengths = [len(x) + 1 for x in ids]  # + BOS
    batches = length_grouped_batches(lengths, batch_tokens)
    embed_batch(model, [ids[r] for r in batches[0].rows], -1, 1, tok.pad_token_id)  # warm-up on the largest
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for b in batches:
        embed_batch(model, [ids[r] for r in b.rows], -1, 1, tok.pad_token_id)
    if device.type == "cuda":
        torch.cuda.synchronize()
    secs = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else float("nan")
    del model
    return {"quantization": quantization, "tokens_per_s": sum(len(x) for x in ids) / secs, "load_s": load_s,
            "weights_gib": weights / 2**30, "peak_gib": peak / 2**30, "padding": padding_fraction(batches, lengths)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/llama7b-random"))
    ap.add_argument("--n-texts", type=int, default=2000)
    ap.add_argument("--batch-tokens", type=int, default=16384)
    ap.add_argument("--quantizations", default="nf4,bf16")
    ap.add_argument("--tiny", action="store_true", help="shrunken config (script check, runs on CPU)")
    args = ap.parse_args()

    shape = TINY if args.tiny else LLAMA2_7B
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    card = torch.cuda.get_device_name() if device.type == "cuda" else "CPU (no GPU)"
    folder = args.workdir / ("tiny" if args.tiny else "llama2-7b-shape")
    t0 = time.perf_counter()
    make_checkpoint(folder, shape)
    print(f"# random checkpoint {folder} ready in {time.perf_counter() - t0:.0f} s")
    rng = np.random.default_rng(0)
    lengths = np.clip(rng.lognormal(np.log(110), 0.6, args.n_texts).round(), 8, 512).astype(int)
    ids = [rng.integers(3, shape["vocab_size"], n).tolist() for n in lengths]
    mean = lengths.mean()
    print(f"# {card}; torch {torch.__version__}; shape {'tiny' if args.tiny else 'LLaMA-2-7b'}; {len(ids)} texts, "
          f"mean {mean:.0f} tokens (p50 {np.median(lengths):.0f}, p99 {np.percentile(lengths, 99):.0f}); "
          f"batch_tokens {args.batch_tokens}")
    print(f"{'quant':<6}{'tokens/s':>10}{'load s':>8}{'weights GiB':>13}{'peak GiB':>10}{'padding':>9}"
          f"{'MIMIC-CXR hours':>17}")
    for q in args.quantizations.split(","):
        r = bench(folder, q, ids, args.batch_tokens, device)
        hours = MIMIC_STUDIES * mean / r["tokens_per_s"] / 3600
        print(f"{q:<6}{r['tokens_per_s']:>10.0f}{r['load_s']:>8.1f}{r['weights_gib']:>13.2f}{r['peak_gib']:>10.2f}"
              f"{r['padding']:>9.1%}{hours:>17.2f}")
    print(f"# MIMIC-CXR hours = {MIMIC_STUDIES} reports x {mean:.0f} tokens / tokens/s, one process on this card")


if __name__ == "__main__":
    main()
