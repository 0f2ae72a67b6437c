"""Sentences of the train reports as training text of their own (``pretrain.loss.sentence_weight``).

Zero-shot asks the aligned text side to read one-sentence prompts ("Findings: There is pneumothorax."), while
pretraining only ever showed it whole reports. This module cuts every train report into sentences, each headed
by its section as a prompt is (``"Findings: No pneumothorax."``; a report that fell back to a headerless text
keeps its sentences bare), and embeds the distinct ones through stage one's frozen LM on their own: the same
model, quantization, layer, prompt suffix and storage form, by :func:`cxrpipe.text.prompts.write_prompt_cache`
(marker :data:`SENTENCE_SECTIONS`), so a sentence reads exactly as a zero-shot prompt does.

Pretraining then adds a second contrastive term (:class:`SentenceSampler` draws the sentences): every image is
also compared with ONE sentence drawn from its report, ``contrastive = (1 - w) x report term + w x sentence
term`` on the same image embedding (ConVIRT and GLoRIA read sentences of the report in a similar way). The draw
is a pure function of ``(seed, epoch, index)``, so resume stays exact; the sentence's positives are the samples
that drew the same sentence or come from the same study. The ``shuffled`` control draws from its borrowed report
(the sampler is keyed by the report's text row).

The cache's fingerprint hashes the sentence list, rebuilt from ``studies.csv`` with ``data.sections``, so a cache
of other reports or settings is refused.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from cxrpipe.io import MissingInputError
from cxrpipe.text.cache import Fingerprint, TextCache
from cxrpipe.text.prompts import prompt_fingerprint, write_prompt_cache

SENTENCE_SECTIONS = ("report-sentences",)  # marks a sentence cache in its fingerprint

# a sentence ends at . ! or ? followed by a space and an upper-case letter, a digit, a placeholder, a bracket or
# stray punctuation (a piece without a letter or digit is dropped); "Dr. Smith" style abbreviations are rare in
# the kept sections and cost only one extra cut
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9_(.!?])")


def split_sentences(text: str) -> list[str]:
    """``text`` cut at sentence ends (whitespace kept single); pieces with no letter or digit are dropped."""
    return [s.strip() for s in _SENTENCE_END.split(text) if re.search(r"[A-Za-z0-9]", s)]


def _header_pattern(sections: Sequence[str]) -> re.Pattern[str]:
    names = "|".join(re.escape(s.capitalize()) for s in sorted(set(sections), key=len, reverse=True))
    return re.compile(rf"(?:^|(?<= ))({names}): ")


def report_sentences(text: str, sections: Sequence[str]) -> list[str]:
    """A cleaned report (studies.csv's ``text``: ``"Findings: ... Impression: ..."`` with the kept sections
    ``sections``) -> its sentences, each headed by its section (``"Impression: No pneumothorax."``); a text
    without any kept header (the extractor's fallbacks) gives bare sentences."""
    pattern = _header_pattern(sections) if sections else None
    parts = pattern.split(text) if pattern else [text]
    out = split_sentences(parts[0])  # text before the first header (a fallback text: all of it)
    for name, body in zip(parts[1::2], parts[2::2]):
        out += [f"{name}: {s}" for s in split_sentences(body)]
    return out


def sentence_table(texts: Iterable[str], sections: Sequence[str]) -> tuple[list[str], list[list[int]]]:
    """Reports -> (the distinct sentences, in order of first use; each report's sentence rows, in its order)."""
    row_of: dict[str, int] = {}
    per_report = []
    for text in texts:
        rows = []
        for s in report_sentences(text, sections):
            rows.append(row_of.setdefault(s, len(row_of)))
        per_report.append(rows)
    return list(row_of), per_report


def train_reports(prepared: str | Path) -> tuple[list[int], list[str]]:
    """Study ids and cleaned texts of the train split's non-empty reports, in studies.csv order."""
    from cxrpipe.data.manifest import read_studies

    studies = [s for s in read_studies(prepared) if s.split == "train" and s.text.strip()]
    return [s.study_id for s in studies], [s.text for s in studies]


def manifest_sentences(prepared: str | Path, sections: Sequence[str]) -> tuple[list[int], list[str], list[list[int]]]:
    """(train study ids, the distinct sentences of their reports, each study's sentence rows)."""
    sids, texts = train_reports(prepared)
    sentences, rows = sentence_table(texts, sections)
    return sids, sentences, rows


def write_sentence_cache(cfg: Any, prepared: str | Path, out_path: str | Path, sections: Sequence[str],
                         batch_size: int = 32) -> dict[str, Any]:
    """Embed the distinct sentences of the train reports into ``out_path`` (rows keyed by sentence index)."""
    sids, sentences, rows = manifest_sentences(prepared, sections)
    summary = write_prompt_cache(cfg, sentences, out_path, sections, batch_size, marker=SENTENCE_SECTIONS)
    return {**summary, "n_reports": len(sids), "n_sentences": len(sentences),
            "sentences_per_report": float(np.mean([len(r) for r in rows])) if rows else 0.0}


@dataclasses.dataclass(frozen=True)
class SentenceSource:
    """Where pretraining finds the sentences: the cache, ``data.sections``, the fingerprint the params imply."""

    path: Path
    sections: tuple[str, ...]
    expect: Fingerprint | None = None
    # (train study ids, each one's sentence rows) as the fingerprint was built from; None: rebuilt by the sampler
    table: tuple[list[int], list[list[int]]] | None = None


def sentence_source(raw: dict[str, Any], prepared: str | Path, path: str | Path | None) -> SentenceSource | None:
    """The :class:`SentenceSource` of a sentence cache under params ``raw`` (None: no cache given); the model's
    identity is recorded only when it is at hand offline, as pretrain checks the report cache."""
    if path is None:
        return None
    from cxrpipe.config import section
    from cxrpipe.data.prepare import DataConfig
    from cxrpipe.text.embed import EmbedConfig

    sections = tuple(section(raw, "data", DataConfig).sections)
    sids, sentences, rows = manifest_sentences(prepared, sections)
    expect = prompt_fingerprint(section(raw, "embed", EmbedConfig), sentences, sections, marker=SENTENCE_SECTIONS,
                                strict_identity=False)
    return SentenceSource(Path(path), sections, expect, (sids, rows))


class SentenceSampler:
    """One sentence of a report, drawn per (seed, epoch, index): states from the sentence cache.

    Keyed by the REPORT CACHE's text row (identical reports share a row and so their sentences; the ``shuffled``
    control's borrowed row draws from the borrowed report). ``expect`` is the fingerprint the params imply (None:
    unchecked); ``table`` the (study ids, sentence rows) of :func:`manifest_sentences` when the caller has them.
    """

    def __init__(self, prepared: str | Path, path: str | Path, text_cache: TextCache, sections: Sequence[str],
                 expect: Fingerprint | None = None, table: tuple[list[int], list[list[int]]] | None = None):
        if not Path(path).exists():
            raise MissingInputError(f"{path} not found (the sentence cache): `dvc repro` makes it with "
                                    "'pipeline.sentences: [sentences]' (docs/alignment.md), or `cxrpipe embed-sentences`")
        self.cache = TextCache(path, expect=expect, stage="embed_sentences")
        if table is None:
            sids, _, rows = manifest_sentences(prepared, sections)
        else:
            sids, rows = table
        self.rows_of: dict[int, list[int]] = {}
        for sid, r in zip(sids, rows):
            if sid in text_cache and r:
                self.rows_of.setdefault(text_cache.row_of(sid), r)
        missing = [r for rs in self.rows_of.values() for r in rs if r not in self.cache]
        if missing:
            raise ValueError(f"{path} lacks {len(missing)} sentences of these reports (first: {missing[0]})")

    def draw(self, text_row: int, seed: int) -> int:
        """The sentence drawn for report row ``text_row`` by a sample whose augmentation seed is ``seed`` (a
        pure function of both, so of (seed, epoch, index)); its own stream, apart from the augmentation's."""
        rows = self.rows_of[text_row]
        return rows[int(np.random.default_rng([seed, 5]).integers(len(rows)))]

    def states(self, sentence: int) -> np.ndarray:
        """``[L, hidden]`` of sentence ``sentence`` (its index in the sentence list)."""
        return self.cache.for_study(sentence)
