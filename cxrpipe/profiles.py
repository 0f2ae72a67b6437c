"""Params profiles: select ``params-<name>.yaml`` for ``dvc repro`` and ``dvc exp run`` without losing a file.

DVC and every stage read ``params.yaml``. A profile is a full params file beside it, ``params-<name>.yaml``
(mimic, iu, bench, ... any name); ``demo`` is the ``params.yaml`` a fresh clone has. Selecting a profile:

- ``demo`` -> ``<name>``: ``params.yaml`` (with any edits) is kept as ``params-demo.yaml``, and
  ``params-<name>.yaml`` is copied over ``params.yaml``; the git-ignored ``.cxrpipe-profile`` records the name
  and the hash of what was copied.
- ``<name>`` -> ``<other>`` or back to ``demo``: edits of ``params.yaml`` since the selection (yours, or
  ``dvc exp run -S ...``'s) are written back into ``params-<name>.yaml``; edits made to ``params-<name>.yaml``
  itself meanwhile are kept; where both were edited the switch refuses. Back to ``demo`` moves
  ``params-demo.yaml`` back: the tree is as before.
- ``<name>`` again: ``params-<name>.yaml``'s own edits are copied in, where ``params.yaml`` has none.

A plain copy, not a symbolic link: ``dvc exp run`` stashes and re-applies the workspace through git, and a
``params.yaml`` whose type changed from file to link breaks that ("Could not apply stash commit"), after
writing the demo's params through the link into the profile's file (DVC 3.67, tests/test_profiles.py). A
link made by an older version is still read and replaced on the next switch.

Nothing is ever overwritten unseen: a switch that would lose a file or an edit refuses, naming it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path

PARAMS = "params.yaml"


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """Params ``pipeline``, read by dvc.yaml itself: which of the demo's own stages a profile runs (real
    profiles list none) and the two paths later stages depend on in their place."""

    demo_data: tuple[str, ...] = ("demo",)  # demo_data@<name> writes data/<name>; () = none
    demo_nih: tuple[str, ...] = ("demo-nih",)  # demo_nih@<name> writes data/<name>; () = none
    text_model: tuple[str, ...] = ("text-model",)  # text_model@<name> converts the demo LM; () = none
    text_model_dep: str = "data/models/text-model"  # a dep of embed and zeroshot_prompts
    transfer_source: str = "data/demo-nih"  # a dep of transfer_prepare
    encoders: tuple[str, ...] = ("mae", "multimodal", "random", "shuffled")  # the finetune stage's matrix
    two_step_controls: tuple[str, ...] = ()  # pretrain_continued@<name> (pretrain.flow two_step): () or ("continued",)
    sentences: tuple[str, ...] = ()  # embed_sentences@<name> (pretrain.loss.sentence_weight > 0): () or ("sentences",)
    sentence_dep: str = "data/cache/text.h5"  # a dep of the pretraining stages: the sentence cache with the term


DEMO = "demo"


MARKER = ".cxrpipe-profile"  # git-ignored: {"name": <selected profile>, "sha256": <hash of what was copied>}


class ProfileError(ValueError):
    """A profile switch that cannot be done safely (a one-line message saying what to do)."""


def profile_file(root: Path, name: str) -> Path:
    return Path(root) / f"params-{name}.yaml"


def available(root: str | Path) -> list[str]:
    """Profile names: ``demo`` and every ``params-<name>.yaml``."""
    names = {p.name[len("params-"):-len(".yaml")] for p in Path(root).glob("params-*.yaml")}
    return [DEMO, *sorted(names - {DEMO})]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _marker(root: Path) -> dict | None:
    f = root / MARKER
    return json.loads(f.read_text()) if f.exists() else None


def active(root: str | Path) -> str:
    """The selected profile: the marker's name (or an older version's link target), ``demo`` otherwise."""
    root = Path(root)
    params = root / PARAMS
    if params.is_symlink():  # selected by an older version of this module
        target = os.readlink(params)
        name = Path(target).name
        if Path(target).parent != Path(".") or not (name.startswith("params-") and name.endswith(".yaml")):
            raise ProfileError(f"{params} links to {target}, not to a params-<name>.yaml beside it: "
                               "remove the link and run `cxrpipe profile demo`")
        return name[len("params-"):-len(".yaml")]
    marker = _marker(root)
    return marker["name"] if marker else DEMO


def _write_back(root: Path, name: str) -> bool:
    """Before leaving profile ``name``: whether ``params.yaml``'s edits since the selection must be copied into
    ``params-<name>.yaml``. Refuses where both files were edited differently."""
    params, own = root / PARAMS, profile_file(root, name)
    if params.is_symlink() or not own.exists():  # a link wrote through already; a deleted profile file: restore it
        return not params.is_symlink()
    selected = (_marker(root) or {}).get("sha256")
    here, there = _sha(params), _sha(own)
    if here == there or here == selected:  # no edit of params.yaml (the profile's file may have its own)
        return False
    if there == selected:
        return True
    raise ProfileError(f"{PARAMS} and {own.name} were both edited since `cxrpipe profile {name}`: keep one "
                       f"(copy {PARAMS} over {own.name}, or {own.name} over {PARAMS}), then switch")


def select(root: str | Path, name: str) -> tuple[str, str]:
    """Make ``name`` the active profile; returns (previous, new). See the module doc. Every check runs before
    the first file is touched: a refusal changes nothing."""
    root = Path(root)
    params, saved = root / PARAMS, profile_file(root, DEMO)
    if name not in available(root):
        raise ProfileError(f"no profile {name!r}: choose one of {', '.join(available(root))} "
                           f"(a profile is a params-<name>.yaml beside {PARAMS})")
    before = active(root)
    if name == before:
        if name != DEMO and not params.is_symlink() and params.exists() and not _write_back(root, name):
            _copy_in(root, name)  # selected again: the profile file's own edits, where params.yaml has none
        return before, name
    if not params.exists():
        raise ProfileError(f"{params} is missing: restore it with `git checkout {PARAMS}`"
                           + ("" if before == DEMO else f" and copy {profile_file(root, before).name} over it"))
    if before == DEMO and saved.exists():
        raise ProfileError(f"{saved} exists and {PARAMS} is a file: keeping both would lose one; move one away")
    if name == DEMO and not saved.exists():
        raise ProfileError(f"{saved} (the demo's params, kept when {before} was selected) is missing: "
                           f"`git checkout {PARAMS}` and remove {MARKER}")
    write_back = before != DEMO and _write_back(root, before)
    # leave `before`
    if before == DEMO:
        params.rename(saved)
    else:  # a copy (or an older version's link)
        if write_back:
            shutil.copyfile(params, profile_file(root, before))
        params.unlink()
    # enter `name`
    if name == DEMO:
        saved.rename(params)
        (root / MARKER).unlink(missing_ok=True)
    else:
        _copy_in(root, name)
    return before, name


def _copy_in(root: Path, name: str) -> None:
    params = root / PARAMS
    shutil.copyfile(profile_file(root, name), params)
    (root / MARKER).write_text(json.dumps({"name": name, "sha256": _sha(params)}) + "\n")


def missing_inputs(params: dict) -> list[tuple[str, str]]:
    """(key, path) of the input paths the profile names that do not exist here: the data the user must point
    it at first (paths under ``data/`` are made by stages and not checked)."""
    data = params.get("data") or {}
    keys = [("data.root", data.get("root")), ("data.reports", data.get("reports")), ("data.tables", data.get("tables")),
            ("data.projections", data.get("projections"))]
    for ds in (params.get("transfer") or {}).get("datasets") or []:
        keys.append((f"transfer_data.{ds}.root", ((params.get("transfer_data") or {}).get(ds) or {}).get("root")))
    return [(k, str(v)) for k, v in keys if v and not str(v).startswith("data/") and not Path(v).exists()]
