"""``cxrpipe plan``: what ``dvc repro`` will do under the selected profile, before it starts.

From the params, DVC's own list of the stages, and the data's counts it gives, per stage family: the runs,
the work (images, tokens, epochs), the disk each output takes, and the time, as GPU-hours and as hours on
this kind of CPU. Every figure says where it comes from:

- *measured*: read from this checkout (the prepared manifest, the source's own tables, a finished run's
  report or metrics: the file is named), or a throughput this project measured (where, on what);
- *estimated*: computed from counts and formulas (FLOPs per image or token, bytes per value), with the
  assumption named.

Times scale by FLOPs: a stage's FLOPs / a device's sustained FLOP/s. The CPU's FLOP/s come from measured
runs of the demo (this checkout's own metrics when it has them); the GPU's from ``benchmarks/gpu.py``'s
committed runs on one H200 (:mod:`cxrpipe.gpu_bench`: LLaMA-2-7b's stage one at the profile's quantization,
ViT-B/16's stage two), or ``gpu_tflops`` for every GPU stage when it is given (another GPU).
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import json
import logging
import math
import statistics
from collections import Counter
from pathlib import Path
from typing import Any, Optional

import yaml

GIB = 2**30
# Published / recorded image and study counts (used only when neither a prepared manifest nor the source's
# tables are at hand). MIMIC-CXR: DESIGN.md (the release's own counts).
MIMIC = {"images": 377_110, "studies": 227_835, "train_images": 368_960, "train_studies": 222_758,
         "how": "estimated: MIMIC-CXR's published counts (DESIGN.md)"}
IU = {"images": 7_470, "studies": 3_955, "how": "estimated: IU X-ray's published counts (Demner-Fushman et al. 2016)"}
TRANSFER_IMAGES = {"nih_cxr14": 112_120, "chexpert": 224_316, "rsna_pneumonia": 26_684}  # published counts
# frontal share of MIMIC-CXR's images when only totals are known (not recorded by this project: an assumption)
FRONTAL_SHARE = 0.65
# the hidden sizes of known hub models (a local folder's config.json is read instead)
KNOWN_LMS = {"meta-llama/Llama-2-7b-hf": {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
                                          "num_attention_heads": 32, "num_key_value_heads": 32}}
# CPU throughputs this project measured, used when this checkout has no run of its own: the committed demo
# reference run's (data/cache/text-report.json, fp32 as every profile embeds; data/metrics/pretrain-mae.json,
# patch 8: DEMO_VIT)
CPU_EMBED = (822.4, "SmolLM2-135M fp32", "measured: the committed demo reference run's embed (data/cache/"
             "text-report.json, 822.4 tokens/s), 2-core CPU")
CPU_PRETRAIN = (690 * 32 / 109.0, "demo tiny ViT", "measured: the committed demo reference run's mae pretraining "
                "(data/metrics/pretrain-mae.json: 690 steps of 32 in 109 s, patch 8), 2-core CPU")
# what the pipeline keeps per token beside the hidden state (the int32 token id)
TOKEN_ID_BYTES = 4


@dataclasses.dataclass(frozen=True)
class Figure:
    value: float
    how: str  # "measured: ..." or "estimated: ..."


@dataclasses.dataclass
class Counts:
    images: Figure           # images prepare selects (all views of data.views)
    train_frontal: Figure    # train images pretraining reads (pretrain.data.views)
    studies: Figure          # studies with a report: the texts embed runs over
    eval_images: Figure      # images stage three reads (every split)


@dataclasses.dataclass
class StagePlan:
    family: str
    runs: int
    work: str
    disk: Optional[Figure] = None  # bytes, all runs
    gpu_hours: Optional[Figure] = None  # all runs, on one GPU
    cpu_hours: Optional[Figure] = None  # all runs, on this kind of CPU


# ------------------------------------------------------------------------------------------------ counts


def _read_csv(path: Path) -> list[dict[str, str]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", newline="") as f:
        return list(csv.DictReader(f))


def made_from(prepared: Path, data: dict[str, Any]) -> bool:
    """Whether ``prepared`` was made from this ``data`` section (its config.json: source, root, views): a
    manifest of another profile (the demo's, say) says nothing about this one."""
    try:
        made = json.loads((prepared / "config.json").read_text())["data"]
    except (OSError, ValueError, KeyError):
        return False
    return all(str(made.get(k)) == str(data.get(k)) for k in ("source", "root", "views"))


def _from_manifest(prepared: Path, views: set[str]) -> Counts | None:
    images, studies = prepared / "images.csv", prepared / "studies.csv"
    if not images.exists() or not studies.exists():
        return None
    rows = _read_csv(images)
    how = f"measured: {images}"
    with_text = sum(1 for s in _read_csv(studies) if s.get("text", "").strip())
    train = sum(1 for r in rows if r["split"] == "train" and r["view"] in views)
    return Counts(Figure(len(rows), how), Figure(train, how), Figure(with_text, f"measured: {studies}"),
                  Figure(len(rows), how))


def _mimic_tables(data: dict[str, Any], views: set[str]) -> Counts | None:
    """Counts from MIMIC-CXR's own tables (metadata + split CSVs) where data.tables / data.root hold them."""
    folder = Path(data.get("tables") or data.get("root") or "")
    meta = next(iter(sorted(folder.glob("mimic-cxr-2.0.0-metadata.csv*"))), None)
    split = next(iter(sorted(folder.glob("mimic-cxr-2.0.0-split.csv*"))), None)
    if meta is None or split is None:
        return None
    kept = set(data.get("views") or [])
    view_of = {r["dicom_id"]: r.get("ViewPosition", "") for r in _read_csv(meta)}
    rows = [(r["split"], view_of.get(r["dicom_id"], "")) for r in _read_csv(split)]
    selected = [(s, v) for s, v in rows if not kept or v in kept]
    how = f"measured: {meta.name} + {split.name} in {folder}"
    studies = len({r["study_id"] for r in _read_csv(split)})
    train = sum(1 for s, v in selected if s == "train" and v in views)
    return Counts(Figure(len(selected), how), Figure(train, how), Figure(studies, how + " (studies; some lack a "
                  "report)"), Figure(len(selected), how))


def data_counts(params: dict[str, Any], prepared: Path, root: Path | None = None) -> Counts:
    """The prepared manifest's counts, else the source's tables, else published counts (marked so). ``root``:
    the repository the plan is for; relative data paths are read there (as DVC runs the stages), not in the
    current folder."""
    views = set(params["pretrain"]["data"]["views"])
    data = params["data"]
    counts = _from_manifest(prepared, views) if made_from(prepared, data) else None
    if counts is None and data["source"].startswith("mimic"):
        anchored = {k: str(Path(root) / v) if root is not None and v and not Path(v).is_absolute() else v
                    for k, v in data.items() if k in ("root", "tables")}
        counts = _mimic_tables({**data, **anchored}, views)
    if counts is not None:
        return counts
    demo_roots = {f"data/{name}" for name in (params.get("pipeline") or {}).get("demo_data") or []}
    if str(data["root"]).rstrip("/") in demo_roots:  # the demo tree is not generated yet: from its params
        demo = params["demo"]
        how = "estimated: demo params (n_studies, view fractions, split)"
        frontal = demo["n_studies"] * (1 + demo["extra_frontal_fraction"])
        return Counts(Figure(frontal, how), Figure(frontal * demo["split"][0], how), Figure(demo["n_studies"], how),
                      Figure(frontal, how))
    if data["source"] == "iu-xray":
        how = IU["how"] + "; frontal = one per study (assumed)"
        return Counts(Figure(IU["images"], IU["how"]), Figure(0.7 * IU["studies"], how),
                      Figure(IU["studies"], IU["how"]), Figure(IU["studies"], how))
    share = f"; frontal share {FRONTAL_SHARE} assumed"
    return Counts(Figure(FRONTAL_SHARE * MIMIC["images"], MIMIC["how"] + share),
                  Figure(FRONTAL_SHARE * MIMIC["train_images"], MIMIC["how"] + share),
                  Figure(MIMIC["studies"], MIMIC["how"]), Figure(FRONTAL_SHARE * MIMIC["images"], MIMIC["how"] + share))


# -------------------------------------------------------------------------------------- sizes and FLOPs


def _blocks(dim: int, depth: int, mlp_ratio: float) -> float:
    """Weights of ``depth`` transformer blocks (qkv + proj: 4 d^2, MLP: 2 r d^2; biases and norms left out)."""
    return depth * (4 + 2 * mlp_ratio) * dim**2


def _forward(weights: float, dim: int, depth: int, n: int) -> float:
    """Forward FLOPs of ``n`` tokens through blocks of ``weights``: 2 per weight per token, plus attention's
    scores and weighted sum (2 n^2 d each per block), which at the demo's 145 tokens of width 192 add a quarter."""
    return 2 * weights * n + depth * 4 * n * n * dim


def vit_sizes(model: dict[str, Any]) -> dict[str, float]:
    """Parameters and per-image FLOPs of the pretraining model (``pretrain.model``): encoder, decoder, and
    the training step of one image (3 x the forward: forward and backward; MAE: the encoder sees the visible
    tokens only, the decoder all of them)."""
    d, p, chans = model["embed_dim"], model["patch_size"], 1
    tokens = (model["img_size"] // p) ** 2 + 1
    visible = round((tokens - 1) * (1 - model["mask_ratio"])) + 1
    enc = _encoder_weights(model)
    dd = model["decoder_embed_dim"]
    dec = _blocks(dd, model["decoder_depth"], 4.0) + d * dd + dd * p * p * chans
    return {"encoder": enc, "decoder": dec, "tokens": tokens,
            "train_flops": 3 * (_forward(enc, d, model["depth"], visible)  # one MAE step, per image
                                + _forward(dec, dd, model["decoder_depth"], tokens)),
            "forward_flops": encoder_flops(model, tokens, train=False),  # features of one image (stage three)
            "finetune_flops": encoder_flops(model, tokens)}  # one fine-tuning step, per image


def encoder_flops(model: dict[str, Any], n: int, train: bool = True) -> float:
    """FLOPs per image of one encoder pass over ``n`` tokens (``train``: forward and backward, 3 x)."""
    return (3 if train else 1) * _forward(_encoder_weights(model), model["embed_dim"], model["depth"], n)


def _encoder_weights(model: dict[str, Any]) -> float:
    """The encoder's weights: its blocks and the patch embedding (one channel)."""
    d, p = model["embed_dim"], model["patch_size"]
    return _blocks(d, model["depth"], model["mlp_ratio"]) + p * p * d


def lm_config(model: str) -> dict[str, Any] | None:
    """The text model's shape: a local folder's config.json, else a known hub model (or the demo's converted
    SmolLM2, before its stage ran), else None."""
    path = Path(model) / "config.json"
    if path.is_file():
        return json.loads(path.read_text())
    if Path(model).name == "text-model":  # data/models/text-model: what the text_model stage will make
        return SMOLLM2
    return KNOWN_LMS.get(model)


def lm_flops_per_token(cfg: dict[str, Any]) -> float:
    """2 x the non-embedding weights of a LLaMA-style decoder (attention with grouped KV heads, gated MLP)."""
    d, layers, inter = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["intermediate_size"]
    kv = d * cfg.get("num_key_value_heads", cfg["num_attention_heads"]) // cfg["num_attention_heads"]
    return 2 * layers * (2 * d * d + 2 * d * kv + 3 * d * inter)


# ------------------------------------------------------------------------------------------- throughputs

# the models behind the documented CPU measurements (params.yaml's demo settings when they were measured)
DEMO_VIT = {"img_size": 96, "patch_size": 8, "embed_dim": 192, "depth": 4, "mlp_ratio": 4.0, "decoder_embed_dim": 96,
            "decoder_depth": 1, "mask_ratio": 0.75}
SMOLLM2 = {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
           "num_key_value_heads": 3}


def cpu_rates(root: Path) -> dict[str, Figure]:
    """Sustained CPU FLOP/s of the two heavy stages: from this checkout's last demo run when there is one
    (its report and metrics), else from the project's documented measurements."""
    rates = {"pretrain": Figure(CPU_PRETRAIN[0] * vit_sizes(DEMO_VIT)["train_flops"], CPU_PRETRAIN[2]),
             "embed": Figure(CPU_EMBED[0] * lm_flops_per_token(SMOLLM2), CPU_EMBED[2])}
    for path in sorted((root / "data" / "metrics").glob("pretrain-*.json")):
        ips = json.loads(path.read_text()).get("images_per_second")
        model_cfg = root / "data" / "models" / path.stem[len("pretrain-"):] / "config.json"
        if ips and model_cfg.exists() and json.loads(model_cfg.read_text()).get("params", {}).get("model"):
            model = json.loads(model_cfg.read_text())["params"]["model"]
            rates["pretrain"] = Figure(ips * vit_sizes(model)["train_flops"],
                                       f"measured: {path} ({ips:g} images/s, this checkout's last run)")
            break
    report, config = root / "data/cache/text-report.json", root / "data/cache/text-report.config.json"
    if report.exists() and config.exists():
        tps, lm = json.loads(report.read_text()).get("tokens_per_second"), lm_config(json.loads(config.read_text())["model"])
        if tps and lm:
            rates["embed"] = Figure(tps * lm_flops_per_token(lm), f"measured: {report} ({tps:g} tokens/s, this "
                                    "checkout's last run)")
    return rates


# the GPU's sustained throughput when no run measured it (and for the stages no run measured): an assumption
ASSUMED_GPU_TFLOPS = 100.0


def gpu_rates(params: dict[str, Any], root: Path, gpu_tflops: float | None = None) -> dict[str, Figure]:
    """Sustained FLOP/s of one GPU for stage one (``embed``), stage two (``pretrain``) and stage three and
    transfer (``other``): ``gpu_tflops`` for all when given; else the committed ``benchmarks/gpu.py`` runs
    (LLaMA-2-7b at the profile's quantization and batch_tokens; ViT-B/16 eager with the augmentation where the
    profile puts it, sustained rows only), as FLOPs per token or image of the measured model x its rate;
    a stage no run measured falls back to ``ASSUMED_GPU_TFLOPS``."""
    from cxrpipe.gpu_bench import BENCH_VIT, GPU_RESULTS, embed_rows, pretrain_rows, read_runs, summary

    def assumed(tflops: float, why: str = "") -> Figure:
        return Figure(tflops * 1e12, f"assumed {tflops:g} TFLOP/s sustained per GPU{why}")

    if gpu_tflops is not None:
        return dict.fromkeys(("embed", "pretrain", "other"), assumed(gpu_tflops, " (--gpu-tflops)"))
    runs = read_runs(root)
    embed, pre = params["embed"], params["pretrain"]
    rates = dict.fromkeys(("embed", "pretrain", "other"), assumed(ASSUMED_GPU_TFLOPS, f" (no run in {GPU_RESULTS})"))
    rows = embed_rows(runs, embed["quantization"], embed["batch_tokens"])
    if rows:
        s, r = summary(rows), rows[0]
        rates["embed"] = Figure(s["mean"] * lm_flops_per_token(KNOWN_LMS["meta-llama/Llama-2-7b-hf"]),
                                f"measured: {s['mean']:,.0f} tokens/s (mean of {s['n']} runs, {s['min']:,.0f} to "
                                f"{s['max']:,.0f}) of LLaMA-2-7b {r['setting']} at batch_tokens {r['batch_tokens']}, "
                                f"random weights, on one {r['card']} ({GPU_RESULTS}/{', '.join(s['files'])})")
    rows = pretrain_rows(runs, pre["data"].get("augment_on", "loader"))
    if rows:
        s, r = summary(rows), rows[0]
        where = f"on one {r['card']} ({GPU_RESULTS}/{', '.join(s['files'])})"
        # the GPU's own rate: the images/s of the time it was not waiting for the loader
        fed = statistics.fmean(row["rate"] / (1 - row["wait"]) for row in rows)
        rates["pretrain"] = Figure(fed * vit_sizes(BENCH_VIT)["train_flops"],
                                   f"measured: {fed:,.0f} images/s of a ViT-B/16 MAE step (no second encoder pass) "
                                   f"while fed (mean of {s['n']} runs: images/s / share of time not waiting for "
                                   f"data), eager bf16, batch {r['batch']}, {where}")
        # the loader's: what its workers delivered while the GPU waited for them
        per_worker = s["mean"] / r["workers"]
        rates["loader"] = Figure(per_worker, f"measured: {s['mean']:,.0f} images/s from {r['workers']} loader workers "
                                 f"({per_worker:,.0f} per worker, augmentation on the {r['augment_on']}) {where}")
        rates["other"] = Figure(rates["pretrain"].value, "pretraining's: " + rates["pretrain"].how)
    return rates


# ------------------------------------------------------------------------------------------------- plan

# full-size MIMIC-CXR JPEG decoded + letterboxed per CPU core (docs/scale.md 3b: draft mode, loaded machine)
DECODE_PER_CORE = (13.3, "estimated: decode rate measured in docs/scale.md 3b (full-size JPEG, draft mode, 1 core)")
# tokens per report when no cache and no manifest text is at hand: DESIGN.md's 27-46 M tokens / 227,835 reports
TOKENS_PER_REPORT = (36.5e6 / 227_835, "estimated: DESIGN.md's 27-46 M tokens for MIMIC-CXR's reports (midpoint)")


@dataclasses.dataclass(frozen=True)
class Inputs:
    params: dict[str, Any]
    root: Path
    counts: Counts
    runs: Counter
    gpu: dict[str, Figure]  # gpu_rates: FLOP/s of one GPU per stage kind (embed, pretrain, other); with a
                            # measured loader also "loader": images/s per loader worker
    cpu: dict[str, Figure]


def stage_runs(root: Path, params_file: Path | None = None) -> Counter:
    """Stage family (the name before '@') -> the number of stages DVC will run for it, from DVC's own
    parse of dvc.yaml under ``params_file`` (default: the repository's params.yaml; another file is parsed
    in a scratch copy, as if it were selected)."""
    import shutil
    import tempfile

    from dvc.repo import Repo

    if params_file is None or Path(params_file).resolve() == (root / "params.yaml").resolve():
        with Repo(str(root)) as repo:
            return _count(repo.index.stages)
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(root / "dvc.yaml", Path(tmp) / "dvc.yaml")
        shutil.copy(params_file, Path(tmp) / "params.yaml")
        dvc_log = logging.getLogger("dvc")
        level, dvc_log.level = dvc_log.level, logging.WARNING  # not "Initialized DVC repository."
        try:
            Repo.init(tmp, no_scm=True)
        finally:
            dvc_log.setLevel(level)
        with Repo(tmp) as repo:
            return _count(repo.index.stages)


def _count(stages) -> Counter:
    """Stages per family, and ``pretrain_text``: the pretraining runs that read the text (not ``mae``)."""
    out = Counter(s.name.split("@")[0] for s in stages)
    out["pretrain_text"] = sum(1 for s in stages if s.name.split("@")[0] in ("pretrain", "pretrain_seeds")
                               and not s.name.split("@", 1)[-1].startswith("mae"))
    return out


def _hours(flops: float, rate: Figure | float, how: str) -> Figure:
    value = rate.value if isinstance(rate, Figure) else rate
    basis = rate.how if isinstance(rate, Figure) else how
    return Figure(flops / value / 3600, f"estimated: FLOPs / rate; rate {basis}")


def _tokens(x: Inputs) -> Figure:
    prepared = x.root / "data/prepared"
    if not made_from(prepared, x.params["data"]):  # another profile's outputs
        return Figure(x.counts.studies.value * TOKENS_PER_REPORT[0], TOKENS_PER_REPORT[1])
    report, config = x.root / "data/cache/text-report.json", x.root / "data/cache/text-report.config.json"
    made = json.loads(config.read_text()) if config.exists() else {}
    rep = json.loads(report.read_text()) if report.exists() else {}
    # the report of these settings over these studies (the committed one is the demo's until embed reruns)
    if (rep and all(made.get(k) == x.params["embed"][k] for k in ("model", "prompt", "max_tokens"))
            and rep.get("n_studies") == x.counts.studies.value):
        return Figure(rep["n_tokens"], f"measured: {report}")
    studies = prepared / "studies.csv"
    if studies.exists():  # ~4 characters per token (English, LLaMA-style BPE) + the prompt's
        rows = _read_csv(studies)
        chars = sum(len(r.get("text", "")) + len(x.params["embed"]["prompt"]) + 1 for r in rows if r.get("text", "").strip())
        return Figure(chars / 4, f"estimated: characters / 4 of {studies}")
    return Figure(x.counts.studies.value * TOKENS_PER_REPORT[0], TOKENS_PER_REPORT[1])


def _lm(x: Inputs) -> dict[str, Any] | None:
    """The frozen LM's shape: a local folder's config.json (the converted demo LM once made), else a known hub id."""
    model = x.params["embed"]["model"]
    return lm_config(str(x.root / model) if (x.root / model / "config.json").exists() else model)


def _embed(x: Inputs) -> StagePlan:
    cfg = x.params["embed"]
    lm, tokens = _lm(x), _tokens(x)
    n = f"{tokens.value / 1e6:,.2f} M" if tokens.value >= 1e6 else f"{tokens.value:,.0f}"
    plan = StagePlan("embed", x.runs["embed"], f"{x.counts.studies.value:,.0f} reports, {n} tokens "
                     f"({tokens.how.split(':')[0]}), {cfg['model']}")
    if lm is None:
        plan.work += " (unknown model shape: no size or time)"
        return plan
    return _lm_figures(x, plan, lm, tokens)


def _lm_figures(x: Inputs, plan: StagePlan, lm: dict[str, Any], tokens: Figure) -> StagePlan:
    """``plan`` with the disk and hours of ``tokens`` through the frozen LM ``lm`` (the embed params' storage)."""
    from cxrpipe.text.store import bytes_per_token

    cfg = x.params["embed"]
    per_token = bytes_per_token(cfg["store_dtype"], lm["hidden_size"]) + TOKEN_ID_BYTES
    plan.disk = Figure(tokens.value * per_token, f"estimated: tokens x {per_token} bytes ({cfg['store_dtype']}, "
                       f"{lm['hidden_size']} dims + token id)")
    flops = tokens.value * lm_flops_per_token(lm)
    plan.gpu_hours = _hours(flops, x.gpu["embed"], "")
    plan.cpu_hours = _hours(flops, x.cpu["embed"], "")
    return plan


def _embed_sentences(x: Inputs) -> StagePlan:
    """The sentence term's cache (``pipeline.sentences``): the distinct sentences of the train reports, each with
    the prompt, counted from the prepared manifest; before prepare has run there is nothing to count."""
    from cxrpipe.text.sentences import manifest_sentences

    cfg, prepared = x.params["embed"], x.root / "data/prepared"
    plan = StagePlan("embed_sentences", x.runs["embed_sentences"], "the distinct sentences of the train reports")
    lm = _lm(x)
    if not (made_from(prepared, x.params["data"]) and (prepared / "studies.csv").exists()) or lm is None:
        plan.work += " (counted once prepare has run, with a known model shape: no size or time yet)"
        return plan
    _, sentences, _ = manifest_sentences(prepared, x.params["data"]["sections"])
    chars = sum(len(s) + len(cfg["prompt"]) + 1 for s in sentences)
    tokens = Figure(chars / 4, f"estimated: characters / 4 of the distinct train sentences of {prepared / 'studies.csv'}")
    plan.work = f"{len(sentences):,} distinct train sentences, {tokens.value:,.0f} tokens (estimated), {cfg['model']}"
    return _lm_figures(x, plan, lm, tokens)


def _prepare(x: Inputs, family: str, images: Figure) -> StagePlan:
    size, workers = x.params["prepare"]["image_size"], max(1, x.params["prepare"]["workers"])
    runs = x.runs[family]
    plan = StagePlan(family, runs, f"{images.value:,.0f} images decoded ({images.how.split(':')[0]})")
    plan.disk = Figure(images.value * size * size, f"estimated: images x {size}^2 bytes (uint8)")
    plan.cpu_hours = Figure(images.value / (DECODE_PER_CORE[0] * workers) / 3600,
                            f"{DECODE_PER_CORE[1]}, x {workers} workers (prepare.workers)")
    plan.gpu_hours = Figure(0.0, "CPU stage")
    return plan


def _transfer_images(x: Inputs) -> Figure:
    n, hows = 0.0, []
    for ds in x.params["transfer"]["datasets"]:
        root = str(x.params["transfer_data"][ds].get("root") or "")
        if root.rstrip("/") in {f"data/{d}" for d in x.params["pipeline"]["demo_nih"]}:
            n += x.params["demo_nih"]["n_images"]
            hows.append("demo_nih.n_images")
        else:
            n += TRANSFER_IMAGES.get(ds, 0)
            hows.append(f"{ds}'s published count")
    return Figure(n, "estimated: " + " + ".join(hows) if hows else "estimated: none")


def _pretrain(x: Inputs) -> StagePlan:
    cfg, sizes = x.params["pretrain"], vit_sizes(x.params["pretrain"]["model"])
    runs = x.runs["pretrain"] + x.runs["pretrain_seeds"] + x.runs["pretrain_continued"]
    train = x.counts.train_frontal
    steps = cfg["epochs"] * train.value / cfg["batch_size"]
    # the two-step flow: every run but mae (the text runs, the continued control) continues it for align.epochs
    later = x.runs["pretrain_text"] + x.runs["pretrain_continued"]
    later_epochs = cfg["align"]["epochs"] if cfg.get("flow") == "two_step" else cfg["epochs"]
    epoch_runs = (runs - later) * cfg["epochs"] + later * later_epochs
    epochs = (f"{runs} x {cfg['epochs']} epochs" if later_epochs == cfg["epochs"] else
              f"{runs - later} x {cfg['epochs']} + {later} x {later_epochs} epochs (two-step flow)")
    plan = StagePlan("pretrain (+ seeds)", runs, f"{epochs} x {train.value:,.0f} train images "
                     f"(~{steps:,.0f} steps of {cfg['batch_size']}), ViT {sizes['encoder'] / 1e6:,.1f} M + decoder "
                     f"{sizes['decoder'] / 1e6:,.1f} M weights")
    # float32 encoder per run; while running a checkpoint of weights + 2 Adam moments (kept if keep_checkpoint)
    ckpt = 3 * 4 * (sizes["encoder"] + sizes["decoder"])
    plan.disk = Figure(runs * (4 * sizes["encoder"] + (ckpt if cfg["keep_checkpoint"] else 0)),
                       "estimated: 4 bytes per encoder weight per run" + (" + checkpoints (weights + Adam)" if
                       cfg["keep_checkpoint"] else f"; + {ckpt / GIB:.2f} GiB checkpoint per run while it runs"))
    flops = epoch_runs * train.value * sizes["train_flops"]
    loss = cfg.get("loss", {})
    if not loss.get("visible_tokens", True):  # the text variants' second, (un)masked encoder pass
        seen = round((sizes["tokens"] - 1) * (1 - loss.get("contrastive_mask_ratio", 0.0))) + 1
        flops += x.runs["pretrain_text"] * later_epochs * train.value * encoder_flops(cfg["model"], seen)
        plan.work += f"; {x.runs['pretrain_text']} text run(s) add an encoder pass over {seen} tokens"
    # the loader must keep up: images/s one GPU consumes at this rate (docs/scale.md 3: per loader worker)
    need = x.gpu["pretrain"].value / sizes["train_flops"]
    plan.work += f"; the loader must feed ~{need:,.0f} images/s per GPU"
    plan.gpu_hours = _hours(flops, x.gpu["pretrain"], "")
    if "loader" in x.gpu:  # a measured loader: the GPU waits for it when its workers deliver less
        workers = cfg["data"]["num_workers"]
        feed = x.gpu["loader"].value * workers
        plan.work += f" (measured: ~{x.gpu['loader'].value:,.0f} per loader worker: {workers} give ~{feed:,.0f})"
        loader_h = epoch_runs * train.value / max(feed, 1e-9) / 3600
        if loader_h > plan.gpu_hours.value:
            plan.gpu_hours = Figure(loader_h, f"estimated: images / what {workers} loader workers deliver "
                                    f"(pretrain.data.num_workers; loader-bound: the GPU alone would take "
                                    f"{plan.gpu_hours.value:,.1f} h); rate {x.gpu['loader'].how}")
    plan.cpu_hours = _hours(flops, x.cpu["pretrain"], "")
    return plan


def _probe_flops(x: Inputs, protocol: str, images: float, train: float, epochs: float) -> float:
    """Stage three's FLOPs: features of every image once (the probes fc, linear); LP-FT adds epochs of full
    training."""
    sizes = vit_sizes(x.params["pretrain"]["model"])
    flops = images * sizes["forward_flops"]
    if protocol == "finetune":  # + validate each epoch; every point of the LP-FT grid trains anew
        flops += lpft_points(x.params) * epochs * train * (sizes["finetune_flops"] + sizes["forward_flops"] * 0.2)
    return flops


def lpft_points(params: dict) -> int:
    """Points of the LP-FT grid (``finetune.finetune``: lrs x layer_decays x head_norms; [] counts one)."""
    ftc = params["finetune"]["finetune"]
    return math.prod(max(1, len(ftc.get(k) or [])) for k in ("lrs", "layer_decays", "head_norms"))


def _finetune(x: Inputs) -> StagePlan:
    ft = x.params["finetune"]
    runs = x.runs["finetune"] + x.runs["finetune_seeds"]
    # the matrix is encoders x protocols (x seeds): each protocol of dvc.yaml's matrix runs an equal share
    protocols = yaml.safe_load((x.root / "dvc.yaml").read_text())["stages"]["finetune"]["matrix"]["protocol"]
    flops = sum(_probe_flops(x, p, x.counts.eval_images.value, x.counts.train_frontal.value, ft["finetune"]["epochs"])
                for p in protocols) * runs / len(protocols)
    points = lpft_points(x.params)
    plan = StagePlan("finetune (+ seeds)", runs, f"{runs} runs (encoders x {'/'.join(protocols)}), LP-FT "
                     f"{ft['finetune']['epochs']} epochs" + (f" x {points} grid points" if points > 1 else ""))
    plan.gpu_hours = _hours(flops, x.gpu["other"], "")
    plan.cpu_hours = _hours(flops, x.cpu["pretrain"], "")
    return plan


def _transfer(x: Inputs) -> StagePlan:
    t, images = x.params["transfer"], _transfer_images(x)
    runs = x.runs["transfer"]
    per_dataset = images.value / max(1, len(t["datasets"]))
    epochs = t["finetune_epochs"] if t["finetune_epochs"] is not None else x.params["finetune"]["finetune"]["epochs"]
    flops = 0.0
    for protocol in t["protocols"]:
        n = runs / max(1, len(t["protocols"]))
        flops += n * _probe_flops(x, protocol, per_dataset, 0.7 * per_dataset * sum(t["label_fractions"]), epochs)
    plan = StagePlan("transfer", runs, f"{runs} runs on {images.value:,.0f} images ({images.how}); "
                     f"fractions {t['label_fractions']}")
    plan.gpu_hours = _hours(flops, x.gpu["other"], "")
    plan.cpu_hours = _hours(flops, x.cpu["pretrain"], "")
    return plan


SMALL = ("demo_data", "demo_nih", "bench_data", "text_model", "random_encoder", "random_encoder_seeds", "pixels",
         "compare", "label_efficiency", "label_efficiency_summary", "zeroshot_prompts", "zeroshot", "zeroshot_transfer",
         "retrieval", "attention_maps", "transfer_compare")


def make_plan(params_file: str | Path, root: str | Path = ".",
              gpu_tflops: float | None = None) -> tuple[list[StagePlan], Counts]:
    """Every stage family the profile in ``params_file`` runs, with its figures (see the module doc), and
    the data's counts. ``gpu_tflops``: one GPU's sustained TFLOP/s for every GPU stage; None: the measured
    rates (:func:`gpu_rates`)."""
    from cxrpipe.config import load_params

    root = Path(root)
    params = load_params(params_file)
    counts = data_counts(params, root / "data" / "prepared", root)
    x = Inputs(params, root, counts, stage_runs(root, Path(params_file)), gpu_rates(params, root, gpu_tflops),
               cpu_rates(root))
    plans = [_prepare(x, "prepare", counts.images)]
    if x.runs["transfer_prepare"]:
        plans.append(_prepare(x, "transfer_prepare", _transfer_images(x)))
    plans.append(_embed(x))
    if x.runs["embed_sentences"]:
        plans.append(_embed_sentences(x))
    plans += [_pretrain(x), _finetune(x)]
    if x.runs["transfer"]:
        plans.append(_transfer(x))
    small = {f: x.runs[f] for f in SMALL if x.runs[f]}
    plans.append(StagePlan("others", sum(small.values()), ", ".join(f"{f} {n}" for f, n in small.items())
                           + " (minutes each on the demo: not estimated)"))
    return plans, counts


def _size(n: float) -> str:
    for unit, scale in (("TiB", 2**40), ("GiB", GIB), ("MiB", 2**20)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{n / 1024:,.0f} KiB"


def _h(f: Figure | None) -> str:
    """Hours as '12.3' (minutes below one hour: '7 min')."""
    if f is None:
        return "-"
    if f.value == 0:
        return "0"
    if f.value >= 1:
        return f"{f.value:,.1f}"
    return f"{round(60 * f.value)} min" if 60 * f.value >= 1 else "<1 min"


def format_plan(plans: list[StagePlan], counts: Counts, header: str, gpus: int) -> str:
    """The plan as a table, the totals, then where every figure comes from."""
    lines = [header,
             f"counts: {counts.images.value:,.0f} images selected ({counts.images.how}); "
             f"{counts.train_frontal.value:,.0f} pretraining images; {counts.studies.value:,.0f} reports", "",
             f"{'stage':<20}{'runs':>5}  {'disk':>11}  {'GPU-h':>9}  {'CPU-h':>10}  work"]
    for p in plans:
        lines.append(f"{p.family:<20}{p.runs:>5}  {_size(p.disk.value) if p.disk else '-':>11}  {_h(p.gpu_hours):>9}  "
                     f"{_h(p.cpu_hours):>10}  {p.work}")
    disk = sum(p.disk.value for p in plans if p.disk)
    gpu_h = sum(p.gpu_hours.value for p in plans if p.gpu_hours)
    cpu_h = sum(p.cpu_hours.value for p in plans if p.cpu_hours and p.family not in ("prepare", "transfer_prepare"))
    lines += [f"{'total':<20}{sum(p.runs for p in plans):>5}  {_size(disk):>11}  {_h(Figure(gpu_h, '')):>9}  "
              f"{_h(Figure(cpu_h, '')):>10}", "",
              f"GPU-h: hours on one GPU (estimated). On {gpus} GPU(s) the GPU stages take ~{gpu_h / max(gpus, 1):,.1f} h "
              "of wall time if they scale linearly; prepare and transfer_prepare run on the CPU (their CPU-h).",
              "CPU-h: the same work on this project's measured CPU throughput (2 cores), for scale.", "",
              "where each figure comes from:"]
    for p in plans:
        for name, f in (("disk", p.disk), ("GPU-h", p.gpu_hours), ("CPU-h", p.cpu_hours)):
            if f is not None:
                lines.append(f"  {p.family} {name}: {f.how}")
    return "\n".join(lines)
