"""What a stage reads, checked before any work: there, readable, and (for an encoder) which one it is.

Every check raises a :class:`~cxrpipe.io.UserError` whose one-line message names the path and the command that
makes it (``dvc repro <stage>``), which the stage CLIs print without a traceback. The checks are cheap: a
folder's files exist, a JSON parses, a safetensors header matches the file's size, an HDF5 cache opens.

An encoder's NAME (:func:`encoder_name`) comes from its own ``config.json``, not from where it is read: the
``variant`` pretraining recorded (``mae``, ``multimodal``, ``random``), or the folder's name when that starts
with the variant (``mae-seed1``). Outputs are named from it, and the stages that gather runs
(``compare``, ``label_efficiency_summary``, ``transfer_compare``) refuse a file whose recorded encoder is not
the one its name says (:func:`check_recorded_encoder`): ``cxrpipe finetune --encoder data/models/multimodal``
no longer writes ``mae-linear.json``, and a file so named by hand is not compared as mae's.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from cxrpipe.io import UserError, corrupt_error, missing_input

log = logging.getLogger(__name__)

ENCODER_FILES = ("config.json", "encoder.safetensors")
HEAD_FILES = ("text_head.json", "text_head.safetensors")
MANIFEST_FILES = ("studies.csv", "images.csv", "images.h5")


class WrongEncoderError(UserError):
    """A run's recorded encoder is not the one the file's name (or the folder it is read from) says."""


def read_json(path: str | Path, what: str, stage: str) -> Any:
    """The parsed JSON file ``path``; a missing or unparsable one is a one-line error naming ``stage``."""
    path = Path(path)
    if not path.is_file():
        raise missing_input(path, what, stage)
    try:
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise corrupt_error(path, stage, f"not valid JSON: {e}") from None


def check_safetensors(path: str | Path, what: str, stage: str) -> None:
    """``path`` is there and whole: its header parses and the arrays it lists end where the file ends."""
    path = Path(path)
    if not path.is_file():
        raise missing_input(path, what, stage)
    try:
        with path.open("rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n)) if 0 < n < 100_000_000 else None
        ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"] if header else None
    except (ValueError, UnicodeDecodeError, KeyError, TypeError, IndexError) as e:
        raise corrupt_error(path, stage, f"safetensors header: {type(e).__name__}: {e}") from None
    if ends is None or 8 + n + max(ends, default=0) != path.stat().st_size:
        raise corrupt_error(path, stage, f"not a whole safetensors file ({path.stat().st_size} bytes)")


# ------------------------------------------------------------------------------------------------- prepared
def prepared_stage(folder: str | Path) -> str:
    """The DVC stage that writes a prepared folder: ``prepare``, or ``transfer_prepare@<name>`` for
    ``data/transfer/<name>``."""
    folder = Path(folder)
    return f"transfer_prepare@{folder.name}" if folder.parent.name == "transfer" else "prepare"


def require_manifest(folder: str | Path, stage: str | None = None) -> Path:
    """A prepared folder whose ``studies.csv`` is there with its header (what ``embed`` reads)."""
    from cxrpipe.data.manifest import read_label_names

    folder = Path(folder)
    stage = stage or prepared_stage(folder)
    if not (folder / "studies.csv").is_file():
        raise missing_input(folder / "studies.csv", f"the prepared folder {folder}", stage)
    try:
        read_label_names(folder)
    except (ValueError, UnicodeDecodeError, StopIteration) as e:
        raise corrupt_error(folder / "studies.csv", stage, f"{type(e).__name__}: {e}") from None
    return folder


def require_prepared(folder: str | Path, stage: str | None = None) -> Path:
    """A prepared folder (manifest + image cache) that opens; ``stage`` makes it (default: :func:`prepared_stage`)."""
    from cxrpipe.data.image_cache import ImageCache

    folder = Path(folder)
    stage = stage or prepared_stage(folder)
    for name in MANIFEST_FILES:
        if not (folder / name).is_file():
            raise missing_input(folder / name, f"the prepared folder {folder}", stage)
    require_manifest(folder, stage)
    ImageCache(folder / "images.h5")  # schema, completeness, shapes: one-line errors of its own
    return folder


# -------------------------------------------------------------------------------------------------- encoders
def encoder_stage(folder: str | Path) -> str:
    """The DVC stage that writes an encoder folder, from its name (``data/models/<name>``)."""
    name = Path(folder).name
    base, _, seed = name.partition("-seed")
    if base == "random":
        return f"random_encoder_seeds@{seed}" if seed.isdigit() else "random_encoder"
    if base in ("mae", "multimodal"):
        return f"pretrain_seeds@{base}-{seed}" if seed.isdigit() else f"pretrain@{base}"
    return "pretrain"


def require_encoder(folder: str | Path, heads: bool = False) -> str:
    """An exported encoder folder (``config.json`` + ``encoder.safetensors``; with ``heads`` the text side too)
    that is whole; returns its :func:`encoder_name`."""
    folder = Path(folder)
    stage = encoder_stage(folder)
    if not folder.is_dir():
        raise missing_input(folder, "encoder folder", stage)
    config = read_json(folder / "config.json", "the encoder's config", stage)
    if not isinstance(config, dict) or not {"arch", "kwargs"} <= set(config):
        raise corrupt_error(folder / "config.json", stage, "no 'arch' / 'kwargs': not an exported encoder")
    check_safetensors(folder / "encoder.safetensors", "the encoder's weights", stage)
    if heads:
        read_json(folder / "text_head.json", "the exported text side (pooling heads)", stage)
        check_safetensors(folder / "text_head.safetensors", "the exported text side (pooling heads)", stage)
    return encoder_name(folder, config)


def encoder_name(folder: str | Path, config: dict | None = None) -> str:
    """The encoder's own name (see the module doc): ``config.json``'s variant, or the folder's name when it
    starts with the variant (``mae-seed1``); the folder's name when no variant is recorded."""
    folder = Path(folder)
    if config is None:
        config = read_json(folder / "config.json", "the encoder's config", encoder_stage(folder))
    variant = str(config.get("variant") or "")
    if not variant or folder.name == variant or folder.name.startswith(variant + "-"):
        return folder.name
    log.warning("%s holds a %r encoder (its config.json): outputs are named %r, not after the folder", folder,
                variant, variant)
    return variant


def run_encoder(name: str) -> str:
    """The encoder a run's name says: ``mae-linear-seed1`` -> ``mae`` (encoder names hold no dash)."""
    return name.split("-")[0]


def check_recorded_encoder(path: str | Path, recorded: Any, expected: str, stage: str) -> None:
    """Refuse a run file read as encoder ``expected`` whose recorded encoder (its variant) is another one."""
    if recorded is not None and run_encoder(str(recorded)) != run_encoder(expected):
        raise WrongEncoderError(
            f"{path} was made by encoder {recorded!r} but is read as {expected!r} (a stage run by hand with "
            f"another --encoder than its output's name says?): remake it with `dvc repro {stage}`")


def run_stage(name: str) -> str:
    """The DVC stage that writes the finetune-format run ``name`` (``mae-linear`` -> ``finetune@mae-linear``,
    ``mae-linear-seed1`` -> ``finetune_seeds@mae-linear-1``, ``pixels`` -> ``pixels``)."""
    base, _, seed = name.partition("-seed")
    if name == "pixels":
        return "pixels"
    return f"finetune_seeds@{base}-{seed}" if seed.isdigit() else f"finetune@{name}"


def load_run_predictions(path: str | Path, name: str, **kwargs: Any) -> Any:
    """:func:`~cxrpipe.evaluate.stats.metrics.load_predictions` of run ``name``'s test predictions, refused in
    one line when missing, damaged, or made by another encoder than ``name`` says."""
    import zipfile

    from cxrpipe.evaluate.stats.metrics import load_predictions

    path, stage = Path(path), run_stage(name)
    if not path.is_file():
        raise missing_input(path, f"test predictions of {name}", stage)
    try:
        pred, meta = load_predictions(path, **kwargs)
    except (zipfile.BadZipFile, EOFError, KeyError, OSError) as e:
        raise corrupt_error(path, stage, f"{type(e).__name__}: {e}") from None
    check_recorded_encoder(path, meta.get("encoder"), name, stage)
    return pred, meta
