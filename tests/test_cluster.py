"""The shipped cluster files (cluster/), tested as far as a CPU machine allows: the accelerate configs load
and start real process groups (gloo; the multi-node one as two "machines" on localhost), the SLURM scripts
run with stand-in `dvc` / `cxrpipe` commands."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
WORKER = """
import json, os, sys
import torch, torch.distributed as dist
from accelerate import PartialState
state = PartialState(cpu=True)
x = torch.tensor([state.process_index + 1.0])
dist.all_reduce(x)  # every rank must reach every other
json.dump({"rank": state.process_index, "world": state.num_processes, "sum": x.item()},
          open(os.path.join(sys.argv[1], f"rank{state.process_index}.json"), "w"))
dist.barrier()
dist.destroy_process_group()  # gloo's threads torn down before exit (else "terminate called ..." under load)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(config: Path, tmp_path: Path, *flags: str) -> subprocess.Popen:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), *flags, str(script),
           str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(procs: list[subprocess.Popen], timeout: float = 300) -> list[str]:
    """Wait for every process (killing all at the timeout, so none is left behind); their outputs."""
    try:
        return [p.communicate(timeout=timeout)[0] for p in procs]
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        outs = [p.communicate()[0] for p in procs]
        raise AssertionError("launch timed out:\n" + "\n".join(o[-2000:] for o in outs)) from None


def results(tmp_path: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(tmp_path.glob("rank*.json"))]


@pytest.mark.parametrize("name,machines", [("one-node.yaml", 1), ("multi-node.yaml", 2)])
def test_accelerate_configs_load_with_accelerates_own_reader(name, machines):
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(CLUSTER / "accelerate" / name))
    assert cfg.distributed_type == "MULTI_GPU" and cfg.num_machines == machines
    assert cfg.num_processes == 8 * machines and cfg.mixed_precision == "no"


@pytest.mark.slow
def test_one_node_config_starts_a_process_group(tmp_path):
    proc = launch(CLUSTER / "accelerate" / "one-node.yaml", tmp_path, "--num_processes", "2",
                  "--main_process_port", str(free_port()))
    (out,) = finish([proc])
    assert proc.returncode == 0, out[-3000:]
    assert results(tmp_path) == [{"rank": r, "world": 2, "sum": 3.0} for r in (0, 1)]


@pytest.mark.slow
def test_multi_node_config_joins_two_machines(tmp_path):
    """Two `accelerate launch` with the multi-node file, machine ranks 0 and 1, one process each: one group."""
    common = ["--num_processes", "2", "--main_process_ip", "127.0.0.1", "--main_process_port", str(free_port())]
    procs = [launch(CLUSTER / "accelerate" / "multi-node.yaml", tmp_path, *common, "--machine_rank", str(r))
             for r in (0, 1)]
    outs = finish(procs)
    assert all(p.returncode == 0 for p in procs), "\n".join(o[-2000:] for o in outs)
    assert results(tmp_path) == [{"rank": r, "world": 2, "sum": 3.0} for r in (0, 1)]


def fake_tools(tmp_path: Path, launcher: str) -> dict:
    """A venv whose `dvc` and `cxrpipe` record their arguments, and params.yaml with the given launcher."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "activate").write_text(f'export PATH="{venv}/bin:$PATH"\n')
    for tool in ("dvc", "cxrpipe"):
        exe = venv / "bin" / tool
        exe.write_text(f'#!/bin/bash\necho "{tool} $*" >> "{tmp_path}/calls"\n')
        exe.chmod(0o755)
    (venv / "bin" / "python").symlink_to(sys.executable)
    (tmp_path / "params.yaml").write_text(f"compute:\n  launcher: {launcher}\n")
    return {**os.environ, "CXRPIPE_VENV": str(venv), "SLURM_SUBMIT_DIR": str(tmp_path), "SLURM_JOB_NUM_NODES": "2"}


@pytest.mark.parametrize("script", ["one-node.sbatch", "multi-node.sbatch"])
def test_slurm_scripts_print_the_plan_then_run_dvc_repro(tmp_path, script):
    env = fake_tools(tmp_path, "auto")
    res = subprocess.run(["bash", str(CLUSTER / "slurm" / script), "pretrain"], env=env, capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "calls").read_text().splitlines() == ["cxrpipe plan --params params.yaml",
                                                             "dvc repro pretrain"]
    header = (CLUSTER / "slurm" / script).read_text()
    assert "#SBATCH --gpus-per-node" in header and "#SBATCH --nodes" in header


def test_multi_node_script_refuses_a_single_process_launcher(tmp_path):
    env = fake_tools(tmp_path, "none")
    res = subprocess.run(["bash", str(CLUSTER / "slurm" / "multi-node.sbatch")], env=env, capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 2 and "compute.launcher is 'none'" in res.stderr
    assert not (tmp_path / "calls").exists()
