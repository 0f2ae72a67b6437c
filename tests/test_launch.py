"""`cxrpipe launch`: what params `compute` turns dvc.yaml's embed/pretrain command into (no process started)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cxrpipe.config import ConfigError, build, section
from cxrpipe.launch import ComputeConfig, LaunchError, params_path, plan_launch

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--params", "params.yaml", "--variant", "mae"]


def cfg(**kw) -> ComputeConfig:
    return build(ComputeConfig, kw, where="compute")


def test_none_runs_in_process_and_warns_about_idle_gpus():
    plan = plan_launch(cfg(), "pretrain", ARGS, gpus=0)
    assert plan.argv is None and plan.processes == 1 and plan.warnings == ()
    plan = plan_launch(cfg(), "pretrain", ARGS, gpus=8)
    assert plan.argv is None and len(plan.warnings) == 1
    assert "8 GPUs are visible" in plan.warnings[0] and "compute.launcher: accelerate" in plan.warnings[0]
    assert plan_launch(cfg(), "embed", ARGS, gpus=1).warnings == ()  # one GPU, one process: nothing idle


def test_accelerate_auto_uses_every_visible_gpu():
    plan = plan_launch(cfg(launcher="accelerate", num_processes="auto"), "embed", ARGS, gpus=4)
    argv = plan.argv
    assert plan.processes == 4 and plan.warnings == ()
    assert argv[1:3] == ["-m", "accelerate.commands.launch"] and "--multi_gpu" in argv
    assert argv[argv.index("--num_processes") + 1] == "4"
    assert argv[-len(ARGS) - 3:] == ["-m", "cxrpipe", "embed", *ARGS]  # the stage's own arguments, untouched
    # auto on a CPU machine: one process, in this process
    assert plan_launch(cfg(launcher="accelerate", num_processes="auto"), "embed", ARGS, gpus=0).argv is None


def test_accelerate_with_fewer_processes_than_gpus_warns():
    plan = plan_launch(cfg(launcher="accelerate", num_processes=2), "pretrain", ARGS, gpus=8)
    assert plan.processes == 2 and "uses 2 process(es)" in plan.warnings[0]


def test_config_file_decides_and_extra_args_pass_through():
    c = cfg(launcher="accelerate", config_file="cluster/accelerate/one-node.yaml", extra_args=["--num_cpu_threads_per_process", "4"])
    argv = plan_launch(c, "pretrain", ARGS, gpus=8).argv
    assert argv[3:7] == ["--config_file", "cluster/accelerate/one-node.yaml", "--num_cpu_threads_per_process", "4"]
    assert "--num_processes" not in argv and "--multi_gpu" not in argv


def test_slurm_starts_one_accelerate_per_node_with_its_rank():
    env = {"SLURM_JOB_ID": "7", "SLURM_JOB_NUM_NODES": "2", "SLURM_JOB_NODELIST": "gpu[01-02]"}
    plan = plan_launch(cfg(launcher="slurm", num_processes="auto"), "pretrain", ARGS, gpus=8, env=env,
                       hostnames=lambda nodes: ["gpu01", "gpu02"])
    assert plan.processes == 16 and plan.argv[:2] == ["srun", "--nodes=2"]
    remote = plan.argv[-1]
    assert '--machine_rank "$SLURM_NODEID"' in remote and "--main_process_ip gpu01" in remote
    assert "--num_processes 16" in remote and "--num_machines 2" in remote
    assert remote.endswith("-m cxrpipe pretrain --params params.yaml --variant mae")
    # one node: plain accelerate, no srun
    one = plan_launch(cfg(launcher="slurm", num_processes="auto"), "pretrain", ARGS, gpus=4,
                      env={**env, "SLURM_JOB_NUM_NODES": "1"})
    assert one.argv[0] != "srun" and one.processes == 4
    with pytest.raises(LaunchError, match="not inside a SLURM job"):
        plan_launch(cfg(launcher="slurm"), "pretrain", ARGS, gpus=0, env={})


def test_auto_picks_the_launcher_from_the_machine():
    auto = cfg(launcher="auto", num_processes="auto")
    assert plan_launch(auto, "embed", ARGS, gpus=0).argv is None  # a laptop: this process
    assert plan_launch(auto, "embed", ARGS, gpus=1).argv is None
    node = plan_launch(auto, "embed", ARGS, gpus=8)
    assert node.processes == 8 and node.argv[0] != "srun"
    env = {"SLURM_JOB_ID": "7", "SLURM_JOB_NUM_NODES": "4", "SLURM_JOB_NODELIST": "g[1-4]"}
    cluster = plan_launch(auto, "embed", ARGS, gpus=8, env=env, hostnames=lambda _: ["g1", "g2", "g3", "g4"])
    assert cluster.processes == 32 and cluster.argv[0] == "srun"
    # SLURM variables without a job id (a login shell that sourced them) do not count as a job
    assert plan_launch(auto, "embed", ARGS, gpus=0, env={"SLURM_JOB_NUM_NODES": "4"}).argv is None


def test_bad_settings_are_one_line_errors():
    with pytest.raises(LaunchError, match="runs embed or pretrain"):
        plan_launch(cfg(), "finetune", ARGS, gpus=0)
    with pytest.raises(LaunchError, match="compute.num_processes"):
        plan_launch(cfg(launcher="accelerate", num_processes=0), "embed", ARGS, gpus=0)
    with pytest.raises(ConfigError, match="compute.launcher"):
        cfg(launcher="torchrun")
    with pytest.raises(ConfigError, match="compute.num_processes"):
        cfg(num_processes="all")


def test_params_path_is_found_among_the_stage_arguments():
    assert params_path(["--variant", "mae", "--params", "p.yaml"]) == "p.yaml"
    assert params_path(["--params=q.yaml"]) == "q.yaml"
    assert params_path(["--variant", "mae"]) == "params.yaml"


@pytest.mark.parametrize("profile", sorted(p.name for p in ROOT.glob("params*.yaml")))
def test_every_profile_has_a_compute_section(profile):
    section(yaml.safe_load((ROOT / profile).read_text()), "compute", ComputeConfig)


def test_launch_command_runs_in_process_and_names_a_bad_section(tmp_path):
    from typer.testing import CliRunner

    from cxrpipe.cli import app

    bad = tmp_path / "params.yaml"
    bad.write_text("compute:\n  launcher: mpi\n")
    res = CliRunner().invoke(app, ["launch", "embed", "--params", str(bad)])
    assert res.exit_code == 2 and "compute.launcher" in res.output
    bad.write_text("compute:\n  launcher: none\n")
    res = CliRunner().invoke(app, ["launch", "verify", "--params", str(bad)])
    assert res.exit_code == 2 and "runs embed or pretrain" in res.output


def test_launch_none_runs_the_stage_in_this_process_with_its_arguments(tmp_path):
    """launcher none: the stage's own CLI gets every argument (here its own error for a misspelt variant)."""
    from typer.testing import CliRunner

    from cxrpipe.cli import app

    params = tmp_path / "params.yaml"
    params.write_text("compute:\n  launcher: none\n")
    res = CliRunner().invoke(app, ["launch", "pretrain", "--params", str(params), "--variant", "multimodel"])
    out = " ".join(res.output.split())
    assert res.exit_code == 2 and "'multimodel' is not one of mae, multimodal" in out
