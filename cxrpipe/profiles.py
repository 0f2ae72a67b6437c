"""Params profiles: select ``params-<name>.yaml`` for ``dvc repro`` without copying over ``params.yaml``.

DVC and every stage read ``params.yaml``. A profile is a full params file beside it, ``params-<name>.yaml``
(mimic, iu, bench, ... any name); ``demo`` is the ``params.yaml`` a fresh clone has. Selecting a profile:

- ``demo`` -> ``<name>``: ``params.yaml`` (with any edits) is kept as ``params-demo.yaml``, and ``params.yaml``
  becomes a symbolic link to ``params-<name>.yaml``. DVC, ``dvc params diff`` and the stages follow the link,
  and edits (``data.root``, ``dvc exp run -S ...``) land in the profile's own file.
- ``<name>`` -> ``<other>``: the link is pointed at the other file.
- back to ``demo``: the link is removed and ``params-demo.yaml`` moved back: the tree is as before.

Nothing is ever overwritten: a switch that would lose a file refuses, naming it.
"""

from __future__ import annotations

import dataclasses
import os
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
DEMO = "demo"


class ProfileError(ValueError):
    """A profile switch that cannot be done safely (a one-line message saying what to do)."""


def profile_file(root: Path, name: str) -> Path:
    return Path(root) / f"params-{name}.yaml"


def available(root: str | Path) -> list[str]:
    """Profile names: ``demo`` and every ``params-<name>.yaml``."""
    names = {p.name[len("params-"):-len(".yaml")] for p in Path(root).glob("params-*.yaml")}
    return [DEMO, *sorted(names - {DEMO})]


def active(root: str | Path) -> str:
    """The selected profile: the link's target name, ``demo`` for a plain ``params.yaml``."""
    params = Path(root) / PARAMS
    if not params.is_symlink():
        return DEMO
    target = os.readlink(params)
    name = Path(target).name
    if Path(target).parent != Path(".") or not (name.startswith("params-") and name.endswith(".yaml")):
        raise ProfileError(f"{params} links to {target}, not to a params-<name>.yaml beside it: "
                           "remove the link and run `cxrpipe profile demo`")
    return name[len("params-"):-len(".yaml")]


def select(root: str | Path, name: str) -> tuple[str, str]:
    """Make ``name`` the active profile; returns (previous, new). See the module doc."""
    root = Path(root)
    params, saved = root / PARAMS, profile_file(root, DEMO)
    if name not in available(root):
        raise ProfileError(f"no profile {name!r}: choose one of {', '.join(available(root))} "
                           f"(a profile is a params-<name>.yaml beside {PARAMS})")
    before = active(root)
    if name == before:
        return before, name
    if name == DEMO:
        if not saved.exists():
            raise ProfileError(f"{saved} (the demo's params, kept when {before} was selected) is missing: remove "
                               f"the link {PARAMS} and `git checkout {PARAMS}`")
        params.unlink()
        saved.rename(params)
        return before, name
    if before == DEMO:
        if not params.exists():
            raise ProfileError(f"{params} is missing: restore it with `git checkout {PARAMS}`")
        if saved.exists():
            raise ProfileError(f"{saved} exists and {PARAMS} is a file: keeping both would lose one; move one away")
        params.rename(saved)
    else:
        params.unlink()
    try:
        params.symlink_to(profile_file(root, name).name)
    except OSError as e:  # a file system without symbolic links: undo
        if before == DEMO:
            saved.rename(params)
        raise ProfileError(f"cannot link {PARAMS} to params-{name}.yaml ({e}); copy it over {PARAMS} by hand") from None
    return before, name


def missing_inputs(params: dict) -> list[tuple[str, str]]:
    """(key, path) of the input paths the profile names that do not exist here: the data the user must point
    it at first (paths under ``data/`` are made by stages and not checked)."""
    data = params.get("data") or {}
    keys = [("data.root", data.get("root")), ("data.reports", data.get("reports")), ("data.tables", data.get("tables")),
            ("data.projections", data.get("projections"))]
    for ds in (params.get("transfer") or {}).get("datasets") or []:
        keys.append((f"transfer_data.{ds}.root", ((params.get("transfer_data") or {}).get(ds) or {}).get("root")))
    return [(k, str(v)) for k, v in keys if v and not str(v).startswith("data/") and not Path(v).exists()]
