"""``cxrpipe check``: the whole params file against every stage's schema, and the files the configured data
source needs, in seconds, before anything else runs.

It is the first stage of ``dvc.yaml``: every other stage depends on its small output (``data/check.json``,
whose content never changes, so a passing check reruns nothing downstream), so ``dvc repro`` stops at a
typo in a late section (``finetune``) before days of embedding and pretraining, with one line naming the key.

The schemas are not listed here. :func:`section_schemas` reads them from the stage scripts themselves: every
``section(params, "<name>", <Dataclass>)`` call in ``stages/*.py`` names a section and the dataclass that
stage builds it with. A key added to a dataclass, or a section read by a new stage script, is checked
without an edit here. What is checked:

* every top-level section is known (else the allowed names are listed) and builds into its dataclass
  (unknown key, missing key, wrong type: :mod:`cxrpipe.config`; allowed values such as report sections,
  views and label names: the dataclasses' own ``__post_init__``);
* every ``views`` list names views the data can hold: ``data.views`` those of ``data.source``; the stages
  after ``prepare`` only views ``prepare`` keeps; ``transfer_data.<name>.views`` and ``transfer.views`` those
  of the transfer datasets;
* the files of ``data.source`` (its reader's own layout check and messages) and the root of each dataset in
  ``transfer.datasets``, unless a stage of ``dvc.yaml`` makes them (the demo trees).
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import importlib
import importlib.util
import logging
from pathlib import Path
from typing import Any, Iterator

import yaml

from cxrpipe.config import ConfigError, load_params, section
from cxrpipe.io import UserError, write_json_atomic

log = logging.getLogger(__name__)

SENTENCE_STAGE = "sentences"  # embed_sentences@sentences
SENTENCE_CACHE = f"data/cache/{SENTENCE_STAGE}.h5"  # what it writes (dvc.yaml), and pretrain's --sentence-cache default
CHECK_JSON = {"params": "checked"}  # the output's content: constant, so a passing check reruns nothing


def _stage_scripts() -> list[Path]:
    spec = importlib.util.find_spec("stages")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the `stages` package is not importable")
    return sorted(Path(list(spec.submodule_search_locations)[0]).glob("*.py"))


def _section_calls(tree: ast.AST) -> Iterator[tuple[str, str]]:
    """``(section name, class name)`` of every ``section(<params>, "<name>", <Class>)`` call."""
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and len(node.args) >= 3):
            continue
        func = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
        name, cls = node.args[1], node.args[2]
        if func == "section" and isinstance(name, ast.Constant) and isinstance(name.value, str) \
                and isinstance(cls, ast.Name):
            yield name.value, cls.id


@functools.cache
def section_schemas() -> dict[str, type]:
    """``{section: dataclass}`` read from the stage scripts (see the module doc). Dotted sections
    (``pretrain.model``) are checked as part of their top-level section."""
    found: dict[str, type] = {}
    for script in _stage_scripts():
        tree = ast.parse(script.read_text(), filename=str(script))
        imported = {alias.asname or alias.name: node.module for node in ast.walk(tree)
                    if isinstance(node, ast.ImportFrom) and node.module for alias in node.names}
        for name, cls_name in _section_calls(tree):
            if "." in name or cls_name not in imported:
                continue
            cls = getattr(importlib.import_module(imported[cls_name]), cls_name)
            if found.setdefault(name, cls) is not cls:
                raise RuntimeError(f"{script.name}: section {name!r} built as {cls_name}, elsewhere as "
                                   f"{found[name].__name__}")
    return found


def _params_list(ref: Any, params: dict) -> list[Any]:
    """A ``${a.b}`` reference to a params list, resolved ([] for anything else); a literal list as it is."""
    if isinstance(ref, list):
        return ref
    if not (isinstance(ref, str) and ref.startswith("${") and ref.endswith("}")):
        return []
    node: Any = params
    for part in ref[2:-1].split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return list(node) if isinstance(node, (list, tuple)) else []


def _stage_items(stage: dict, params: dict) -> tuple[dict, list[dict[str, str]]]:
    """(the stage body, ``{placeholder: value}`` per instance): one empty mapping for a plain stage, a
    ``${item}`` per item of a ``foreach`` over a params list, a ``${item.<key>}`` per key of every combination
    of a ``matrix`` (``bench_data``'s ``tree: ${bench.trees}``)."""
    if "foreach" in stage:
        return stage.get("do", {}), [{"${item}": str(v)} for v in _params_list(stage["foreach"], params)]
    if isinstance(stage.get("matrix"), dict):
        combos: list[dict[str, str]] = [{}]
        for key, ref in stage["matrix"].items():
            combos = [{**c, f"${{item.{key}}}": str(v)} for c in combos for v in _params_list(ref, params)]
        return stage, combos
    return stage, [{}]


def pipeline_outputs(dvc_yaml: Path | None, params: dict | None = None) -> list[Path]:
    """The (resolved) paths the stages of ``dvc_yaml`` write: inputs under them do not have to exist before
    ``dvc repro`` (the demo and bench trees). ``foreach`` and ``matrix`` stages over params lists
    (``${pipeline.demo_data}``, ``${bench.trees}``) are expanded with ``params``; other templated paths are
    left out."""
    if dvc_yaml is None or not dvc_yaml.is_file():
        return []
    out = []
    for stage in (yaml.safe_load(dvc_yaml.read_text()) or {}).get("stages", {}).values():
        if not isinstance(stage, dict):
            continue
        body, instances = _stage_items(stage, params or {})
        for item in body.get("outs", []):
            path = item if isinstance(item, str) else next(iter(item))
            for values in instances:
                resolved = path
                for placeholder, value in values.items():
                    resolved = resolved.replace(placeholder, value)
                if "${" not in resolved:
                    out.append((dvc_yaml.parent / resolved).resolve())
    return out


def _made_by_pipeline(path: Any, outputs: list[Path]) -> bool:
    p = Path(path).resolve()
    return any(p == o or o in p.parents for o in outputs)


def _fields(cfg: Any, where: str) -> Iterator[tuple[str, Any]]:
    """``(dotted key, value)`` of every field of a (nested) config dataclass."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            yield from _fields(value, f"{where}.{f.name}")
        elif isinstance(value, dict):
            for k, v in value.items():
                if dataclasses.is_dataclass(v) and not isinstance(v, type):
                    yield from _fields(v, f"{where}.{f.name}.{k}")
        yield f"{where}.{f.name}", value


def _check_views(key: str, views: Any, allowed: set[str], why: str) -> None:
    bad = [v for v in views or () if str(v).upper() not in allowed]
    if bad:
        raise ConfigError(f"params '{key}': {bad} {why}; allowed: {sorted(allowed)}")


def check_views(cfgs: dict[str, Any]) -> None:
    """Every ``views`` list names views its images can have (see the module doc)."""
    from cxrpipe.data import registry

    data = cfgs["data"]
    kept = {v.upper() for v in data.views} or set(registry.get(data.source).views)
    transfer = cfgs.get("transfer")
    datasets = list(getattr(transfer, "datasets", ()))
    unknown = [n for n in datasets if n not in registry.names(registry.Role.TRANSFER)]
    if unknown:
        raise ConfigError(f"params 'transfer.datasets': {unknown} is not a transfer dataset; allowed: "
                          f"{registry.names(registry.Role.TRANSFER)}")
    transfer_views: set[str] = set()
    for name in datasets:
        own = getattr(getattr(cfgs.get("transfer_data"), name, None), "views", None)
        allowed = set(registry.get(name).views)
        _check_views(f"transfer_data.{name}.views", own, allowed, f"is not a view of {name}")
        transfer_views |= {v.upper() for v in own} if own else allowed
    for sec, cfg in cfgs.items():
        if sec in ("data", "transfer_data"):
            continue
        for key, value in _fields(cfg, sec):
            if key.endswith(".views") and sec == "transfer":
                _check_views(key, value, transfer_views, f"is not among the views of {datasets}")
            elif key.endswith(".views"):
                _check_views(key, value, kept, f"is not among the views prepare keeps (data.views of {data.source})")


def check_data(cfgs: dict[str, Any], outputs: list[Path]) -> list[str]:
    """The files ``prepare`` and ``transfer_prepare`` will read; returns what was left to the pipeline."""
    from cxrpipe.data import registry

    data, skipped = cfgs["data"], []
    spec = registry.get(data.source)
    if _made_by_pipeline(data.root, outputs) or _made_by_pipeline(data.reports, outputs):
        skipped.append(f"data ({data.root}: made by a stage of dvc.yaml)")
    elif spec.check is not None:
        spec.check(data)
    for name in getattr(cfgs.get("transfer"), "datasets", ()):
        root = getattr(getattr(cfgs["transfer_data"], name), "root")
        if root is None:
            raise ConfigError(f"params 'transfer_data.{name}.root' is null, but transfer.datasets lists {name}: "
                              f"set it ({registry.get(name).layout}) or drop {name} from transfer.datasets")
        if _made_by_pipeline(root, outputs):
            skipped.append(f"transfer_data.{name} ({root}: made by a stage of dvc.yaml)")
        elif not Path(root).exists():
            raise ConfigError(f"params 'transfer_data.{name}.root' = {root}: no such folder; "
                              f"{registry.get(name).layout}")
    return skipped


def check_flow(cfgs: dict[str, Any]) -> None:
    """The two-step flow's switches agree: ``pipeline.two_step_controls`` ([continued]) only under
    ``pretrain.flow: two_step`` and fine-tuned (in ``pipeline.encoders``); no seed repeats under two_step (their
    stages do not continue each seed's own mae: run each seed as its own experiment)."""
    from cxrpipe.pretrain.train import VARIANTS  # already imported by the pretrain schema

    encoders = (*VARIANTS, "random")  # what data/models/<name> a finetune can read
    pipe, flow = cfgs["pipeline"], cfgs["pretrain"].flow
    unknown = sorted(set(pipe.encoders) - set(encoders))
    if unknown or not {"mae", "multimodal"} <= set(pipe.encoders):
        raise ConfigError(f"params 'pipeline.encoders' = {list(pipe.encoders)}: the encoders fine-tuned, from "
                          f"{list(encoders)}, with mae and multimodal (compare pairs them)")
    if set(pipe.two_step_controls) - {"continued"}:
        raise ConfigError(f"params 'pipeline.two_step_controls' = {list(pipe.two_step_controls)}: [] or [continued]")
    if pipe.two_step_controls and flow != "two_step":
        raise ConfigError("params 'pipeline.two_step_controls' = [continued] needs 'pretrain.flow: two_step' (the "
                          "control continues the exported mae without text; under joint there is nothing to continue)")
    missing = sorted(set(pipe.two_step_controls) - set(pipe.encoders))
    if missing:
        raise ConfigError(f"params 'pipeline.two_step_controls' lists {missing}, not in 'pipeline.encoders': it would be "
                          "pretrained and never fine-tuned or compared; add it there")
    if flow == "two_step" and cfgs["compare"].extra_seeds:
        raise ConfigError("params 'compare.extra_seeds' under 'pretrain.flow: two_step': the seed repeats' stages "
                          "do not continue each seed's own mae; run each seed as its own experiment "
                          "(dvc exp run -S pretrain.seed=K -S finetune.seed=K)")


def check_sentences(cfgs: dict[str, Any]) -> None:
    """The sentence term's three switches agree: ``pretrain.loss.sentence_weight`` in [0, 1]; above 0 it needs
    ``pipeline.sentences: [sentences]`` (the stage that writes the cache), ``pipeline.sentence_dep`` naming that
    cache (so every pretraining stage reruns when it changes) and a pooling that has a latent to compare
    (``pretrain.pool.kind`` not ``cross``); at 0 the stage would embed a cache nothing reads."""
    pipe, pre = cfgs["pipeline"], cfgs["pretrain"]
    weight = pre.loss.sentence_weight
    if not 0.0 <= weight <= 1.0:
        raise ConfigError(f"params 'pretrain.loss.sentence_weight' = {weight}: a share of the contrastive loss, in [0, 1]")
    if list(pipe.sentences) not in ([], [SENTENCE_STAGE]):
        raise ConfigError(f"params 'pipeline.sentences' = {list(pipe.sentences)}: [] or [{SENTENCE_STAGE}]")
    if weight > 0 and (list(pipe.sentences) != [SENTENCE_STAGE] or pipe.sentence_dep != SENTENCE_CACHE):
        raise ConfigError(f"params 'pretrain.loss.sentence_weight' = {weight} needs 'pipeline.sentences: "
                          f"[{SENTENCE_STAGE}]' and 'pipeline.sentence_dep: {SENTENCE_CACHE}' (the stage that embeds "
                          "the sentences, and the pretraining stages' dep on its cache)")
    if weight > 0 and pre.pool.kind != "latent":
        raise ConfigError(f"params 'pretrain.loss.sentence_weight' = {weight} needs 'pretrain.pool.kind: latent' (one "
                          f"image embedding to compare with a sentence), not {pre.pool.kind!r}")
    if weight == 0 and pipe.sentences:
        raise ConfigError(f"params 'pipeline.sentences' = [{SENTENCE_STAGE}] with 'pretrain.loss.sentence_weight' 0: "
                          "the cache would be embedded and never read; set the weight or list []")


def run_check(params: str | Path, out: str | Path | None = None, dvc_yaml: str | Path | None = "dvc.yaml",
              data: bool = True) -> dict:
    """Check ``params`` (see the module doc; ``data=False``: not the data files); write ``out`` when it passes.
    A failure raises a :class:`~cxrpipe.io.UserError` whose one-line message names the file and the key."""
    params = Path(params)
    raw = load_params(params)
    schemas = section_schemas()
    try:
        unknown = sorted(set(raw) - set(schemas))
        if unknown:
            raise ConfigError(f"unknown section(s) {unknown}; allowed: {sorted(schemas)}")
        cfgs = {name: section(raw, name, cls) for name, cls in schemas.items()}
        check_views(cfgs)
        check_flow(cfgs)
        check_sentences(cfgs)
        skipped = check_data(cfgs, pipeline_outputs(Path(dvc_yaml) if dvc_yaml else None, raw)) if data else ["data"]
    except UserError as e:
        raise type(e)(f"{params}: {e}") from None
    log.info("%s: %d sections checked (%s)%s", params, len(cfgs), ", ".join(sorted(cfgs)),
             "; left to the pipeline: " + "; ".join(skipped) if skipped else "")
    if out is not None:
        write_json_atomic(out, CHECK_JSON)
    return {"sections": sorted(cfgs), "left_to_pipeline": skipped}
