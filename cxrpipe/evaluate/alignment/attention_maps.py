"""Attention maps: where the pooling looks, overlaid on the image, next to the report (PNG panels).

For a fixed, seeded set of test studies (one frontal image each):

* ``pool.kind: latent`` the image pool's learned query's attention over the patches (mean over heads): one
  map per image, the same whatever the report says.
* ``pool.kind: cross`` the report's tokens attend over the patches; per report SENTENCE the attention of
  its tokens is averaged (and over heads): one map per sentence (the first ``max_sentences``).

Each map is a softmax over the ``P`` real patches; it is shown as ``P x attention`` (1 = uniform), the patch
grid upsampled (bilinear) to the image, with ONE colour scale across all panels of a run (the smallest to
the largest value of any map), so panels can be compared. Written as ``<out_dir>/<study_id>.png`` plus an index JSON.

Patient text: the report (and, for the cross pool, each sentence as the caption of its map) is drawn and put
in the index ONLY when the prepared data is the embedded demo (``prepare_report.json``: ``demo: true``) or
``attention.show_report`` is true, which logs a warning: on MIMIC-CXR these are exactly the images people put
in slides, and the report text is under the dataset's licence. Otherwise a panel shows the study id, its
positive labels and the maps ("sentence 1", "sentence 2", ... for the cross pool). The PNGs of an earlier run
are removed only from a folder this stage made (its marker file, :func:`cxrpipe.io.remove_created_folder`),
never from a user's ``--out``.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import textwrap
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from cxrpipe.labels import CHEXPERT_LABELS

log = logging.getLogger(__name__)

STAGE = "attention_maps"  # named in its output folder's marker


@dataclasses.dataclass(frozen=True)
class AttentionMapsConfig:
    """Params section ``attention``."""

    encoder: str = "multimodal"  # data/models/<name> whose pooling is drawn (dvc.yaml passes it as --encoder)
    n_studies: int = 6  # test studies drawn (seeded), one panel each
    with_findings: bool = True  # draw among studies with a positive label other than No Finding
    seed: int = 0  # which studies
    views: tuple[str, ...] = ("AP", "PA")  # frontal images only
    max_sentences: int = 4  # cross pool: sentences drawn per report (its first ones)
    alpha: float = 0.45  # overlay opacity
    device: str = "auto"  # auto | cpu | cuda
    # draw the report text and sentence captions for a non-demo source (derived data under its licence: do not
    # share the PNGs or the index then); the embedded demo's synthetic reports are always shown
    show_report: bool = False


@dataclasses.dataclass(frozen=True)
class Panel:
    """One study's maps: ``maps [S, gh, gw]`` (P x attention), one per sentence (or one for the latent pool)."""

    study_id: int
    image: np.ndarray  # [H, W] uint8, the encoder's input size
    maps: np.ndarray  # [S, gh, gw]
    captions: list[str]  # [S] what each map is for (a report sentence only when the report may be shown)
    report: str  # the cleaned report; "" when it may not be shown
    positives: list[str]  # labels positive in the study's label row


def pick_studies(study_ids: Sequence[int], n: int, seed: int) -> list[int]:
    """``n`` distinct studies drawn with ``seed`` from the sorted ids (independent of their order)."""
    ids = np.unique(np.asarray(study_ids, dtype=np.int64))
    rng = np.random.default_rng(seed)
    return sorted(int(s) for s in rng.choice(ids, size=min(n, ids.size), replace=False))


def sentence_index(pieces: Sequence[str]) -> np.ndarray:
    """Token pieces (decoded text of each token, in order) -> each token's sentence number ``[L]``.

    A sentence ends at ``.``, ``!`` or ``?`` followed by whitespace (``1.7 cm`` does not end one).
    """
    out, text = [], ""
    for piece in pieces:
        out.append(len(re.findall(r"[.!?](?=\s)", text + " ")) if text.strip() else 0)
        text += piece
    return np.asarray(out, dtype=np.int64)


def sentence_attention(token_attention: torch.Tensor, sentence: np.ndarray, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, np.ndarray]:
    """``[H, L, P]`` per-token attention (rows sum to 1 over patches) -> ``[S, P]`` mean over heads and over
    each sentence's real tokens (rows still sum to 1), and the sentence numbers kept ``[S]``."""
    a = token_attention.mean(0)  # [L, P]
    sentence = np.asarray(sentence)
    keep = np.ones(len(sentence), dtype=bool) if mask is None else mask.cpu().numpy().astype(bool)
    ids = np.unique(sentence[keep])
    rows = [a[torch.from_numpy(keep & (sentence == s))].mean(0) for s in ids]
    return torch.stack(rows), ids


def _panels(cfg: AttentionMapsConfig, model_dir: Path, prepared: Path, text_cache: Path, tokenizer_source: Any,
            show: bool) -> list[Panel]:
    from cxrpipe.data.image_cache import ImageCache
    from cxrpipe.data.manifest import read_images, read_studies
    from cxrpipe.evaluate.alignment.scorer import load_aligned, pad_texts
    from cxrpipe.pretrain.heads import cross_attention, latent_attention
    from cxrpipe.text.cache import TextCache

    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    model = load_aligned(model_dir, device)
    text = TextCache(text_cache)
    views = {v.upper() for v in cfg.views}
    studies = {s.study_id: s for s in read_studies(prepared)}
    finding = {sid for sid, s in studies.items()
               if any(v == 1.0 and n != "No Finding" for n, v in zip(CHEXPERT_LABELS, s.labels))}
    first_image: dict[int, Any] = {}
    for r in read_images(prepared):
        if r.split == "test" and (not views or r.view.upper() in views) and r.study_id in text and (
                not cfg.with_findings or r.study_id in finding):
            first_image.setdefault(r.study_id, r)
    cache = ImageCache(prepared / "images.h5")
    gh, gw = model.grid
    panels = []
    for sid in pick_studies(list(first_image), cfg.n_studies, cfg.seed):
        img = torch.from_numpy(np.asarray(cache[first_image[sid].row]))[None]  # [1, S, S]
        with torch.inference_mode():
            patches = model.patch_tokens(img)  # [1, P, D]
            if model.heads.pool_kind == "latent":
                maps = latent_attention(model.heads.image_pool, patches).mean(1)  # [1, P]
                captions = ["image pool (latent query)"]
            else:
                row = text.row_of(sid)
                states, mask = pad_texts([text.text_row(row)], model.max_text_tokens)
                ids = text.token_ids(row)[-model.max_text_tokens :]
                pieces = [tokenizer_source.decode([int(t)]) for t in ids]
                tokens = model.heads.text_proj(states.to(model.device))[0]  # [L, dim]
                att = cross_attention(model.heads.cross_pool, tokens, patches[0])  # [H, L, P]
                sent = sentence_index(pieces)
                maps, kept = sentence_attention(att, sent, mask[0])
                maps, kept = maps[: cfg.max_sentences], kept[: cfg.max_sentences]
                captions = ["".join(p for p, s in zip(pieces, sent) if s == k).strip() if show else f"sentence {k + 1}"
                            for k in kept]
        size = model.encoder_config["kwargs"].get("img_size") or img.shape[-1]
        from cxrpipe.encoder import to_unit_float

        shown = (to_unit_float(img, (size, size))[0, 0] * 255).round().byte().numpy()
        st = studies.get(sid)
        positives = [n for n, v in zip(CHEXPERT_LABELS, st.labels) if v == 1.0] if st else []
        panels.append(Panel(sid, shown, (maps.float().cpu().numpy() * gh * gw).reshape(-1, gh, gw), captions,
                            st.text if st and show else "", positives))
    return panels


def upsample(grid: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``[gh, gw]`` -> ``[H, W]`` bilinear (the patch grid on the image)."""
    t = torch.from_numpy(np.ascontiguousarray(grid, dtype=np.float32))[None, None]
    return torch.nn.functional.interpolate(t, size=size, mode="bilinear", align_corners=False)[0, 0].numpy()


def draw_panel(panel: Panel, path: Path, vmin: float, vmax: float, alpha: float) -> None:
    """Image(s) with the upsampled map(s) overlaid, the report text beside, one shared colour scale."""
    from cxrpipe.evaluate.stats.plots import _pyplot, _save

    plt = _pyplot()
    n = len(panel.maps)
    fig = plt.figure(figsize=(3.0 * n + 4.0, 3.6))
    grid = fig.add_gridspec(1, n + 1, width_ratios=[1] * n + [1.3], left=0.02, right=0.99, wspace=0.25)
    im, image_axes = None, []
    for i, (m, cap) in enumerate(zip(panel.maps, panel.captions)):
        ax = fig.add_subplot(grid[0, i])
        image_axes.append(ax)
        ax.imshow(panel.image, cmap="gray", vmin=0, vmax=255)
        im = ax.imshow(upsample(m, panel.image.shape), cmap="jet", alpha=alpha, vmin=vmin, vmax=vmax)
        ax.set_title(textwrap.fill(cap, 34), fontsize=7)
        ax.axis("off")
    if im is not None:
        fig.colorbar(im, ax=image_axes, fraction=0.046, pad=0.02, label="P x attention (1 = uniform)")
    ax = fig.add_subplot(grid[0, n])
    ax.axis("off")
    labels = ", ".join(panel.positives) or "none (No Finding row empty)"
    body = f"study {panel.study_id}\npositive labels: {labels}\n\n" + (
        textwrap.fill(panel.report, 52) if panel.report else "(report not shown: attention.show_report)")
    ax.text(0, 1, body, va="top", ha="left", fontsize=7, family="monospace", transform=ax.transAxes)
    _save(fig, path)
    plt.close(fig)


def show_report(cfg: AttentionMapsConfig, prepared: Path) -> bool:
    """Whether report text may go into the outputs: the embedded demo's, or opted in (with a warning)."""
    import json

    report = prepared / "prepare_report.json"
    demo = report.is_file() and bool(json.loads(report.read_text()).get("demo"))
    if cfg.show_report and not demo:
        log.warning("attention.show_report is true: report text of %s goes into the PNGs and the index; they are "
                    "derived data under the source's licence (MIMIC-CXR: PhysioNet credentialed): do not share them",
                    prepared)
    return demo or cfg.show_report


def run_attention_maps(cfg: AttentionMapsConfig, model_dir: str | Path, prepared: str | Path,
                       text_cache: str | Path, out_dir: str | Path, index_json: str | Path | None = None,
                       tokenizer: Any = None) -> dict[str, Any]:
    """Draw the panels; ``tokenizer`` (needed for ``pool.kind: cross`` only) decodes the cached token ids."""
    from cxrpipe.inputs import encoder_name
    from cxrpipe.io import check_replaceable, mark_created, remove_created_folder, write_json_atomic

    out_dir = Path(out_dir)
    check_replaceable(out_dir, STAGE)  # before any work: a user's folder at --out is never swept
    show = show_report(cfg, Path(prepared))
    panels = _panels(cfg, Path(model_dir), Path(prepared), Path(text_cache), tokenizer, show)
    vmin = float(min(p.maps.min() for p in panels)) if panels else 0.0
    vmax = float(max(p.maps.max() for p in panels)) if panels else 1.0
    remove_created_folder(out_dir, STAGE)  # the previous run's PNGs, from a folder this stage made
    out_dir.mkdir(parents=True)
    mark_created(out_dir, STAGE)
    index = []
    for p in panels:
        draw_panel(p, out_dir / f"{p.study_id}.png", vmin, vmax, cfg.alpha)
        index.append({"study_id": p.study_id, "png": f"{p.study_id}.png", "positives": p.positives,
                      "captions": p.captions, "max": float(p.maps.max()), "min": float(p.maps.min())})
    result = {"encoder": encoder_name(model_dir), "report_shown": show, "vmin": vmin, "vmax": vmax, "panels": index}
    write_json_atomic(Path(index_json) if index_json else out_dir.parent / f"{out_dir.name}.json", result)
    log.info("attention maps: %d panels in %s (colour scale %.2f .. %.2f x uniform)", len(panels), out_dir, vmin, vmax)
    return result
