"""Is the demo's text cache (and pretraining) the same on every x86 CPU? Each setting run under ISA caps, hashed.

Every setting runs the stage's own library function (stage one: ``run_embed``, what ``cxrpipe embed`` calls;
``--stage pretrain``: ``run_pretrain``) in a fresh subprocess whose environment caps the instruction set the
numerical libraries may use, so that this machine stands in for others ("caps"):

- ``ONEDNN_MAX_CPU_ISA`` (oneDNN: torch's bf16 matmuls, SDPA's bf16 blocks, fp32 convolutions; AMX where the
  CPU has it), ``ATEN_CPU_CAPABILITY`` (torch's vectorised kernels: softmax, norms, reductions, element-wise
  maths), ``MKL_ENABLE_INSTRUCTIONS`` (MKL: torch's fp32 matmuls), ``OMP_NUM_THREADS`` 1,
- ``bnb-generic``: bitsandbytes' CPU 4-bit kernel for AVX512-BF16 CPUs switched off (patched in the child), as
  on a CPU without AVX512-BF16, where nf4 layers dequantize and matmul through torch instead,
- ``avx2-machine``: all of them at once, an AVX2-only x86 CPU.

A compute choice (``--computes``) is ``embed.quantization`` with ``cpu.isa`` (cxrpipe/cpu.py): ``fp32`` is the
demo's default (fp32, isa avx2), ``fp32-native`` the same without the pin, ``nf4`` / ``bf16`` the bf16 paths.
A pinned run under a cap gets the lower of the two (a pin cannot raise what the CPU lacks). Per compute it
prints each cap's content hash (:func:`cxrpipe.text.cache.content_hash`: the stored float16 values, token
ids, offsets and study map, not the file's bytes; pretraining: every exported tensor), whether it equals
the uncapped run's, the max abs difference from it, how many stored values differ, and the stage's wall and
CPU seconds (CPU seconds are the fairer speed measure on a shared machine). The last line per compute says
how many distinct hashes its caps gave: 1 = the same result on every CPU emulated here.

    python benchmarks/text_cache_hash.py [--n-studies 48] [--computes nf4,fp32] [--caps native,aten-avx2]
    python benchmarks/text_cache_hash.py --stage pretrain [--epochs 1] [--variants mae,multimodal] [--isa avx2]

Reads params.yaml's ``embed`` section (model, layer, prompt, ...) and data/prepared/studies.csv (the first
``--n-studies`` studies; 0 = all 996 of the demo). ``--stage pretrain``: ``--epochs`` of params.yaml's
pretraining per variant over data/prepared and the text cache data/cache/text.h5.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cxrpipe.cpu import ISA_ENV  # noqa: E402 (no torch: the child pins before it imports torch)

# compute choice -> (embed.quantization, cpu.isa)
COMPUTES: dict[str, tuple[str, str]] = {
    "fp32": ("fp32", "avx2"),  # the demo's default
    "fp32-native": ("fp32", "native"),
    "nf4": ("nf4", "native"),  # the demo's default until now; the GPU path
    "nf4-avx2": ("nf4", "avx2"),
    "bf16": ("bf16", "native"),
}
_AVX2_MACHINE = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
                 "OPENBLAS_CORETYPE": "Haswell"}
# cap -> (environment, bitsandbytes' AVX512-BF16 kernel off)
CAPS: dict[str, tuple[dict[str, str], bool]] = {
    "native": ({}, False),
    "onednn-avx512core": ({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"}, False),  # AVX512 without BF16 instructions
    "onednn-avx2": ({"ONEDNN_MAX_CPU_ISA": "AVX2"}, False),
    "aten-avx2": ({"ATEN_CPU_CAPABILITY": "avx2"}, False),
    "aten-default": ({"ATEN_CPU_CAPABILITY": "default"}, False),  # an x86 CPU without AVX2 (before 2013)
    "mkl-avx2": ({"MKL_ENABLE_INSTRUCTIONS": "AVX2"}, False),
    "bnb-generic": ({}, True),
    "threads-1": ({"OMP_NUM_THREADS": "1"}, False),
    "avx2-machine": (_AVX2_MACHINE, True),
}
ENV_VARS = sorted({k for env, _ in CAPS.values() for k in env} | set(ISA_ENV["avx2"]) - {"OMP_NUM_THREADS"})
# levels, lowest first, of the variables a cap and a pin both set (a pinned run under a cap gets the lower)
LEVELS = {"ATEN_CPU_CAPABILITY": ["default", "avx2", "avx512"],
          "ONEDNN_MAX_CPU_ISA": ["AVX2", "AVX512_CORE", "AVX512_CORE_BF16", "AVX512_CORE_AMX"]}


@dataclasses.dataclass(frozen=True)
class Outcome:
    setting: str
    hash: str
    seconds: float
    cpu_seconds: float
    units: int  # stage one: tokens; pretraining: steps
    kernels: str  # cxrpipe.cpu.kernels_in_use()
    out: str


def setting_env(compute: str, cap: str, threads: int) -> dict[str, str]:
    """The child's environment: this one without any ISA variable, then the cap, then the pin (the lower)."""
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false")
    env.update(CAPS[cap][0])
    for key, pin in ISA_ENV[COMPUTES.get(compute, ("", compute))[1]].items():
        levels = LEVELS.get(key)
        if key in env and levels and env[key] in levels and pin in levels:
            env[key] = min(env[key], pin, key=levels.index)
        else:
            env[key] = pin
    return env


def subset_manifest(prepared: Path, n_studies: int, out: Path) -> int:
    """``out/studies.csv``: the first ``n_studies`` rows of ``prepared``'s (0 = all); returns the row count."""
    out.mkdir(parents=True, exist_ok=True)
    with (prepared / "studies.csv").open(newline="") as f:
        rows = list(csv.reader(f))
    keep = rows[1:] if n_studies <= 0 else rows[1 : n_studies + 1]
    with (out / "studies.csv").open("w", newline="") as f:
        csv.writer(f).writerows([rows[0], *keep])
    return len(keep)


def child(setting: str, args: argparse.Namespace) -> Outcome:
    """One setting, in this fresh process (the parent set its environment)."""
    compute, cap = setting.split(":")
    if CAPS[cap][1]:  # before any Linear4bit exists: nf4 layers take the generic dequantize + matmul path
        import bitsandbytes.nn.modules as bnb_modules

        bnb_modules.has_avx512bf16 = lambda: False
    from cxrpipe.config import load_params, section
    from cxrpipe.cpu import kernels_in_use

    raw = load_params(args.params)
    t0, c0 = time.perf_counter(), time.process_time()
    if args.stage == "pretrain":
        from cxrpipe.pretrain.train import PretrainConfig, run_pretrain

        cfg = dataclasses.replace(section(raw, "pretrain", PretrainConfig), epochs=args.epochs)
        units = int(run_pretrain(cfg, compute, args.prepared, args.text_cache, args.out)["steps"])
        digest = hashlib.sha256(b"".join(v.tobytes() for v in exported_tensors(args.out).values())).hexdigest()
    else:
        from cxrpipe.data.prepare import DataConfig
        from cxrpipe.text.cache import content_hash
        from cxrpipe.text.embed import EmbedConfig, run_embed

        cfg = dataclasses.replace(section(raw, "embed", EmbedConfig), quantization=COMPUTES[compute][0])
        sections = list(section(raw, "data", DataConfig).sections)
        units = run_embed(cfg, args.manifest, args.out, sections, progress=False).n_tokens
        digest = content_hash(args.out)
    return Outcome(setting, digest, time.perf_counter() - t0, time.process_time() - c0, units, kernels_in_use(),
                   str(args.out))


def exported_tensors(folder: Path) -> dict[str, np.ndarray]:
    """Every tensor of an exported encoder folder's safetensors files, by file and name, in a fixed order."""
    from safetensors.numpy import load_file

    out = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        tensors = load_file(str(f))
        out.update({f"{f.name}:{k}": np.ascontiguousarray(tensors[k]) for k in sorted(tensors)})
    return out


def run_setting(setting: str, args: argparse.Namespace, manifest: Path, workdir: Path) -> Outcome:
    compute, cap = setting.split(":")
    out = workdir / compute / cap / ("text.h5" if args.stage == "embed" else "model")
    cmd = [sys.executable, __file__, "--one", setting, "--stage", args.stage, "--params", str(args.params),
           "--manifest", str(manifest), "--out", str(out), "--prepared", str(args.prepared),
           "--text-cache", str(args.text_cache), "--epochs", str(args.epochs)]
    env = setting_env(compute if args.stage == "embed" else args.isa, cap, args.threads)
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise RuntimeError(f"{setting} failed:\n{res.stderr[-3000:]}")
    line = next(ln for ln in res.stdout.splitlines() if ln.startswith("RESULT "))
    return Outcome(**json.loads(line[len("RESULT "):]))


def read_values(out: str) -> np.ndarray:
    """Every stored token state of a cache, float32, rows in text order (a model folder: its tensors, flat)."""
    from cxrpipe.text.cache import TextCache

    if Path(out).is_dir():
        return np.concatenate([v.astype(np.float32).ravel() for v in exported_tensors(Path(out)).values()])
    tc = TextCache(out)
    try:
        return np.concatenate([np.asarray(tc.text_row(r), dtype=np.float32).ravel() for r in range(tc.n_texts)])
    finally:
        tc.close()


def report(title: str, outcomes: list[Outcome]) -> None:
    ref, reference = read_values(outcomes[0].out), outcomes[0]
    print(f"\n## {title}; reference: {reference.setting}")
    print("| cap | kernels | content hash | same | max abs diff | values differing | wall s | CPU s |")
    print("|---|---|---|---|---|---|---|---|")
    for o in outcomes:
        x = read_values(o.out)
        same_shape = x.shape == ref.shape
        diff = np.abs(x - ref) if same_shape else np.full(1, np.inf)
        n_diff = f"{int(np.count_nonzero(diff)):,} of {ref.size:,}" if same_shape else "other shape"
        print(f"| {o.setting.split(':')[1]} | {o.kernels} | {o.hash[:16]} | {'yes' if o.hash == reference.hash else 'NO'}"
              f" | {float(diff.max()):.3g} | {n_diff} | {o.seconds:.1f} | {o.cpu_seconds:.1f} |")
    print(f"{title.split(' ')[0]}: {len({o.hash for o in outcomes})} distinct hash(es) over {len(outcomes)} caps",
          flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stage", choices=("embed", "pretrain"), default="embed")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--prepared", type=Path, default=Path("data/prepared"))
    ap.add_argument("--n-studies", type=int, default=48, help="first N studies of studies.csv; 0 = all")
    ap.add_argument("--computes", default="fp32,fp32-native,nf4", help=f"comma list of {list(COMPUTES)}")
    ap.add_argument("--caps", default=",".join(CAPS), help=f"comma list of {list(CAPS)}; the first is the reference")
    ap.add_argument("--variants", default="mae,multimodal", help="--stage pretrain: the variants pretrained")
    ap.add_argument("--epochs", type=int, default=1, help="--stage pretrain: epochs per run (the demo: 30)")
    ap.add_argument("--isa", choices=sorted(ISA_ENV), default="avx2", help="--stage pretrain: cpu.isa of every run")
    ap.add_argument("--text-cache", type=Path, default=Path("data/cache/text.h5"), help="--stage pretrain: its input")
    ap.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of every run (the demo's 2 cores)")
    ap.add_argument("--workdir", type=Path, default=None, help="keep the outputs here (default: a temp folder)")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # child mode: one compute:cap setting
    ap.add_argument("--manifest", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print("RESULT " + json.dumps(dataclasses.asdict(child(args.one, args))))
        return
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        manifest = workdir / "manifest"
        n = subset_manifest(args.prepared, args.n_studies, manifest)
        caps = args.caps.split(",")
        if args.stage == "embed":
            print(f"# stage one over the first {n} studies of {args.prepared}/studies.csv, OMP_NUM_THREADS={args.threads}")
            for compute in args.computes.split(","):
                outcomes = [run_setting(f"{compute}:{cap}", args, manifest, workdir) for cap in caps]
                quantization, isa = COMPUTES[compute]
                report(f"{compute} (embed.quantization {quantization}, cpu.isa {isa})", outcomes)
                print(f"{compute}: {outcomes[0].units} tokens, {outcomes[0].units / outcomes[0].cpu_seconds:.0f} "
                      "tokens per CPU second uncapped", flush=True)
        else:
            print(f"# pretraining, {args.epochs} epoch(s) per run, cpu.isa {args.isa}, text cache {args.text_cache}, "
                  f"OMP_NUM_THREADS={args.threads}")
            for variant in args.variants.split(","):
                outcomes = [run_setting(f"{variant}:{cap}", args, manifest, workdir) for cap in caps]
                report(f"{variant} (pretrain, fp32, {outcomes[0].units} steps, cpu.isa {args.isa})", outcomes)


if __name__ == "__main__":
    main()
