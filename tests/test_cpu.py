"""cpu.isa: the CLI pins the CPU kernels of a stage (torch, oneDNN, MKL) before torch loads; in-process calls
leave the environment alone. (That the pin makes stage one's cache the same on every CPU: tests/text/test_reproducible.py.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cxrpipe.config import ConfigError, section
from cxrpipe.cpu import ISA_ENV, CpuConfig, apply_cpu_isa

ROOT = Path(__file__).resolve().parents[1]
CLEAN_ENV = {k: v for k, v in os.environ.items() if k not in ISA_ENV["avx2"]}


def run_python(code: str, env: dict | None = None) -> str:
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**CLEAN_ENV, "PYTHONPATH": str(ROOT), **(env or {})})
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout.strip()


def native_capability() -> str:
    return run_python("import torch; print(torch.backends.cpu.get_cpu_capability())")


STAGE = """
import os, sys
from pathlib import Path
from cxrpipe.cli import with_cpu_isa
def stage(params: Path = Path("params.yaml")):
    import torch
    print(torch.backends.cpu.get_cpu_capability(), os.environ.get("MKL_CBWR"), os.environ.get("ONEDNN_MAX_CPU_ISA"))
with_cpu_isa(stage)(params=Path(sys.argv[1]))
"""


def stage_kernels(tmp_path: Path, isa: str | None, env: dict | None = None) -> list[str]:
    """What a stage wrapped by the CLI computes with, given a params file whose cpu.isa is ``isa``."""
    params = tmp_path / f"params-{isa}.yaml"
    params.write_text(yaml.safe_dump({"cpu": {"isa": isa}} if isa else {"embed": {}}))
    res = subprocess.run([sys.executable, "-c", STAGE, str(params)], capture_output=True, text=True, timeout=300,
                         env={**CLEAN_ENV, "PYTHONPATH": str(ROOT), **(env or {})})
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout.split()


def test_the_cli_pins_a_stage_before_torch_loads(tmp_path):
    if native_capability() not in ("AVX2", "AVX512"):
        pytest.skip("not an x86 CPU with AVX2")
    assert stage_kernels(tmp_path, "avx2") == ["AVX2", "AVX2", "AVX2"]
    assert stage_kernels(tmp_path, "native") == [native_capability(), "None", "None"]
    # no cpu section (an older or a test's params file): the libraries' own choice, as in-process runs
    assert stage_kernels(tmp_path, None) == [native_capability(), "None", "None"]
    # a variable the user set wins over the params
    assert stage_kernels(tmp_path, "avx2", {"ATEN_CPU_CAPABILITY": "default"})[0] == "DEFAULT"


LAUNCHED = """
import os, sys
from pathlib import Path
from cxrpipe.cli import app, with_cpu_isa
def embed(params: Path = Path("params.yaml")):
    import torch
    print(torch.backends.cpu.get_cpu_capability(), os.environ.get("MKL_CBWR"), os.environ.get("ONEDNN_MAX_CPU_ISA"))
next(c for c in app.registered_commands if c.name == "embed").callback = with_cpu_isa(embed)
app(["launch", "embed", "--params", sys.argv[1]], standalone_mode=False)
"""


def test_launch_pins_the_stage_it_runs(tmp_path):
    """dvc.yaml's embed / pretrain go through `cxrpipe launch`, which imports torch (to count GPUs) before the
    stage runs: the pin must come first there too."""
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"cpu": {"isa": "avx2"}, "compute": {"launcher": "none"}}))
    res = subprocess.run([sys.executable, "-c", LAUNCHED, str(params)], capture_output=True, text=True, timeout=300,
                         env={**CLEAN_ENV, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""})
    assert res.returncode == 0, res.stderr[-2000:]
    capability, mkl, onednn = res.stdout.split()
    assert (mkl, onednn) == ("AVX2", "AVX2")
    if native_capability() in ("AVX2", "AVX512"):
        assert capability == "AVX2"


def test_a_bad_cpu_section_is_one_line_naming_the_stage(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("cpu:\n  isa: avx512\n")
    res = subprocess.run([sys.executable, "-m", "cxrpipe", "check", "--params", str(params), "--out", str(tmp_path / "c.json"),
                          "--no-data"], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                         env={**CLEAN_ENV, "PYTHONPATH": str(ROOT)})
    assert res.returncode == 1
    assert res.stderr.strip().startswith("check failed: ") and "cpu" in res.stderr
    assert "Traceback" not in res.stderr


def test_in_process_it_sets_nothing(monkeypatch):
    import torch  # noqa: F401 (imported: an in-process call, as in CliRunner tests)

    for key in ISA_ENV["avx2"]:
        monkeypatch.delenv(key, raising=False)
    assert apply_cpu_isa("avx2") is False
    assert not any(k in os.environ for k in ISA_ENV["avx2"])
    with pytest.raises(ValueError, match="cpu.isa 'avx512'"):
        apply_cpu_isa("avx512")


def test_profiles_pin_the_cpu_runs_and_leave_gpu_runs_native(tmp_path):
    assert section(ROOT / "params.yaml", "cpu", CpuConfig).isa == "avx2"
    assert section(ROOT / "params-iu.yaml", "cpu", CpuConfig).isa == "avx2"
    assert section(ROOT / "params-mimic.yaml", "cpu", CpuConfig).isa == "native"
    bad = tmp_path / "p.yaml"
    bad.write_text("cpu:\n  isa: avx512\n")
    with pytest.raises(ConfigError):
        section(bad, "cpu", CpuConfig)
