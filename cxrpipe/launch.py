"""How dvc.yaml's GPU stages start: one process, ``accelerate launch`` on this node, or across SLURM nodes.

``dvc.yaml`` runs ``cxrpipe launch embed ...`` and ``cxrpipe launch pretrain ...``; the params section
``compute`` decides what that becomes, so ``dvc repro`` uses a node's GPUs without hand-run commands and
``dvc.lock`` records the run as usual:

- ``launcher: none``: the stage runs in this process (CPU, or one GPU).
- ``launcher: accelerate``: ``accelerate launch --multi_gpu --num_processes N -m cxrpipe <stage> ...`` on this
  node (``num_processes: auto`` = one per visible GPU), or with ``config_file`` (an ``accelerate config`` file,
  e.g. ``cluster/accelerate/one-node.yaml``) deciding everything.
- ``launcher: slurm``: inside an ``sbatch`` allocation of several nodes (``cluster/slurm/multi-node.sbatch``),
  ``srun`` starts ``accelerate launch`` once per node with its ``--machine_rank``; the first node of the
  allocation is the rendezvous host. On one node it is ``accelerate``.
- ``launcher: auto``: ``slurm`` in a SLURM job of several nodes, else ``accelerate`` when more than one GPU is
  visible (or a ``config_file`` is set), else ``none``: one params file for a laptop, a node and a cluster.

The result does not depend on the number of processes (embed: the same cache; pretrain: the same encoder up
to float summation order, tested), which is why ``compute`` is not a DVC param of the stages: moving a
finished run from 1 to 8 GPUs does not rerun it. A warning says when more GPUs are visible than used.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import shlex
import subprocess
import sys
from typing import Callable, Literal, Mapping, Optional, Sequence, Union

# the stages written for several processes (sharded text model; DDP pretraining)
LAUNCHABLE = ("embed", "pretrain")
ACCELERATE = (sys.executable, "-m", "accelerate.commands.launch")


class Launcher(str, enum.Enum):
    none = "none"
    accelerate = "accelerate"
    slurm = "slurm"
    auto = "auto"  # slurm in a SLURM job of several nodes, else accelerate with more than one GPU, else none


@dataclasses.dataclass(frozen=True)
class ComputeConfig:
    """params section ``compute`` (read by ``cxrpipe launch``; docs/cluster.md)."""

    launcher: Launcher = Launcher.none  # none | accelerate | slurm | auto
    num_processes: Union[int, Literal["auto"]] = 1  # processes per node; auto = one per visible GPU (1 without)
    config_file: Optional[str] = None  # an accelerate config file; it then decides processes and machines
    main_process_port: int = 29500  # rendezvous port (several jobs on one node need different ones)
    extra_args: tuple[str, ...] = ()  # more `accelerate launch` flags, passed verbatim


class LaunchError(ValueError):
    """The compute settings cannot start this stage (a one-line message naming the param)."""


@dataclasses.dataclass(frozen=True)
class LaunchPlan:
    """``argv`` to exec (None: run in this process), the processes it starts, and warnings to print."""

    argv: Optional[list[str]]
    processes: int
    warnings: tuple[str, ...] = ()


def visible_gpus() -> int:
    """CUDA devices this process can see (0 without CUDA)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _per_node(cfg: ComputeConfig, gpus: int) -> int:
    if cfg.num_processes == "auto":
        return max(gpus, 1)
    if cfg.num_processes < 1:
        raise LaunchError(f"compute.num_processes must be >= 1 or auto, got {cfg.num_processes}")
    return cfg.num_processes


def _gpu_warning(stage: str, used: int, gpus: int) -> tuple[str, ...]:
    if gpus <= used:
        return ()
    return (f"{gpus} GPUs are visible but `{stage}` uses {used} process(es): set compute.launcher: accelerate "
            "and compute.num_processes: auto in params.yaml to use them all (docs/cluster.md)",)


def _accelerate_flags(cfg: ComputeConfig, n: int, machines: int = 1) -> list[str]:
    if cfg.config_file:
        return ["--config_file", cfg.config_file, *cfg.extra_args]
    # --multi_gpu is what makes accelerate start N processes, on a CPU machine too (gloo); the stages set
    # their own precision, and dynamo stays off (both passed to silence accelerate's "not set" warnings)
    flags = ["--num_processes", str(n), "--num_machines", str(machines), "--mixed_precision", "no",
             "--dynamo_backend", "no", "--main_process_port", str(cfg.main_process_port)]
    if n > 1:
        flags.insert(0, "--multi_gpu")
    return [*flags, *cfg.extra_args]


def plan_launch(cfg: ComputeConfig, stage: str, args: Sequence[str], gpus: int,
                env: Mapping[str, str] | None = None, hostnames: Callable[[str], list[str]] | None = None) -> LaunchPlan:
    """What ``cxrpipe launch <stage> <args>`` runs under ``cfg`` with ``gpus`` visible GPUs (pure but for
    ``hostnames``, which expands a SLURM node list: ``scontrol show hostnames`` by default)."""
    if stage not in LAUNCHABLE:
        raise LaunchError(f"cxrpipe launch runs {' or '.join(LAUNCHABLE)}, not {stage!r}; run `cxrpipe {stage}`")
    env = os.environ if env is None else env
    target = ["-m", "cxrpipe", stage, *args]
    nodes = int(env.get("SLURM_JOB_NUM_NODES", env.get("SLURM_NNODES", "1")) or 1) if "SLURM_JOB_ID" in env else 1
    if cfg.launcher is Launcher.auto:
        auto = Launcher.slurm if nodes > 1 else Launcher.accelerate if gpus > 1 or cfg.config_file else Launcher.none
        cfg = dataclasses.replace(cfg, launcher=auto)
    if cfg.launcher is Launcher.none:
        return LaunchPlan(None, 1, _gpu_warning(stage, 1, gpus))
    n = _per_node(cfg, gpus)
    if cfg.launcher is Launcher.slurm and "SLURM_JOB_ID" not in env:
        raise LaunchError("compute.launcher is slurm but this is not inside a SLURM job: run it through sbatch "
                          "(cluster/slurm/) or set compute.launcher: accelerate")
    if cfg.launcher is Launcher.accelerate or nodes == 1:
        warn = () if cfg.config_file else _gpu_warning(stage, n, gpus)
        if n == 1 and not cfg.config_file and not cfg.extra_args:
            return LaunchPlan(None, 1, warn)
        return LaunchPlan([*ACCELERATE, *_accelerate_flags(cfg, n), *target], n, warn)
    head = (hostnames or _slurm_hostnames)(env["SLURM_JOB_NODELIST"])[0]
    flags = _accelerate_flags(cfg, n * nodes, nodes)
    if not cfg.config_file:
        flags += ["--rdzv_backend", "static", "--same_network", "--main_process_ip", head]
    # one task per node; its rank is only known there ($SLURM_NODEID), so the command goes through a shell.
    # --overlap: the step shares the node with the batch step that runs DVC
    remote = shlex.join([*ACCELERATE, *flags]) + ' --machine_rank "$SLURM_NODEID" ' + shlex.join(target)
    argv = ["srun", f"--nodes={nodes}", "--ntasks-per-node=1", "--overlap", "--kill-on-bad-exit=1",
            "bash", "-c", f"exec {remote}"]
    return LaunchPlan(argv, n * nodes, _gpu_warning(stage, n, gpus))


def _slurm_hostnames(nodelist: str) -> list[str]:
    out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True)
    return out.stdout.split()


def params_path(args: Sequence[str]) -> str:
    """The ``--params`` value among a stage's arguments (default ``params.yaml``)."""
    for i, a in enumerate(args):
        if a == "--params" and i + 1 < len(args):
            return args[i + 1]
        if a.startswith("--params="):
            return a.split("=", 1)[1]
    return "params.yaml"
