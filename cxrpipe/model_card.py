"""The model card (``README.md``) written beside every exported encoder: what it is, how and on what it was
trained (and that data's licence), what is known of its quality when it is written, how to use it, and
what it is not for. Everything in it comes from the encoder's ``config.json``, the prepared data's report
and the pretraining metrics: no number is typed by hand."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CARD_FILE = "README.md"

# data.source -> (what it is, its terms, what they mean for weights trained on it)
DATA_TERMS = {
    "mimic-cxr-jpg": (
        "[MIMIC-CXR-JPG](https://physionet.org/content/mimic-cxr-jpg/) with the reports of "
        "[MIMIC-CXR](https://physionet.org/content/mimic-cxr/) (Johnson et al., 2019; PhysioNet)",
        "PhysioNet Credentialed Health Data License 1.5.0 and its Data Use Agreement",
        "weights trained on credentialed data are derived data: share them only as the agreement allows "
        "(e.g. on PhysioNet, to credentialed users), never on a public hub",
    ),
    "mimic-cxr": (
        "[MIMIC-CXR](https://physionet.org/content/mimic-cxr/) (DICOM) and its reports (Johnson et al., 2019)",
        "PhysioNet Credentialed Health Data License 1.5.0 and its Data Use Agreement",
        "weights trained on credentialed data are derived data: share them only as the agreement allows "
        "(e.g. on PhysioNet, to credentialed users), never on a public hub",
    ),
    "iu-xray": (
        "[IU X-ray / Open-i](https://openi.nlm.nih.gov/faq#collection) (Demner-Fushman et al., 2016)",
        "Creative Commons BY-NC-ND 4.0 (as Open-i distributes it)",
        "attribution required; no commercial use; the NoDerivatives term may cover trained weights: do not "
        "publish them without checking it",
    ),
}
DEMO_TERMS = ("the generated demo data (synthetic radiographs and reports; no patient data)",
              "made by cxrpipe (MIT licence)", "no restriction from the data")
TEXT_MODEL_TERMS = {
    "llama-2": "LLaMA-2 ([Llama 2 Community License](https://ai.meta.com/llama/license/))",
    "smollm2": "SmolLM2 (Apache-2.0)",
}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _text_model(model: str) -> str:
    low = model.lower()
    if "llama-2" in low or "llama2" in low:
        return f"{TEXT_MODEL_TERMS['llama-2']}: `{model}`"
    if "smollm" in low or low.rstrip("/").endswith("text-model"):  # the demo's converted SmolLM2
        return f"{TEXT_MODEL_TERMS['smollm2']}: `{model}`"
    return f"`{model}` (its own licence)"


def _method(config: dict[str, Any], text_model: str | None) -> list[str]:
    params = config.get("params") or {}
    variant = config.get("variant", "?")
    model, loss = params.get("model") or {}, params.get("loss") or {}
    if params.get("trained") is False:
        return ["Not trained: the pretraining encoder at its initialisation (seed "
                f"{params.get('seed', '?')}), the `random` reference of the comparison. Not for use."]
    lines = [f"Masked autoencoder (MAE; He et al., 2022) pretraining, mask ratio {model.get('mask_ratio', '?')}, "
             f"{params.get('epochs', '?')} epochs of a global batch {params.get('batch_size', '?')}, seed "
             f"{params.get('seed', '?')}."]
    if variant == "multimodal":
        lines.append(
            f"Plus {loss.get('weight_text', '?')} x a contrastive loss (`{loss.get('kind', '?')}`) between the "
            "attention-pooled image patches and the frozen language model's hidden states of the study's report "
            f"({f'`{text_model}`' if text_model else 'the text cache'}), after *Multi-Modal Integration in Medical Imaging* (Chen, Huang, "
            "Tian, Yang; NYU). The text model is not part of this encoder.")
    elif variant == "mae":
        lines.append("Images alone (the text weight forced to 0): the baseline of the comparison.")
    return lines


def _data(prepare_report: dict[str, Any], trained: bool) -> list[str]:
    if not trained:
        return ["- None: never trained."]
    source = prepare_report.get("source", "?")
    what, terms, meaning = DEMO_TERMS if prepare_report.get("demo") else DATA_TERMS.get(
        source, (f"`{source}`", "the data's own terms", "check them before sharing the weights"))
    lines = [f"- Data: {what}.", f"- Licence: {terms}; for these weights: {meaning}."]
    train = ((prepare_report.get("counts") or {}).get("by_split") or {}).get("train")
    if train:
        lines.append(f"- Pretrained on the train split: {train.get('images', '?'):,} images of "
                     f"{train.get('studies', '?'):,} studies (frontal views; validate and test never seen).")
    return lines


def _metrics(metrics: dict[str, Any]) -> list[str]:
    r = metrics.get("retrieval") or {}
    lines = []
    if r:
        lines.append(
            f"- At export, image -> report retrieval on the validate split ({r.get('n_images')} images, "
            f"{r.get('n_reports')} reports): R@1 {r.get('recall@1', 0):.3f}, R@5 {r.get('recall@5', 0):.3f}, "
            f"R@10 {r.get('recall@10', 0):.3f} (chance {r.get('chance@1', 0):.3f} / {r.get('chance@5', 0):.3f} / "
            f"{r.get('chance@10', 0):.3f}). A training check, without an interval; for `mae` the heads are untrained.")
    lines.append("- Downstream quality with 95% intervals (14 CheXpert labels, linear probe and fine-tuning, paired "
                 "against the image-only MAE and the references): `data/reports/comparison.md` and "
                 "`data/metrics/comparison.json` after `dvc repro` (they do not exist when this card is written).")
    return lines


def model_card(config: dict[str, Any], prepare_report: dict[str, Any], metrics: dict[str, Any] | None = None,
               text_model: str | None = None) -> str:
    """The card's markdown for an encoder ``config`` (``config.json``'s content)."""
    from cxrpipe import __version__

    trained = (config.get("params") or {}).get("trained", True) is not False
    pre = config.get("pretrained_cfg") or {}
    size = (pre.get("input_size") or [1, "?", "?"])
    text = text_model and _text_model(text_model)
    parts = [
        f"# cxrpipe encoder `{config.get('variant', '?')}`",
        "",
        "**Not for clinical use.** A research artefact: it has not been validated for diagnosis, triage or any "
        "decision about a patient, and it is not a medical device.",
        "",
        "## What it is",
        f"- {config.get('description', config.get('arch'))}.",
        f"- Input: {size[0]} channel(s), {size[1]} x {size[2]} px: the radiograph letterboxed (longer side to "
        f"{size[1]}, aspect kept, padded with 0), `uint8 / 255`, then `(x - {config.get('pixel_mean')}) / "
        f"{config.get('pixel_std')}`. Output: pooled features `[N, {config.get('num_features', '?')}]`.",
        "- Load it with timm alone: `timm.create_model('local-dir:<this folder>', pretrained=True)`, "
        "preprocessing from `timm.data.resolve_data_config(model=model)` (exact for square, letterboxed images), "
        "or with `cxrpipe.encoder.load_encoder` + `preprocess` (any image).",
        f"- Written by cxrpipe {__version__}; the full training config is `config.json`'s `params`.",
        "",
        "## How it was trained",
        *[f"- {line}" for line in _method(config, text_model)],
        "",
        "## Training data",
        *_data(prepare_report, trained),
        *([f"- Text model (multimodal only; its outputs, not its weights, shaped this encoder): {text}."]
          if text and config.get("variant") == "multimodal" else []),
        "",
        "## Evaluation",
        *_metrics(metrics or {}),
        "",
        "## Intended use",
        "- Research on chest X-ray representation learning: frozen features or fine-tuning on grayscale frontal "
        "radiographs, compared against the `mae` baseline trained alongside it.",
        "- Out of scope: clinical use; other modalities or views; populations, scanners and label sets unlike "
        "the training data without new validation. Biases of the training data (one hospital system for "
        "MIMIC-CXR) carry over.",
        "",
    ]
    return "\n".join(parts)


def write_model_card(out_dir: str | Path, prepared: str | Path | None = None, metrics: dict[str, Any] | None = None,
                     text_model: str | None = None) -> Path:
    """Write ``<out_dir>/README.md`` from ``<out_dir>/config.json`` and ``<prepared>/prepare_report.json``."""
    from cxrpipe.encoder import CONFIG_FILE

    out_dir = Path(out_dir)
    config = _read_json(out_dir / CONFIG_FILE)
    report = _read_json(Path(prepared) / "prepare_report.json") if prepared else {}
    path = out_dir / CARD_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(model_card(config, report, metrics, text_model))
    tmp.replace(path)
    return path
