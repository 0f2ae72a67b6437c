"""Atomic small-file writes: a temp file beside the target, then ``os.replace``.

A crash or Ctrl-C leaves either the previous file or the new one, never a half-written one, so DVC and
the next stage never read a truncated JSON / markdown / CSV.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_text_atomic(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json_atomic(path: str | Path, data: Any, sort_keys: bool = False) -> None:
    """``data`` as indented JSON with a trailing newline."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=sort_keys) + "\n")
