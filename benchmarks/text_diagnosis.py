"""What the frozen text model's hidden states hold about the labels, per layer and pooling (issue 19, part 5).

For every distinct cleaned report of the prepared folder (with the params' prompt appended, as stage one does)
and for the zero-shot prompt pairs, this runs the text model once with every hidden state and keeps, per
layer, the prompt's LAST token vector and the MEAN over the report's tokens (BOS dropped; every token
LayerNorm-ed first, as the pretraining's text projection does). Then, on the report vectors:

* ``probe``: a supervised reference, logistic regression per label fitted on TRAIN, mAUC on VALIDATE: how
  much of the labels a learned text side could read from that layer and pooling;
* ``zeroshot``: no training, each report scored by cos(report, positive prompt) - cos(report, negative
  prompt), mAUC on VALIDATE: what the frozen geometry gives for free (raw, and centred: the mean report
  vector subtracted first);
* ``pair_cos``: per label, the cosine between its positive and negative prompt (centred): how far apart the
  frozen model puts "There is X" and "No X".

Validate only; test is never read. Prints one table and writes JSON (``--out``).

    python benchmarks/text_diagnosis.py --prepared data/prepared --out data/sweep/text_diagnosis.json
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np


def hidden_vectors(model, tokenizer, texts: list[str], prompt: str, max_tokens: int, batch: int = 16):
    """Per text and layer: (last token ``[n, layers+1, hidden]``, mean over tokens ``[n, layers+1, hidden]``)."""
    import torch
    import torch.nn.functional as F

    from cxrpipe.text.embed import pad_batch, tokenize
    from cxrpipe.text.model import bos_added
    from cxrpipe.data.reports import apply_prompt

    ids, _ = tokenize(tokenizer, [apply_prompt(t, prompt) for t in texts], max_tokens, prompt)
    bos = bos_added(tokenizer)
    last, mean = [], []
    for a in range(0, len(ids), batch):
        x, m, ends, start = pad_batch(ids[a : a + batch], bos, tokenizer.pad_token_id)
        with torch.inference_mode():
            out = model.base_model(input_ids=x, attention_mask=m, output_hidden_states=True, use_cache=False)
        hs = torch.stack(out.hidden_states, dim=1).float()  # [n, layers+1, width, hidden]
        hs = F.layer_norm(hs, (hs.shape[-1],))
        for i, end in enumerate(ends):
            last.append(hs[i, :, end - 1].numpy())
            mean.append(hs[i, :, start:end].mean(dim=1).numpy())
    return np.stack(last), np.stack(mean)


def _mauc(y: np.ndarray, s: np.ndarray, names: list[str]) -> tuple[float, dict[str, float]]:
    from sklearn.metrics import roc_auc_score

    per = {}
    for j, name in enumerate(names):
        ok = ~np.isnan(y[:, j])
        yy = y[ok, j]
        if yy.min() == yy.max() or yy.sum() < 5:
            continue
        per[name] = float(roc_auc_score(yy, s[ok, j]))
    return float(np.mean(list(per.values()))), per


def _probe(xtr, ytr, xva, yva, names):
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    sc = StandardScaler().fit(xtr)
    xtr, xva = sc.transform(xtr), sc.transform(xva)
    scores = np.zeros((len(xva), len(names)))
    for j in range(len(names)):
        ok = ~np.isnan(ytr[:, j])
        yy = ytr[ok, j]
        if yy.min() == yy.max():
            continue
        clf = LogisticRegression(C=0.1, max_iter=2000).fit(xtr[ok], yy)
        scores[:, j] = clf.decision_function(xva)
    return _mauc(yva, scores, names)


def _zeroshot(reports, pos, neg, yva, names, centre):
    def unit(v):
        return v / np.linalg.norm(v, axis=-1, keepdims=True).clip(1e-9)

    if centre is not None:
        reports, pos, neg = reports - centre, pos - centre, neg - centre
    r, p, n = unit(reports), unit(pos), unit(neg)
    s = r @ p.T - r @ n.T  # [N, labels]
    return _mauc(yva, s, names), [float(x) for x in (p * n).sum(-1)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--prepared", type=Path, default=Path("data/prepared"))
    ap.add_argument("--out", type=Path, default=Path("data/sweep/text_diagnosis.json"))
    ap.add_argument("--quantization", default=None, help="default: the params' embed.quantization")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from cxrpipe.config import load_params, section
    from cxrpipe.data.manifest import label_matrix, read_label_names, read_studies
    from cxrpipe.labels import BlankPolicy, UncertainPolicy, targets_and_mask
    from cxrpipe.text.embed import EmbedConfig
    from cxrpipe.text.model import load_text_model

    raw = load_params(args.params)
    emb = section(raw, "embed", EmbedConfig)
    prompts = raw["zeroshot"]["prompts"]
    names = list(read_label_names(args.prepared))
    studies = [s for s in read_studies(args.prepared) if s.split in ("train", "validate") and s.has_labels]
    y = label_matrix(studies, len(names))
    y, mask = targets_and_mask(y, UncertainPolicy.IGNORE, BlankPolicy.ZEROS)
    y = np.where(mask, y, np.nan)
    split = np.array([s.split for s in studies])
    t0 = time.time()
    model, tok = load_text_model(emb.model, args.quantization or emb.quantization, emb.revision, device="cpu")
    last, mean = hidden_vectors(model, tok, [s.text for s in studies], emb.prompt, emb.max_tokens)
    zs_names = [n for n in names if n in prompts]
    p_last, p_mean = hidden_vectors(model, tok, [prompts[n][0] for n in zs_names], emb.prompt, emb.max_tokens)
    n_last, n_mean = hidden_vectors(model, tok, [prompts[n][1] for n in zs_names], emb.prompt, emb.max_tokens)
    seconds = time.time() - t0
    tr, va = split == "train", split == "validate"
    yz = y[:, [names.index(n) for n in zs_names]]
    rows = []
    for pooling, rep, pp, nn in (("last", last, p_last, n_last), ("mean", mean, p_mean, n_mean)):
        for layer in range(rep.shape[1]):
            x = rep[:, layer]
            probe, _ = _probe(x[tr], y[tr], x[va], y[va], names)
            (zs_raw, per_raw), _ = _zeroshot(x[va], pp[:, layer], nn[:, layer], yz[va], zs_names, None)
            (zs_c, per_c), pair_cos = _zeroshot(x[va], pp[:, layer], nn[:, layer], yz[va], zs_names, x[tr].mean(0))
            rows.append({"pooling": pooling, "layer": layer, "probe_validate_mauc": probe,
                         "zeroshot_raw_validate_mauc": zs_raw, "zeroshot_centred_validate_mauc": zs_c,
                         "zeroshot_centred_per_label": per_c, "pair_cos_centred": dict(zip(zs_names, pair_cos))})
            print(f"{pooling:4s} layer {layer:2d}: probe {probe:.3f}  zero-shot raw {zs_raw:.3f}  centred {zs_c:.3f}"
                  f"  mean pair cos {np.mean(pair_cos):+.3f}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows, "n_train": int(tr.sum()), "n_validate": int(va.sum()),
                                    "seconds": round(seconds, 1), "quantization": args.quantization or emb.quantization},
                                   indent=1))


if __name__ == "__main__":
    main()
