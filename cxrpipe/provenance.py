"""What made a resumable state: the package version plus a hash of the source files of the stage.

Every state a stage resumes from (prepare's partial chunks, embed's parts, pretrain's checkpoint) is keyed on
:func:`code_key` of that stage, so a rerun after an edit to the stage's code starts over instead of
continuing (or re-exporting) what the old code made. The file lists mirror the ``deps`` of ``dvc.yaml``
(``tests/test_provenance.py`` checks that every file named there is covered).
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

from cxrpipe import __version__

PACKAGE_ROOT = Path(__file__).resolve().parent  # .../cxrpipe
# per stage: files or folders (every *.py below) relative to the package root
STAGE_SOURCES: dict[str, tuple[str, ...]] = {
    "prepare": (
        "config.py", "io.py", "labels.py", "provenance.py", "data/prepare.py", "data/archives.py", "data/mimic.py",
        "data/images.py", "data/reports.py", "data/manifest.py", "data/image_cache.py", "data/demo_faults.py",
        "data/records.py", "data/registry.py", "data/splits.py", "data/iuxray.py", "data/nih.py", "data/chexpert.py",
        "data/rsna.py",
    ),
    "embed": (
        "config.py", "io.py", "inputs.py", "provenance.py", "cpu.py", "text", "data/prepare.py",
        "data/manifest.py", "data/reports.py",
    ),
    "pretrain": (
        "config.py", "io.py", "inputs.py", "provenance.py", "cpu.py", "pretrain", "encoder.py", "model_card.py",
        "data/manifest.py", "data/image_cache.py", "text/cache.py", "text/embed.py", "text/model.py", "text/store.py",
        "text/sentences.py", "text/prompts.py", "data/prepare.py",
    ),
}


def stage_files(stage: str) -> list[Path]:
    """The source files (absolute, sorted) whose content keys ``stage``'s resumable state."""
    if stage not in STAGE_SOURCES:
        raise KeyError(f"no source list for stage {stage!r}; known: {sorted(STAGE_SOURCES)}")
    files: set[Path] = set()
    for rel in STAGE_SOURCES[stage]:
        p = PACKAGE_ROOT / rel
        files.update(p.rglob("*.py") if p.is_dir() else [p])
    return sorted(files)


def code_hash(files: list[Path], root: Path = PACKAGE_ROOT) -> str:
    """sha256 (16 hex) over the relative names and bytes of ``files``."""
    h = hashlib.sha256()
    for f in sorted(files):
        h.update(str(f.relative_to(root)).encode() + b"\0")
        h.update(f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


@functools.cache
def code_key(stage: str) -> str:
    """``"<package version>+<code hash>"`` of ``stage``: what a resumable state of that stage must match."""
    return f"{__version__}+{code_hash(stage_files(stage))}"
