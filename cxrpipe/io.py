"""Atomic small-file writes, checked caches, folders a stage may replace, file modes, and the errors a user can
cause and fix.

Writes go to a temp file beside the target, then ``os.replace``: a crash or Ctrl-C leaves either the previous
file or the new one, never a half-written one, so DVC and the next stage never read a truncated JSON /
markdown / CSV.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


class UserError(Exception):
    """An error the user can cause and fix (a bad params value, a missing or damaged input, an unsafe archive).

    Its message is one line naming what is wrong and what to do; every stage CLI prints it as
    ``<stage> failed: <message>`` and exits 1, with no traceback (:func:`cxrpipe.log.stage_errors`).
    """


class MissingInputError(UserError, FileNotFoundError):
    """A file or folder a stage reads is not there; the message names the command that makes it."""


def cli_name(stage: str) -> str:
    """The ``cxrpipe`` sub-command of a DVC stage (``pretrain@mae`` -> ``pretrain``, ``zeroshot_prompts`` ->
    ``zeroshot-prompts``)."""
    return stage.split("@")[0].replace("_", "-")


def missing_input(path: str | Path, what: str, stage: str) -> MissingInputError:
    """``<path> not found (<what>): it is made by the `<stage>` stage: run `dvc repro <stage>```."""
    return MissingInputError(f"{path} not found ({what}): it is made by the `{stage.split('@')[0]}` stage: run "
                             f"`dvc repro {stage}` (or `cxrpipe {cli_name(stage)}`)")


# ------------------------------------------------------------------------------------------------ file modes
def current_umask() -> int:
    """The process umask (read from /proc where it can be, so no thread ever sees a changed umask)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def respect_umask(path: str | Path) -> None:
    """Give ``path`` the mode a plain ``open(path, "w")`` would: 0666 minus the umask. safetensors (and
    anything using ``mkstemp``) creates files 0600, which colleagues on a shared file system cannot read."""
    os.chmod(path, 0o666 & ~current_umask())


def respect_umask_tree(folder: str | Path) -> None:
    """:func:`respect_umask` on every file below ``folder``."""
    for f in Path(folder).rglob("*"):
        if f.is_file() and not f.is_symlink():
            respect_umask(f)


def write_text_atomic(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json_atomic(path: str | Path, data: Any, sort_keys: bool = False) -> None:
    """``data`` as indented JSON with a trailing newline."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=sort_keys) + "\n")


def _is_text(v: Any) -> bool:
    return isinstance(v, str) or (isinstance(v, (list, tuple)) and bool(v) and all(isinstance(x, str) for x in v))


def write_metrics_json(path: str | Path, result: dict[str, Any]) -> None:
    """A DVC metrics file of numbers only (so `dvc metrics show` fits a screen): the top-level strings and
    string lists of ``result`` (names, levels, label lists) go to ``<stem>.config.json`` beside it, merged
    into what that file already holds."""
    path = Path(path)
    text = {k: v for k, v in result.items() if _is_text(v)}
    write_json_atomic(path, {k: v for k, v in result.items() if k not in text})
    if text:
        cfg = path.with_name(f"{path.stem}.config.json")
        merged = json.loads(cfg.read_text()) if cfg.exists() else {}
        merged.update(text)
        write_json_atomic(cfg, merged)


# ------------------------------------------------------------------------------------ checked HDF5 caches
# The caches (images.h5, text.h5) are written with HDF5's fletcher32 filter on every dataset (HDF5 checks a
# chunk each time it is read) and file format v110 (checksummed superblock and object headers), and record
# the sha256 of each dataset's bytes as attribute ``sha256_<name>`` (checked in full by ``cxrpipe verify``).
SHA_PREFIX = "sha256_"


def create_h5(path: str | Path) -> Any:
    """A new, truncated ``h5py.File`` in format v110 whose bytes depend on its content only: the root group
    tracks no times (HDF5 < 2.0 stamps its object header with the creation time; datasets track none in
    h5py). The same content written twice gives the same file, byte for byte."""
    import h5py

    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    fapl.set_libver_bounds(h5py.h5f.LIBVER_V110, h5py.h5f.LIBVER_V110)
    fcpl = h5py.h5p.create(h5py.h5p.FILE_CREATE)
    fcpl.set_obj_track_times(False)
    return h5py.File(h5py.h5f.create(str(path).encode(), h5py.h5f.ACC_TRUNC, fapl=fapl, fcpl=fcpl))


class CorruptFileError(UserError, RuntimeError):
    """A cache file is truncated, bit-flipped, or not what it claims to be; the message says how to rebuild it."""


def corrupt_error(path: str | Path, stage: str, detail: str) -> CorruptFileError:
    return CorruptFileError(
        f"{path} is unreadable or corrupt ({detail}). It is made by the `{stage.split('@')[0]}` stage: rebuild it "
        f"with `dvc repro -f {stage}` (or delete it and run `cxrpipe {cli_name(stage)}` again)."
    )


def sha256_rows(dataset: Any, rows_per_block: int = 1024) -> str:
    """sha256 of a dataset's C-order bytes, read ``rows_per_block`` rows at a time (bounded memory)."""
    import hashlib

    import numpy as np

    h = hashlib.sha256()
    n = dataset.shape[0] if dataset.shape else 0
    for a in range(0, n, rows_per_block):
        h.update(np.ascontiguousarray(dataset[a : a + rows_per_block]).tobytes())
    return h.hexdigest()


def verify_checksums(f: Any, path: str | Path, stage: str, open_dataset: Any = None) -> dict[str, str]:
    """Recompute every ``sha256_<name>`` recorded in the open HDF5 file ``f``; raise on the first mismatch.

    Returns ``{dataset: sha256}``. A file recording none is refused (written before checksums existed).
    ``open_dataset(f, name)`` opens a dataset (default ``f[name]``; the linked text cache resolves its part
    files through it).
    """
    open_dataset = open_dataset or (lambda f_, name: f_[name])
    names = sorted(k[len(SHA_PREFIX):] for k in f.attrs if str(k).startswith(SHA_PREFIX))
    if not names:
        raise corrupt_error(path, stage, "no checksums recorded: written by an older cxrpipe")
    out = {}
    for name in names:
        if name not in f:
            raise corrupt_error(path, stage, f"dataset '{name}' is missing")
        try:
            got = sha256_rows(open_dataset(f, name))
        except OSError as e:
            raise corrupt_error(path, stage, f"dataset '{name}': {e}") from None
        want = f.attrs[SHA_PREFIX + name]
        want = want.decode() if isinstance(want, bytes) else str(want)
        if got != want:
            raise corrupt_error(path, stage, f"dataset '{name}' has sha256 {got[:12]}..., recorded {want[:12]}...")
        out[name] = got
    return out


# ------------------------------------------------------------------------------ folders a stage may replace
MARKER = ".made-by-cxrpipe"  # written into every output folder a stage replaces wholesale


class UnsafeRemoveError(UserError, RuntimeError):
    """A stage was asked to replace a folder it did not create."""


def mark_created(folder: str | Path, stage: str) -> None:
    """Record in ``folder`` that ``stage`` made it (so a later run may replace it)."""
    (Path(folder) / MARKER).write_text(f"{stage}\n")


def check_replaceable(folder: str | Path, stage: str) -> None:
    """Raise :class:`UnsafeRemoveError` unless ``folder`` is absent, empty, or made by ``stage``."""
    folder = Path(folder)
    if not folder.exists() and not folder.is_symlink():
        return
    if folder.is_symlink() or not folder.is_dir():
        raise UnsafeRemoveError(f"{folder} is not a folder made by the {stage} stage; not replacing it")
    marker = folder / MARKER
    if not (marker.is_file() and marker.read_text().strip() == stage) and any(folder.iterdir()):
        raise UnsafeRemoveError(
            f"{folder} exists and was not made by the {stage} stage (no {MARKER}); not replacing it. "
            "Remove it yourself or choose another --out."
        )


def remove_created_folder(folder: str | Path, stage: str) -> None:
    """``shutil.rmtree(folder)`` only when ``stage`` made it (its marker file) or it is empty; a missing folder
    is fine. Anything else (a user-given ``--out`` pointing at their own files) is refused, untouched."""
    import shutil

    check_replaceable(folder, stage)
    folder = Path(folder)
    if folder.is_dir():
        shutil.rmtree(folder)
