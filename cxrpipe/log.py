"""Logging set-up, once per stage process; only the main process (rank 0) logs at INFO."""

from __future__ import annotations

import logging
import os


def setup_logging(level: int = logging.INFO) -> None:
    rank = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))
    logging.basicConfig(
        level=level if rank == 0 else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
