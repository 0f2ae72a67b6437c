"""Progress output: a tqdm bar on a terminal, one log line per interval with rate and ETA in a batch log."""

from __future__ import annotations

import io
import sys

import pytest

from cxrpipe.progress import LogProgress, progress


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_batch_log_gets_one_line_per_interval_with_rate_and_eta():
    clock, lines = Clock(), []
    bar = LogProgress(total=1000, desc="embed", unit="tok", interval=30, clock=clock, emit=lines.append)
    for _ in range(100):  # 100 s at 10 tok/s
        clock.t += 1
        bar.update(10)
    assert len(lines) == 3  # at 30, 60 and 90 s: not one per update
    assert lines[0] == "embed: 300/1,000 tok (30%), 10 tok/s, 0:00:30 elapsed, ETA 0:01:10"
    assert all("\r" not in line for line in lines)


def test_postfix_and_unknown_total():
    clock, lines = Clock(), []
    bar = LogProgress(range(5), desc="mae epoch 1/30", unit="step", interval=1, clock=clock, emit=lines.append)
    assert bar.total == 5
    free = LogProgress(desc="decode", unit="img", interval=1, clock=clock, emit=lines.append)
    clock.t = 2
    free.set_postfix(loss="0.51")
    free.update(4)
    assert lines == ["decode: 4 img, 2 img/s, 0:00:02 elapsed | loss=0.51"]  # no total: no ETA


def test_terminal_gets_a_bar_a_log_gets_lines_and_other_ranks_nothing(monkeypatch):
    from tqdm.auto import tqdm

    monkeypatch.delenv("CXRPIPE_PROGRESS", raising=False)
    assert isinstance(progress(range(3), stream=Terminal()), tqdm)
    plain = progress(range(3), stream=io.StringIO())
    assert isinstance(plain, LogProgress) and list(plain) == [0, 1, 2]
    silent = progress(range(3), stream=Terminal(), enabled=False)
    assert not isinstance(silent, tqdm) and list(silent) == [0, 1, 2]
    monkeypatch.setenv("CXRPIPE_PROGRESS", "log")  # forced
    assert isinstance(progress(range(3), stream=Terminal()), LogProgress)


def test_a_pipeline_loop_logs_lines_not_bars(monkeypatch, caplog, tmp_path):
    """The demo generator's loop under a non-terminal stderr: log lines, never a bar's carriage returns."""
    import logging

    from cxrpipe.data.demo.tree import DemoConfig, write_demo_tree

    monkeypatch.setenv("CXRPIPE_PROGRESS_SECONDS", "0")
    monkeypatch.setattr("sys.stderr", io.StringIO())
    with caplog.at_level(logging.INFO, logger="cxrpipe.progress"):
        write_demo_tree(DemoConfig(n_studies=6, image_size=64, n_dicom=0, n_corrupt=0), tmp_path / "demo")
    lines = [r.getMessage() for r in caplog.records if r.name == "cxrpipe.progress"]
    assert lines and lines[-1].startswith("demo studies: 6/6 study (100%)") and "study/s" in lines[-1]
    assert "\r" not in sys.stderr.getvalue()


@pytest.mark.parametrize("n,unit,text", [(1234567, "tok", "1.2M tok"), (999, "img", "999 img")])
def test_counts_read_well(n, unit, text):
    from cxrpipe.progress import _count

    assert _count(n, unit) == text
