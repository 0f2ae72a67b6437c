"""The embed stage as real processes: SIGKILLed part-way then rerun, and 2 processes vs 1 (accelerate)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from cxrpipe.text.embed import DELAY_ENV, EmbedConfig, parts_dir, run_embed

from .test_embed import SECTIONS, assert_same_cache

pytestmark = pytest.mark.slow


@pytest.fixture
def setup(tiny_model_dir, manifest_dir, tmp_path):
    """params.yaml for the tiny model (fp32, many small parts) and the uninterrupted in-process reference."""
    embed = dict(model=str(tiny_model_dir), quantization="fp32", prompt="The findings are:", max_tokens=192,
                 batch_tokens=100, part_tokens=40)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"data": {"sections": list(SECTIONS)}, "embed": embed}))
    ref = tmp_path / "ref.h5"
    summary = run_embed(EmbedConfig(**embed), manifest_dir, ref, SECTIONS, progress=False)
    assert summary.n_parts >= 5
    return params, manifest_dir, ref, summary.n_parts


def embed_cmd(params, manifest, out, launcher=()) -> list[str]:
    return [*launcher, "-m", "cxrpipe", "embed", "--params", str(params), "--manifest", str(manifest),
            "--out", str(out), "--report", str(out.with_suffix(".json"))]


def test_sigkill_part_way_then_rerun_equals_uninterrupted(setup, tmp_path):
    params, manifest, ref, n_parts = setup
    out = tmp_path / "text.h5"
    env = dict(os.environ, **{DELAY_ENV: "0.5"})  # ~0.5 s per part: room to kill it part-way
    proc = subprocess.Popen(embed_cmd(params, manifest, out, [sys.executable]), env=env, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(parts_dir(out).glob("part-*.h5")):
        assert proc.poll() is None, "embed ended before writing a part"
        assert time.monotonic() < deadline, "no part written in 120 s"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = list(parts_dir(out).glob("part-*.h5"))
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists() and 1 <= len(done) < n_parts  # really killed part-way

    rerun = subprocess.run(embed_cmd(params, manifest, out, [sys.executable]), cwd=tmp_path, capture_output=True,
                           text=True)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert '"n_parts_reused": %d' % len(done) in out.with_suffix(".json").read_text()
    assert len(list(parts_dir(out).glob("part-*.h5"))) == n_parts  # the linked cache's data
    assert_same_cache(out, ref, atol=1e-3)


def test_two_processes_give_the_same_cache_as_one(setup, tmp_path):
    params, manifest, ref, _ = setup
    out = tmp_path / "text2.h5"
    # on a CPU machine `--multi_gpu` is what makes accelerate start N processes (through torchrun); without
    # CUDA, run_embed joins them in a gloo group
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                "--main_process_port", str(29500 + os.getpid() % 1000)]
    res = subprocess.run(embed_cmd(params, manifest, out, launcher), cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    assert '"n_processes": 2' in out.with_suffix(".json").read_text()
    assert_same_cache(out, ref, atol=1e-3)


def _descendants(pid: int) -> list[int]:
    """Process ids below ``pid`` (Linux /proc), depth first."""
    out = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            children = open(f"/proc/{pid}/task/{task}/children").read().split()
        except OSError:
            continue
        for c in map(int, children):
            out += [c, *_descendants(c)]
    return out


def _embed_ranks(launcher_pid: int) -> list[int]:
    """The launched `cxrpipe embed` worker processes (not torchrun's agent)."""
    ranks = []
    for p in _descendants(launcher_pid):
        try:
            cmd = open(f"/proc/{p}/cmdline").read().split("\0")
        except OSError:
            continue
        if "cxrpipe" in cmd and "embed" in cmd and "accelerate.commands.launch" not in cmd:
            ranks.append(p)
    return ranks


def test_one_of_two_processes_sigkilled_then_relaunched_equals_one_process(setup, tmp_path):
    """A node dying mid-run: torchrun stops the other rank, the parts already written stay; the same launch
    again finishes the remaining parts only, and the cache equals a 1-process run."""
    params, manifest, ref, n_parts = setup
    out = tmp_path / "text2.h5"
    port = 29500 + (os.getpid() + 7) % 1000
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                "--main_process_port", str(port)]
    env = dict(os.environ, **{DELAY_ENV: "0.5"})
    proc = subprocess.Popen(embed_cmd(params, manifest, out, launcher), env=env, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not list(parts_dir(out).glob("part-*.h5")):
        assert proc.poll() is None, "embed ended before writing a part"
        assert time.monotonic() < deadline, "no part written in 240 s"
        time.sleep(0.05)
    ranks = _embed_ranks(proc.pid)
    assert len(ranks) == 2, ranks
    os.kill(ranks[-1], signal.SIGKILL)  # one "node" dies
    assert proc.wait(timeout=120) != 0  # the launcher notices and stops the survivor
    done = list(parts_dir(out).glob("part-*.h5"))
    assert not out.exists() and 1 <= len(done) < n_parts

    res = subprocess.run(embed_cmd(params, manifest, out, launcher), cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    assert '"n_parts_reused": %d' % len(done) in out.with_suffix(".json").read_text()
    assert_same_cache(out, ref, atol=1e-3)
