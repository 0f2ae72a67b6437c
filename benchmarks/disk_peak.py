"""Peak disk and wall time of a command: ``du -sb <paths>`` sampled every --interval seconds while it runs.

One ``du`` call over all the paths counts a hard-linked file once (what the disk really holds), so
``data .dvc/cache`` measured together shows whether DVC's cache doubles the outputs.

    python benchmarks/disk_peak.py --paths data .dvc/cache -- dvc repro -s embed

Prints one line: start, peak and end bytes, peak / end, wall seconds. Sampling can miss a peak shorter than
the interval (a file copied and deleted within 0.5 s), so the peak is a lower bound.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time


def disk_bytes(paths: list[str]) -> int:
    """Bytes under ``paths`` (apparent sizes, hard links counted once); missing paths count 0."""
    out = subprocess.run(["du", "-sbc", *paths], capture_output=True, text=True).stdout.strip().splitlines()
    return int(out[-1].split()[0]) if out else 0


def measure(cmd: list[str], paths: list[str], interval: float) -> dict:
    start = disk_bytes(paths)
    samples = [start]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(interval):
            samples.append(disk_bytes(paths))

    t = threading.Thread(target=sample, daemon=True)
    t0 = time.perf_counter()
    t.start()
    rc = subprocess.run(cmd).returncode
    wall = time.perf_counter() - t0
    stop.set()
    t.join()
    end = disk_bytes(paths)
    samples.append(end)
    return {"rc": rc, "start": start, "peak": max(samples), "end": end, "wall_s": wall, "n_samples": len(samples)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--paths", nargs="+", default=["data", ".dvc/cache"])
    ap.add_argument("--interval", type=float, default=0.5)
    ap.add_argument("--label", default="")
    ap.add_argument("cmd", nargs=argparse.REMAINDER, help="the command, after --")
    args = ap.parse_args()
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    r = measure(cmd, args.paths, args.interval)
    mb = 1e6
    grown = r["end"] - r["start"]
    print(f"{'run':<28}{'start MB':>10}{'peak MB':>10}{'end MB':>10}{'peak-start MB':>15}{'end-start MB':>14}"
          f"{'ratio':>7}{'wall s':>8}")
    ratio = (r["peak"] - r["start"]) / grown if grown > 0 else float("nan")
    print(f"{args.label or ' '.join(cmd)[:27]:<28}{r['start'] / mb:>10.1f}{r['peak'] / mb:>10.1f}{r['end'] / mb:>10.1f}"
          f"{(r['peak'] - r['start']) / mb:>15.1f}{grown / mb:>14.1f}{ratio:>7.2f}{r['wall_s']:>8.1f}")
    print(f"# du -sbc {' '.join(args.paths)} every {args.interval} s ({r['n_samples']} samples); rc {r['rc']}")
    sys.exit(r["rc"])


if __name__ == "__main__":
    main()
