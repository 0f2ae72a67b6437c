"""Per-stage wall and import time of a DVC run: where the pipeline's seconds go.

    python benchmarks/stage_times.py --out stage-times.json --save-log stage-times.log -- dvc repro
    python benchmarks/stage_times.py -- dvc repro -f -s compare        # one stage, forced
    python benchmarks/stage_times.py --log stage-times.log --top 5     # analyse a saved log, run nothing

Runs the command (default ``dvc repro``) in the current folder with ``PYTHONPROFILEIMPORTTIME=1`` (Python's
``-X importtime``) and ``PYTHONUNBUFFERED=1`` in its environment, which DVC passes on to every stage's
command, reads its combined stdout and stderr line by line, stamps each line with the seconds since the start
(``--save-log`` writes ``<seconds>\\t<line>``), echoes every line but the ``import time:`` ones (thousands per
stage) so the run still shows its progress, and splits the output at DVC's lines:

- ``Running stage '<name>':`` starts a stage; its **wall** runs to DVC's ``Updating lock file`` (or
  ``Generating lock file``) line after it, i.e. the command plus DVC's caching of its outputs; a stage
  that failed or has no such line ends at its last line.
- ``Stage '<name>' didn't change, skipping`` and ``Stage '<name>' is cached - skipping run, checking out
  outputs`` (the run cache) count 0 and are listed apart; checking out a cached stage's outputs counts as
  DVC overhead.
- **DVC overhead** = pipeline wall - sum of stage walls: DVC's start-up and its work between stages (the
  time from one stage's lock-file line to the next ``Running stage``) and after the last.

A stage's **import** seconds are the sum of the cumulative times of the top-level ``import time:`` lines
printed inside that stage (all of its Python processes: ``cxrpipe``, workers it spawns). Python writes
``import time: <self us> | <cumulative us> | <indent><module>`` once an import finishes, children before their
parent, the module name indented by two spaces per nesting level after the one space that follows the second
``|``. A line with exactly that one space is a top-level import whose cumulative time already contains its
nested imports, so only those lines are summed and nested ones are never counted twice. ``--top N`` lists a
stage's N largest top-level imports. A module loaded through ``importlib.import_module`` (how ``cxrpipe``
loads ``stages/``) prints no line of its own: its imports appear as top-level lines and are counted, its own
body is not (milliseconds).

When the command starts with ``dvc``, DVC runs inside this Python (``dvc.cli.main``) and the variable is set
after its start-up, so DVC's own imports (its start-up, and the modules it loads lazily while it caches a
stage's outputs) are not counted as a stage's; only the stages' processes print import times. Any other
command simply gets the variable, and every Python in it is profiled.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

RUNNING = re.compile(r"^Running stage '(?P<name>.+)':$")
SKIPPED = re.compile(r"^(?:Stage )?'(?P<name>.+)' didn't change, skipping$")
CACHED = re.compile(r"^Stage '(?P<name>.+)' is cached - skipping run, checking out outputs$")
LOCK = re.compile(r"^(?:Updating|Generating) lock file ")
# "import time:    self |  cumulative | <2 spaces per level>module"; the header line has no digits
IMPORT = re.compile(r"^import time:\s+(?P<self>\d+) \|\s+(?P<cum>\d+) \|(?P<indent> +)(?P<module>\S+)")
IMPORT_HEADER = "import time: self [us] | cumulative | imported package"
# DVC inside this Python: the variable is set after this interpreter started, so only its children see it
DVC_IN_PROCESS = ("import os, sys; os.environ['PYTHONPROFILEIMPORTTIME'] = '1'; "
                  "from dvc.cli import main; sys.exit(main(sys.argv[1:]))")


@dataclass
class Stage:
    name: str
    status: str  # "ran", "skipped" (didn't change) or "cached" (restored from DVC's run cache)
    start_s: float
    end_s: float
    import_us: int = 0  # sum of the top-level imports' cumulative microseconds
    processes: int = 0  # Python processes that printed import times (one header line each)
    imports: dict[str, int] = field(default_factory=dict)  # top-level module -> cumulative us, summed

    @property
    def wall_s(self) -> float:
        return self.end_s - self.start_s if self.status == "ran" else 0.0

    @property
    def import_s(self) -> float:
        return self.import_us / 1e6


def stamped(lines: Iterable[str]) -> Iterator[tuple[float, str]]:
    """(seconds, line) from a saved log: ``<seconds>\\t<line>``; ``# `` lines are the log's own notes."""
    for i, raw in enumerate(lines, 1):
        raw = raw.rstrip("\n")
        if raw.startswith("# ") or not raw:
            continue
        t, _, line = raw.partition("\t")
        try:
            yield float(t), line
        except ValueError:
            raise ValueError(f"line {i} is not '<seconds><tab><line>': not a log written by --save-log") from None


def split_stages(log: Iterable[tuple[float, str]]) -> tuple[list[Stage], float]:
    """The stages of a timestamped output, in order, and the last timestamp (the pipeline's wall)."""
    stages: list[Stage] = []
    current: Stage | None = None  # the stage whose command is running
    attributed: Stage | None = None  # where import lines go: the last stage started
    last_t = 0.0
    for t, line in log:
        last_t = t
        line = line.rstrip("\r")
        if m := RUNNING.match(line):
            current = attributed = Stage(m["name"], "ran", t, t)
            stages.append(current)
        elif m := SKIPPED.match(line):
            stages.append(Stage(m["name"], "skipped", t, t))
            current = None
        elif m := CACHED.match(line):
            stages.append(Stage(m["name"], "cached", t, t))
            current = None
        elif current is not None and LOCK.match(line):
            current.end_s = t
            current = None
        elif current is not None:
            current.end_s = t
        if attributed is None:
            continue
        if line.startswith(IMPORT_HEADER):
            attributed.processes += 1
        elif (m := IMPORT.match(line)) and m["indent"] == " ":
            attributed.import_us += int(m["cum"])
            attributed.imports[m["module"]] = attributed.imports.get(m["module"], 0) + int(m["cum"])
    return stages, last_t


def summary(stages: list[Stage], wall_s: float) -> dict:
    ran = [s for s in stages if s.status == "ran"]
    stage_wall = sum(s.wall_s for s in ran)
    imports = sum(s.import_s for s in ran)
    return {"wall_s": wall_s, "stage_wall_s": stage_wall, "import_s": imports,
            "import_share_of_wall": imports / wall_s if wall_s else 0.0,
            "dvc_overhead_s": wall_s - stage_wall, "stages_run": len(ran),
            "stages_skipped": [s.name for s in stages if s.status == "skipped"],
            "stages_cached": [s.name for s in stages if s.status == "cached"]}


def table(stages: list[Stage], totals: dict, top: int = 0) -> str:
    ran = [s for s in stages if s.status == "ran"]
    width = max([len(s.name) for s in ran] + [len("stage")])
    out = [f"{'stage':<{width}}  {'wall s':>8}  {'import s':>8}  {'import %':>8}  {'procs':>5}"]
    for s in ran:
        share = 100 * s.import_s / s.wall_s if s.wall_s else 0.0
        out.append(f"{s.name:<{width}}  {s.wall_s:>8.2f}  {s.import_s:>8.2f}  {share:>8.1f}  {s.processes:>5}")
    w = totals["wall_s"]
    out.append(f"pipeline wall {w:.2f} s; {totals['stages_run']} stages ran, {totals['stage_wall_s']:.2f} s; "
               f"imports {totals['import_s']:.2f} s ({100 * totals['import_share_of_wall']:.1f}% of the wall); "
               f"DVC overhead {totals['dvc_overhead_s']:.2f} s")
    for status, why in (("skipped", "didn't change"), ("cached", "restored from the run cache")):
        names = totals[f"stages_{status}"]
        if names:
            out.append(f"{status} ({why}, counted 0): {', '.join(names)}")
    for s in ran if top else []:
        biggest = sorted(s.imports.items(), key=lambda kv: -kv[1])[:top]
        out.append(f"{s.name}: " + ", ".join(f"{mod} {us / 1e6:.2f} s" for mod, us in biggest))
    return "\n".join(out)


def command_line(cmd: list[str]) -> tuple[list[str], dict]:
    """What to run and its environment (see the module's docstring on ``dvc``)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if Path(cmd[0]).name == "dvc" and importlib.util.find_spec("dvc") is not None:
        env.pop("PYTHONPROFILEIMPORTTIME", None)
        return [sys.executable, "-c", DVC_IN_PROCESS, *cmd[1:]], env
    return cmd, dict(env, PYTHONPROFILEIMPORTTIME="1")


def run(cmd: list[str], save_log: Path | None) -> tuple[list[tuple[float, str]], int]:
    """Runs ``cmd``, echoing its output (but the import-time lines); the timestamped lines and its exit code."""
    argv, env = command_line(cmd)
    lines: list[tuple[float, str]] = []
    log = open(save_log, "w") if save_log else None
    if log:
        log.write(f"# stage_times.py: {' '.join(cmd)}\n# started {time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n")
    t0 = time.monotonic()
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True,
                          errors="replace", bufsize=1) as proc:
        for raw in proc.stdout:
            t, line = time.monotonic() - t0, raw.rstrip("\n")
            lines.append((t, line))
            if log:
                log.write(f"{t:.3f}\t{line}\n")
            if not line.startswith("import time:"):
                print(line, flush=True)
    t_end = time.monotonic() - t0
    lines.append((t_end, ""))  # the end of the run, so that the wall counts up to the exit
    if log:
        log.write(f"{t_end:.3f}\t\n# exit {proc.returncode}\n")
        log.close()
    return lines, proc.returncode


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, help="write the per-stage times and totals as JSON")
    ap.add_argument("--save-log", type=Path, help="write the timestamped output (for --log)")
    ap.add_argument("--log", type=Path, help="analyse a log written by --save-log; run nothing")
    ap.add_argument("--top", type=int, default=0, help="list each stage's N largest top-level imports")
    ap.add_argument("cmd", nargs=argparse.REMAINDER, help="the command, after -- (default: dvc repro)")
    args = ap.parse_args()
    cmd = (args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd) or ["dvc", "repro"]
    rc = 0
    if args.log:
        if not args.log.is_file():
            sys.exit(f"--log {args.log}: no such file; write one with --save-log")
        try:
            lines = list(stamped(args.log.read_text(errors="replace").splitlines()))
        except ValueError as e:
            sys.exit(f"--log {args.log}: {e}")
    else:
        lines, rc = run(cmd, args.save_log)
    stages, wall = split_stages(lines)
    totals = summary(stages, wall)
    print(table(stages, totals, args.top))
    if args.out:
        record = {"command": None if args.log else cmd, "log": str(args.log) if args.log else None, "rc": rc,
                  **totals, "stages": [dict(asdict(s), wall_s=s.wall_s, import_s=s.import_s) for s in stages]}
        if not args.log:  # the machine it ran on (a saved log's machine is not known)
            from cxrpipe.versions import cpu_identity, package_versions

            record["machine"] = {"cpu": cpu_identity(), "versions": package_versions()}
        args.out.write_text(json.dumps(record, indent=1) + "\n")
    sys.exit(rc)


if __name__ == "__main__":
    main()
