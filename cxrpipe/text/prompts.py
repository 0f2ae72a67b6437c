"""Short texts that are not reports (the zero-shot prompts) through stage one's own code path.

Same model, quantization, layer, prompt suffix (``embed.prompt`` is appended, as to every report), BOS
handling and float16 storage as :func:`cxrpipe.text.embed.run_embed`; the result is a small text cache of
its own (:func:`cxrpipe.text.cache.write_text_cache` format) whose fingerprint records the embed params and
the hash of the prompt texts, so a reader refuses it when either changed. The "study id" of a prompt is
its index in the list it was given; ``sections`` is :data:`PROMPT_SECTIONS` (no report cache has it).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

from cxrpipe.text.cache import Fingerprint, TextCache, write_text_cache
from cxrpipe.text.embed import (
    EmbedConfig,
    distinct_texts,
    embed_batch,
    expected_fingerprint,
    recorded_fingerprint,
    to_float16,
    tokenize,
)

log = logging.getLogger(__name__)

PROMPT_SECTIONS = ("zeroshot-prompts",)  # marks a prompt cache in its fingerprint


def prompt_fingerprint(cfg: EmbedConfig, texts: Sequence[str]) -> Fingerprint:
    """The fingerprint a prompt cache of ``texts`` made with the ``embed`` params has."""
    return expected_fingerprint(cfg, list(texts), PROMPT_SECTIONS)


def write_prompt_cache(cfg: EmbedConfig, texts: Sequence[str], out_path: str | Path, batch_size: int = 32) -> dict[str, Any]:
    """Embed ``texts`` (+ ``cfg.prompt``) with the frozen LM into ``out_path``; rows keyed by text index.

    A finished cache with the same fingerprint is kept as it is. Returns a small summary.
    """
    from cxrpipe.text.model import bos_added, load_text_model, load_tokenizer

    out_path = Path(out_path)
    fingerprint = prompt_fingerprint(cfg, texts)
    if out_path.exists():
        try:
            TextCache(out_path, expect=fingerprint)
            log.info("%s is up to date", out_path)
            return {"n_texts": len(texts), "reused": True}
        except Exception as e:  # unfinished or other settings: made again
            log.info("remaking %s (%s)", out_path, e)
    if any(not t.strip() for t in texts):
        raise ValueError("a zero-shot prompt is empty")
    table = distinct_texts(list(range(len(texts))), list(texts), cfg.prompt)
    tokenizer = load_tokenizer(cfg.model, cfg.revision)
    bos = bos_added(tokenizer)
    ids, n_truncated = tokenize(tokenizer, table.texts, cfg.max_tokens, cfg.prompt)
    model, _ = load_text_model(cfg.model, cfg.quantization, cfg.revision)
    fingerprint = recorded_fingerprint(fingerprint, model.device)
    embeddings = []
    for a in range(0, len(ids), batch_size):
        for h in embed_batch(model, ids[a : a + batch_size], cfg.layer, bos, tokenizer.pad_token_id):
            embeddings.append(to_float16(h.numpy())[0])
    write_text_cache(out_path, embeddings, ids, table.study_ids, table.study_rows, fingerprint)
    log.info("wrote %s: %d prompts, %d distinct texts, %d tokens", out_path, len(texts), len(table.texts),
             sum(len(x) for x in ids))
    return {"n_texts": len(texts), "n_distinct": len(table.texts), "n_tokens": int(sum(len(x) for x in ids)),
            "n_truncated": n_truncated, "reused": False}
