"""Short texts that are not reports (the zero-shot prompts) through stage one's own code path.

A prompt is cleaned exactly as a report is (:func:`clean_prompts`: :func:`cxrpipe.data.reports.clean_report`
with ``data.sections``, so "There is a ptx" reads "There is pneumothorax" as every report does), then goes
through the same model, quantization, layer, prompt suffix (``embed.prompt`` is appended, as to every
report), BOS handling and storage form (``embed.store_dtype``) as :func:`cxrpipe.text.embed.run_embed`; the
result is a small text cache of its own (:func:`cxrpipe.text.cache.write_text_cache` format) whose
fingerprint records the embed params, the storage form and the hash of the cleaned prompts, so a reader
refuses it when any changed. The "study id" of a prompt is its index in the list it was given; ``sections``
is :data:`PROMPT_SECTIONS` (no report cache has it). The same path embeds the report sentences of
:mod:`cxrpipe.text.sentences` (another marker).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

from cxrpipe.config import ConfigError
from cxrpipe.data.reports import clean_report
from cxrpipe.io import CorruptFileError
from cxrpipe.text.cache import Fingerprint, TextCache, TextCacheError, write_text_cache
from cxrpipe.text.embed import (
    EmbedConfig,
    distinct_texts,
    embed_batch,
    expected_fingerprint,
    recorded_fingerprint,
    stop_at_layer,
    tokenize,
)

log = logging.getLogger(__name__)

PROMPT_SECTIONS = ("zeroshot-prompts",)  # marks a prompt cache in its fingerprint


def clean_prompts(texts: Sequence[str], sections: Sequence[str]) -> list[str]:
    """Each prompt as the report cleaning leaves a report (sections ``data.sections``, terminology,
    whitespace); a prompt left empty is an error naming it."""
    out = []
    for t in texts:
        cleaned = clean_report(t, keep=tuple(sections)).text
        if not cleaned:
            raise ConfigError(f"params 'zeroshot.prompts': {t!r} is empty once cleaned as a report")
        out.append(cleaned)
    return out


def prompt_fingerprint(cfg: EmbedConfig, texts: Sequence[str], sections: Sequence[str],
                       marker: tuple[str, ...] = PROMPT_SECTIONS, strict_identity: bool = True) -> Fingerprint:
    """The fingerprint a prompt cache of ``texts`` (as written in params) made with the ``embed`` params and
    ``data.sections`` has; ``marker`` names the kind of short texts (prompts, or report sentences);
    ``strict_identity`` as :func:`~cxrpipe.text.embed.expected_fingerprint` (False: for readers that never need
    the model, such as pretrain)."""
    return expected_fingerprint(cfg, clean_prompts(texts, sections), marker, strict_identity=strict_identity)


def write_prompt_cache(cfg: EmbedConfig, texts: Sequence[str], out_path: str | Path, sections: Sequence[str],
                       batch_size: int = 32, marker: tuple[str, ...] = PROMPT_SECTIONS) -> dict[str, Any]:
    """Clean ``texts`` as reports, embed them (+ ``cfg.prompt``) with the frozen LM into ``out_path`` in the
    ``cfg.store_dtype`` form; rows keyed by text index. A finished cache with the same fingerprint is kept
    as it is. ``marker``: the fingerprint's ``sections`` (:data:`PROMPT_SECTIONS`, or the report sentences'
    marker of :mod:`cxrpipe.text.sentences`). Returns a small summary."""
    from cxrpipe.text.model import bos_added, load_text_model, load_tokenizer

    out_path = Path(out_path)
    cleaned = clean_prompts(texts, sections)
    fingerprint = expected_fingerprint(cfg, cleaned, marker)
    if out_path.exists():
        try:
            TextCache(out_path, expect=fingerprint)
            log.info("%s is up to date", out_path)
            return {"n_texts": len(texts), "reused": True}
        except (TextCacheError, CorruptFileError) as e:  # unfinished, damaged or other settings: made again
            log.info("remaking %s (%s)", out_path, e)
    table = distinct_texts(list(range(len(cleaned))), cleaned, cfg.prompt)
    tokenizer = load_tokenizer(cfg.model, cfg.revision)
    bos = bos_added(tokenizer)
    ids, n_truncated = tokenize(tokenizer, table.texts, cfg.max_tokens, cfg.prompt)
    model, _ = load_text_model(cfg.model, cfg.quantization, cfg.revision)
    layer = stop_at_layer(model, cfg.layer)
    fingerprint = recorded_fingerprint(fingerprint, model.device)
    embeddings = []  # float32 [L_i, hidden]; stored in the fingerprint's form
    for a in range(0, len(ids), batch_size):
        embeddings += [h.numpy() for h in embed_batch(model, ids[a : a + batch_size], layer, bos, tokenizer.pad_token_id)]
    n_clipped = write_text_cache(out_path, embeddings, ids, table.study_ids, table.study_rows, fingerprint)
    log.info("wrote %s: %d texts, %d distinct, %d tokens (%s, %d values clipped)", out_path, len(texts),
             len(table.texts), sum(len(x) for x in ids), fingerprint.store_dtype, n_clipped)
    return {"n_texts": len(texts), "n_distinct": len(table.texts), "n_tokens": int(sum(len(x) for x in ids)),
            "n_truncated": n_truncated, "reused": False}
