"""Logging set-up, once per stage process (only the main process, rank 0, logs at INFO), and the one-line
report of an error the user can fix."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import Iterator


def setup_logging(level: int = logging.INFO) -> None:
    rank = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))
    logging.basicConfig(
        level=level if rank == 0 else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


@contextlib.contextmanager
def stage_errors(stage: str, also: tuple[type[Exception], ...] = ()) -> Iterator[None]:
    """Inside it, a :class:`~cxrpipe.io.UserError` (bad params, a missing or damaged input, ...), or one of
    ``also`` (a stage's own documented refusals), ends the stage with ``<stage> failed: <message>`` on ONE
    line of stderr and exit code 1, no traceback. Anything else is a bug and keeps its traceback."""
    from cxrpipe.io import UserError

    try:
        yield
    except (UserError, *also) as e:
        print(f"{stage} failed: {' '.join(str(e).split())}", file=sys.stderr)
        raise SystemExit(1) from None
