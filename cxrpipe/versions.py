"""The versions of the numeric stack a result was computed with, for logs that are compared across machines.

torch is pinned by the Makefile; the rest float to the newest release `make setup` finds, and a fresh machine did
not reproduce the committed reference run bit for bit (docs/evaluations.md): a log row that carries these can be
told apart from one made with other releases.
"""

from __future__ import annotations

import os
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Sequence

# the instruction sets whose kernels differ in summation order (docs/benchmarks.md, cxrpipe/cpu.py)
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_tile")
NUMERIC_STACK = ("torch", "torchvision", "timm", "numpy", "accelerate", "transformers", "scikit-learn", "pillow", "h5py")


def package_versions(names: Sequence[str] = NUMERIC_STACK) -> dict[str, str | None]:
    """``{distribution name: installed version}`` (None where it is not installed)."""
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def cpu_identity(cpuinfo: str | None = None) -> dict[str, Any]:
    """Which CPU a result was computed on: vendor, family, model, model name, microcode, the cache size and the
    ISA_FLAGS it has, from ``/proc/cpuinfo`` (its first processor; ``cpuinfo``: that file's text) and the
    usable core count. Two runs that should agree bit for bit but do not can then be told apart by machine.
    Off Linux (no such file) only the core count."""
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        cpuinfo = path.read_text(errors="replace") if path.is_file() else ""
    fields: dict[str, str] = {}
    for line in cpuinfo.split("\n\n")[0].splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    out: dict[str, Any] = {"cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()}
    for key, name in (("vendor_id", "vendor"), ("cpu family", "family"), ("model", "model"),
                      ("model name", "model_name"), ("microcode", "microcode"), ("cache size", "cache_size")):
        if key in fields:
            out[name] = fields[key]
    if "flags" in fields:
        have = set(fields["flags"].split())
        out["isa"] = [f for f in ISA_FLAGS if f in have]
    return out
