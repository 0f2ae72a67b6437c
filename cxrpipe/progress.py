"""Progress of the long loops, fit for a terminal and for a batch log alike.

On a terminal (stderr is a TTY) :func:`progress` is a tqdm bar. Without one (SLURM, ``nohup``, DVC's
captured output, CI) a bar redraws itself into the log hundreds of times; there it logs one line every
``CXRPIPE_PROGRESS_SECONDS`` (default 30) instead, with the rate and the time left::

    12:03:41 INFO cxrpipe.progress: embed: 1.2M/27.5M tok (4%), 1,859 tok/s, 0:10:45 elapsed, ETA 3:55:01

``CXRPIPE_PROGRESS=bar|log|off`` forces a form. Every long loop (decode, embed, pretraining steps,
fine-tuning epochs, the demo generator) goes through here; only the main process shows anything.
"""

from __future__ import annotations

import datetime
import logging
import os
import sys
import time
from typing import Any, Callable, Iterable, Iterator

log = logging.getLogger(__name__)

MODE_ENV = "CXRPIPE_PROGRESS"
SECONDS_ENV = "CXRPIPE_PROGRESS_SECONDS"
DEFAULT_SECONDS = 30.0


def _mode(stream: Any) -> str:
    forced = os.environ.get(MODE_ENV, "").strip().lower()
    if forced in ("bar", "log", "off"):
        return forced
    return "bar" if getattr(stream, "isatty", lambda: False)() else "log"


def _count(n: float, unit: str) -> str:
    """1234567 tok -> '1.2M tok'; counts below 10,000 as they are ('9,999 tok')."""
    if abs(n) >= 1e4:
        for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
            if abs(n) >= scale:
                return f"{n / scale:.1f}{suffix} {unit}"
    return f"{n:,.0f} {unit}"


def _clock(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(round(seconds))))


class LogProgress:
    """tqdm's interface (``update``, ``set_postfix``, ``close``, iteration) that logs one line per interval."""

    def __init__(self, iterable: Iterable | None = None, total: float | None = None, desc: str = "",
                 unit: str = "it", interval: float | None = None, clock: Callable[[], float] = time.monotonic,
                 emit: Callable[[str], None] | None = None):
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total, self.desc, self.unit = total, desc, unit
        seconds = os.environ.get(SECONDS_ENV, "")
        self.interval = interval if interval is not None else float(seconds) if seconds else DEFAULT_SECONDS
        self.clock, self.emit = clock, emit or log.info
        self.n = 0.0
        self.postfix = ""
        self.start = self.last = clock()

    def __iter__(self) -> Iterator:
        for item in self.iterable or ():
            yield item
            self.update()

    def __enter__(self) -> "LogProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def update(self, n: float = 1) -> None:
        self.n += n
        now = self.clock()
        if now - self.last >= self.interval:
            self.last = now
            self.emit(self.line(now))

    def line(self, now: float) -> str:
        """'<desc>: <done>/<total> <unit> (<pct>), <rate> <unit>/s, <elapsed> elapsed, ETA <left>[ | postfix]'."""
        elapsed = max(now - self.start, 1e-9)
        rate = self.n / elapsed
        done = _count(self.n, self.unit)
        if self.total:
            done = f"{_count(self.n, '').strip()}/{_count(self.total, self.unit)} ({100 * self.n / self.total:.0f}%)"
        speed = f"{rate:,.0f}" if rate >= 1000 else f"{rate:.3g}"
        text = f"{self.desc}: {done}, {speed} {self.unit}/s, {_clock(elapsed)} elapsed"
        if self.total and rate > 0:
            text += f", ETA {_clock((self.total - self.n) / rate)}"
        return text + (f" | {self.postfix}" if self.postfix else "")

    def close(self) -> None:
        pass


class _Silent(LogProgress):
    def update(self, n: float = 1) -> None:
        self.n += n


def progress(iterable: Iterable | None = None, *, total: float | None = None, desc: str = "", unit: str = "it",
             enabled: bool = True, leave: bool = True, stream: Any = None, **tqdm_kwargs: Any) -> Any:
    """A tqdm bar on a terminal, periodic log lines otherwise (see the module doc); ``enabled=False``: silent
    (other ranks). Use it as tqdm: iterate over it, or ``update(n)`` / ``set_postfix(...)`` / ``close()``."""
    stream = stream if stream is not None else sys.stderr
    mode = _mode(stream) if enabled else "off"
    if mode == "bar":
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave, file=stream, **tqdm_kwargs)
    cls = LogProgress if mode == "log" else _Silent
    return cls(iterable, total=total, desc=desc, unit=unit)
