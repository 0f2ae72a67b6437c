"""PNG plots for DVC: ROC curves per label (compare) and training curves (finetune). matplotlib, Agg."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from cxrpipe.labels import CHEXPERT_LABELS

# one colour per encoder, one line style per protocol: the pair to compare is the same style in two colours,
# and no two runs of a plot are drawn alike (an encoder or protocol not named here gets grey / dotted)
COLOURS = {"mae": "tab:blue", "multimodal": "tab:orange", "random": "tab:gray", "pixels": "tab:green",
           "shuffled": "tab:purple"}
STYLES = {"fc": "-", "linear": "-.", "finetune": "--", "": ":"}  # "": a protocol-free reference (pixels)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # headless, deterministic; never opens a window
    import matplotlib.pyplot as plt

    return plt


def slug(name: str) -> str:
    """File-name-safe label name: ``"Enlarged Cardiomediastinum"`` -> ``"enlarged-cardiomediastinum"``."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _save(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.png")  # matplotlib picks the format from the suffix
    fig.savefig(tmp, dpi=100, metadata={"Software": None})  # no version stamp: same inputs, same bytes
    os.replace(tmp, path)


def roc_title(name: str, suffix: str, runs: Mapping[str, tuple], j: int, min_positives: int = 0) -> str:
    """``"Pleural Other (study level, test)\n4 positives / 190: fewer than 10, not in mAUC"``; the runs share
    their test entries, so the first run's are counted."""
    title = f"{name}{suffix}"
    if runs:
        targets, _, mask = next(iter(runs.values()))
        n_pos, n_valid = int(((targets[:, j] > 0.5) & mask[:, j]).sum()), int(mask[:, j].sum())
        title += f"\n{n_pos} positives / {n_valid}"
        if n_pos < min_positives:
            title += f": fewer than {min_positives}, not in mAUC"
    return title


def run_style(run: str) -> tuple[str, str]:
    """``"<encoder>-<protocol>"`` -> (colour of the encoder, line style of the protocol)."""
    encoder, _, protocol = run.partition("-")
    return COLOURS.get(encoder, "0.3"), STYLES.get(protocol, ":")


def plot_roc_per_label(
    runs: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
    out_dir: str | Path,
    title_suffix: str = "",
    labels: Sequence[str] = CHEXPERT_LABELS,
    min_positives: int = 0,
) -> list[Path]:
    """One PNG per label with a ROC curve per run; the title gives the label's test positives / valid entries
    and, below ``min_positives`` positives, says the label is left out of mAUC (``stats.min_test_positives``).

    ``runs``: ``"<encoder>-<protocol>"`` -> (targets ``[n, L]``, probs ``[n, L]``, mask ``[n, L]``). A label
    whose valid entries hold one class gets a PNG that says so (the set of files stays the same).
    Returns the paths written (``<out_dir>/<slug>.png``).
    """
    plt = _pyplot()
    out_dir = Path(out_dir)
    paths = []
    for j, name in enumerate(labels):
        fig, ax = plt.subplots(figsize=(4.5, 4.5))
        ax.plot([0, 1], [0, 1], color="0.7", lw=0.8, ls=":")
        drawn = 0
        for run, (targets, probs, mask) in runs.items():
            m = mask[:, j]
            y = targets[m, j] > 0.5
            if y.all() or not y.any():
                continue
            fpr, tpr, _ = roc_curve(y, probs[m, j])
            auc = roc_auc_score(y, probs[m, j])
            colour, style = run_style(run)
            ax.plot(fpr, tpr, color=colour, ls=style, lw=1.4, label=f"{run} (AUC {auc:.3f})")
            drawn += 1
        if drawn:
            ax.legend(loc="lower right", fontsize=7)
        else:
            ax.text(0.5, 0.5, "one class only in test:\nno ROC curve", ha="center", va="center")
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="false positive rate", ylabel="true positive rate")
        ax.set_title(roc_title(name, title_suffix, runs, j, min_positives), fontsize=9)
        ax.set_aspect("equal")
        fig.tight_layout()
        path = out_dir / f"{slug(name)}.png"
        _save(fig, path)
        plt.close(fig)
        paths.append(path)
    return paths


def plot_history(
    history: Sequence[Mapping[str, Any]], path: str | Path, selection: Mapping[str, Any] | None = None,
    title: str = "",
) -> Path:
    """Train/validate loss and validate mAUC (``finetune``'s ``history``), the kept point marked.

    ``selection``: a probe's ``{"selected": {lr, weight_decay, step}}`` (the curves of that grid point, by
    step) or the finetune protocol's ``{"best_epoch": e}`` (by epoch; with an LP-FT grid, ``history`` is the
    kept point's and ``selected`` names it)."""
    plt = _pyplot()
    selection = selection or {}
    chosen = selection.get("selected")
    if "best_epoch" in selection or chosen is None:
        x_key, kept = "epoch", selection.get("best_epoch")
        what = ", ".join(f"{k.replace('_', ' ')} {v:g}" if isinstance(v, float) else str(v)
                         for k, v in (chosen or {}).items()) + (", " if chosen else "")
    else:
        history = [h for h in history if h["lr"] == chosen["lr"] and h["weight_decay"] == chosen["weight_decay"]]
        x_key, kept = "step", chosen["step"]
        what = f"lr {chosen['lr']:g}, wd {chosen['weight_decay']:g}, "
    xs = [h[x_key] for h in history]
    fig, (ax_loss, ax_auc) = plt.subplots(1, 2, figsize=(8, 3.2))
    # LP-FT's epoch 0 (the probed head) has no train loss of its own
    ax_loss.plot(xs, [np.nan if h["train_loss"] is None else h["train_loss"] for h in history], marker=".",
                 label="train")
    ax_loss.plot(xs, [h["validate_loss"] for h in history], marker=".", label="validate")
    ax_loss.set(xlabel=x_key, ylabel="masked BCE", title="loss")
    ax_loss.legend()
    auc = [np.nan if h["validate_mauc"] is None else h["validate_mauc"] for h in history]
    ax_auc.plot(xs, auc, marker=".", color="tab:green")
    if kept is not None:
        ax_auc.axvline(kept, color="0.6", ls=":", label=f"kept: {what}{x_key} {kept}")
        ax_auc.legend()
    ax_auc.set(xlabel=x_key, ylabel="mAUC", title="validate mAUC")
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    _save(fig, path)
    plt.close(fig)
    return path
