"""The report sentences of the sentence term: cutting, the table, their cache through stage one's path."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from cxrpipe.data.manifest import read_studies, write_manifest
from cxrpipe.text.cache import TextCache, TextCacheError
from cxrpipe.text.embed import EmbedConfig
from cxrpipe.text.prompts import write_prompt_cache
from cxrpipe.text.sentences import (
    SENTENCE_SECTIONS,
    manifest_sentences,
    report_sentences,
    sentence_source,
    sentence_table,
    split_sentences,
    write_sentence_cache,
)

from .conftest import make_manifest

SECTIONS = ("findings", "impression")
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def test_sentences_are_cut_at_sentence_ends_only():
    assert split_sentences("There is a 1.5 cm nodule. Heart size is normal.  No effusion!") == [
        "There is a 1.5 cm nodule.", "Heart size is normal.", "No effusion!"]
    assert split_sentences("Tube in place. ___ noted. . ") == ["Tube in place.", "___ noted."]
    assert split_sentences("") == []


def test_each_sentence_is_headed_by_its_section():
    text = "Findings: Heart size is normal. No pleural effusion. Impression: No acute process."
    assert report_sentences(text, SECTIONS) == [
        "Findings: Heart size is normal.", "Findings: No pleural effusion.", "Impression: No acute process."]
    # a fallback text (no kept header) keeps bare sentences; a header inside a sentence is not a header
    assert report_sentences("Lungs are clear. No pneumothorax.", SECTIONS) == ["Lungs are clear.", "No pneumothorax."]
    assert report_sentences("Impression: Compare with findings: none.", SECTIONS) == [
        "Impression: Compare with findings: none."]


def test_the_table_holds_each_distinct_sentence_once_in_order_of_first_use():
    texts = ["Findings: A is seen. B is seen.", "Findings: B is seen. C is seen.", "Findings: A is seen."]
    sentences, rows = sentence_table(texts, SECTIONS)
    assert sentences == ["Findings: A is seen.", "Findings: B is seen.", "Findings: C is seen."]
    assert rows == [[0, 1], [1, 2], [0]]


def test_manifest_sentences_read_the_train_reports_only(tmp_path):
    prepared = make_manifest(tmp_path / "prepared", n=10)
    studies = read_studies(prepared)
    other = [dataclasses.replace(s, split="validate", text="Findings: Only on validate.") if i == 0 else s
             for i, s in enumerate(studies)]
    write_manifest(prepared, [], other)
    sids, sentences, rows = manifest_sentences(prepared, SECTIONS)
    assert "Findings: Only on validate." not in sentences and other[0].study_id not in sids
    assert other[5].study_id not in sids  # the empty report
    assert len(sids) == len(rows) == 8 and all(rows)


def test_the_sentence_cache_embeds_each_sentence_as_a_prompt_and_refuses_other_reports(tmp_path, tiny_model_dir):
    prepared = make_manifest(tmp_path / "prepared", n=10)
    cfg = EmbedConfig(model=str(tiny_model_dir), quantization="fp32", prompt="The findings are:", max_tokens=64)
    out = tmp_path / "sentences.h5"
    summary = write_sentence_cache(cfg, prepared, out, SECTIONS)
    _, sentences, rows = manifest_sentences(prepared, SECTIONS)
    assert summary["n_sentences"] == len(sentences) > len(rows) // 2 and not summary["reused"]
    cache = TextCache(out)
    assert cache.fingerprint.sections == SENTENCE_SECTIONS and cache.n_texts == len(sentences)
    # one sentence embedded alone through the prompt path gives the very same states
    write_prompt_cache(cfg, [sentences[3]], tmp_path / "one.h5", SECTIONS)
    np.testing.assert_array_equal(cache.for_study(3), TextCache(tmp_path / "one.h5").for_study(0))
    assert write_sentence_cache(cfg, prepared, out, SECTIONS)["reused"]  # up to date: kept

    raw = {"embed": {"model": str(tiny_model_dir), "quantization": "fp32", "prompt": "The findings are:",
                     "max_tokens": 64}, "data": {"sections": list(SECTIONS)}}
    source = sentence_source(raw, prepared, out)
    TextCache(out, expect=source.expect)  # the params' fingerprint matches
    sids, _, rows = manifest_sentences(prepared, SECTIONS)
    assert source.table == (sids, rows)  # the table the fingerprint was built from, for the sampler
    studies = read_studies(prepared)
    write_manifest(prepared, [], [dataclasses.replace(studies[0], text="Findings: Another report.")] + studies[1:])
    with pytest.raises(TextCacheError, match="texts_hash"):
        TextCache(out, expect=sentence_source(raw, prepared, out).expect)
