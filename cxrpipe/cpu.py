"""Which CPU code the numerical libraries run: the same numbers on every x86 CPU, or each CPU's fastest.

torch, oneDNN, MKL and OpenBLAS each pick their kernels by the widest instructions the CPU has. The kernels
for AVX512 (and AMX, for bf16) sum in another order than the AVX2 ones, so two machines give results that
differ in the last bits in fp32 (pretraining, stage three) and far more in bf16 (stage one in nf4/bf16):
``benchmarks/text_cache_hash.py`` measures it, docs/benchmarks.md has the numbers. params ``cpu.isa``:

* ``avx2``: every library runs its AVX2 code on every CPU (any x86-64 CPU since 2013 has AVX2): torch's
  vectorised kernels (``ATEN_CPU_CAPABILITY``), oneDNN (``ONEDNN_MAX_CPU_ISA``: its convolutions and bf16
  matmuls, AMX included), MKL's conditional numerical reproducibility (``MKL_CBWR``) and OpenBLAS
  (``OPENBLAS_CORETYPE``, numpy / scikit-learn). With fp32 stage one this is what makes a demo run
  reproduce bit for bit on another x86 CPU.
* ``native``: the libraries' own choice (faster on AVX512 / AMX CPUs; GPU runs, where it hardly matters).

The variables are read when a library starts, so :func:`apply_cpu_isa` must run before torch is imported:
the ``cxrpipe`` CLI applies the stage's params before calling it. A variable the user already set wins.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from typing import Literal

log = logging.getLogger(__name__)

# cpu.isa -> the environment that selects each library's code path
ISA_ENV: dict[str, dict[str, str]] = {
    "avx2": {
        "ATEN_CPU_CAPABILITY": "avx2",
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "MKL_CBWR": "AVX2",
        "OPENBLAS_CORETYPE": "Haswell",
    },
    "native": {},
}


@dataclasses.dataclass(frozen=True)
class CpuConfig:
    """params section ``cpu``."""

    # avx2: the same kernels on every x86 CPU (bit-identical runs) | native: each CPU's widest (faster). The
    # default (also for a params file without the section) leaves the libraries alone; params.yaml sets avx2
    isa: Literal["avx2", "native"] = "native"


def apply_cpu_isa(isa: str) -> bool:
    """Set the environment of ``isa`` (see the module doc) where the user has not; False (and nothing set)
    when torch is already imported in this process (an in-process call: its kernels may be chosen already,
    and the setting would leak into the caller's environment)."""
    if isa not in ISA_ENV:
        raise ValueError(f"cpu.isa {isa!r} is not one of {sorted(ISA_ENV)}")
    if "torch" in sys.modules:
        if ISA_ENV[isa]:
            log.debug("cpu.isa %s not applied: torch is already imported in this process", isa)
        return False
    for key, value in ISA_ENV[isa].items():
        if os.environ.get(key, value) != value:
            log.info("cpu.isa %s: keeping %s=%s from the environment", isa, key, os.environ[key])
        os.environ.setdefault(key, value)
    return True


def apply_params_cpu_isa(params_path: str | os.PathLike) -> None:
    """:func:`apply_cpu_isa` of the ``cpu`` section of a params file (absent section or file: ``native``)."""
    from pathlib import Path

    from cxrpipe.config import load_params, section

    path = Path(params_path)
    raw = load_params(path) if path.is_file() else {}
    apply_cpu_isa(section(raw, "cpu", CpuConfig).isa if "cpu" in raw else CpuConfig.isa)


def kernels_in_use() -> str:
    """What this process computes with, for the records: ``"ATen AVX2, MKL_CBWR=AVX2, ..."`` (imports torch)."""
    import torch

    env = ", ".join(f"{k}={os.environ[k]}" for k in ISA_ENV["avx2"] if k != "ATEN_CPU_CAPABILITY" and k in os.environ)
    return f"ATen {torch.backends.cpu.get_cpu_capability()}" + (f", {env}" if env else "")
