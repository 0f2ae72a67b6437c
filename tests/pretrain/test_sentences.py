"""The sentence term of pretraining (pretrain.loss.sentence_weight): draws, positives and what reaches the encoder."""

from __future__ import annotations

import csv
import dataclasses

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from cxrpipe.data.manifest import read_images, read_studies, write_manifest
from cxrpipe.io import MissingInputError
from cxrpipe.pretrain.data import derange_texts, find_pairs
from cxrpipe.text.cache import Fingerprint, TextCache, hash_texts, write_text_cache
from cxrpipe.text.sentences import SENTENCE_SECTIONS, SentenceSampler, SentenceSource, manifest_sentences

from .synthetic import make_pairs
from .test_train import run, tiny_cfg

SECTIONS = ("findings",)
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def sentence_cache(path, states, token_ids) -> SentenceSource:
    """A sentence cache whose sentence k has ``states[k]``; no fingerprint check (the params one is tested in
    tests/text/test_sentences.py)."""
    fp = Fingerprint(model="synthetic", revision="", quantization="fp32", layer=-1, prompt="", sections=SENTENCE_SECTIONS,
                     max_tokens=64, texts_hash=hash_texts([]))
    write_text_cache(path, states, token_ids, list(range(len(states))), list(range(len(states))), fp)
    return SentenceSource(path, SECTIONS)


def report_states(prepared, text_path):
    """The synthetic reports are one sentence each, in train order: sentence k = train study k's report."""
    cache = TextCache(text_path)
    sids, sentences, rows = manifest_sentences(prepared, SECTIONS)
    assert [r for rs in rows for r in rs] == list(range(len(sentences)))  # one distinct sentence per report
    return [cache.for_study(s).astype(np.float32) for s in sids], [cache.token_ids(cache.row_of(s)) for s in sids]


def encoder(out):
    return load_file(str(out / "model" / "encoder.safetensors"))


def same(a, b) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def gap(a, b) -> float:
    """The largest difference between two encoders' weights."""
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def loss_rows(out) -> list[dict[str, str]]:
    with (out / "plots" / "loss.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def test_draws_come_from_the_pairs_report_only_and_are_seeded(tmp_path, data):
    prepared, text_path = data
    studies = read_studies(prepared)
    texts = {s.study_id: f"Findings: Sign {s.study_id} one. Sign {s.study_id} two. Sign {s.study_id} three."
             for s in studies}
    write_manifest(tmp_path, read_images(prepared), [dataclasses.replace(s, text=texts[s.study_id]) for s in studies])
    sids, sentences, rows = manifest_sentences(tmp_path, SECTIONS)
    src = sentence_cache(tmp_path / "s.h5", [np.zeros((2, 4), np.float32)] * len(sentences), [np.arange(2)] * len(sentences))
    text = TextCache(text_path)
    sampler = SentenceSampler(tmp_path, src.path, text, SECTIONS)
    # a caller's table (sentence_source's) is the one the sampler would build, and it is the one used
    assert SentenceSampler(tmp_path, src.path, text, SECTIONS, table=(sids, rows)).rows_of == sampler.rows_of
    reversed_rows = SentenceSampler(tmp_path, src.path, text, SECTIONS, table=(sids, [r[::-1] for r in rows]))
    assert reversed_rows.rows_of != sampler.rows_of
    for sid, rs in zip(sids, rows):
        drawn = {sampler.draw(text.row_of(sid), seed) for seed in range(60)}
        assert drawn == set(rs)  # every sentence of its report, and only those
        assert all(str(sid) in sentences[r] for r in drawn)
    row = text.row_of(sids[0])
    assert [sampler.draw(row, 7) for _ in range(3)] == [sampler.draw(row, 7)] * 3
    # the shuffled control's pairs carry the borrowed report's row: its sentences are the borrowed ones
    pairs = find_pairs(prepared, text, "train", ("PA",))
    borrowed, _ = derange_texts(pairs, seed=0)
    p = next(b for a, b in zip(pairs, borrowed) if a.study_id == sids[0])
    owner = next(a.study_id for a in pairs if a.text_row == p.text_row)
    assert str(owner) in sentences[sampler.draw(p.text_row, 3)] and owner != sids[0]


def test_a_term_without_its_cache_or_with_the_cross_pool_is_refused(tmp_path, data):
    cfg = tiny_cfg(epochs=1, loss={"sentence_weight": 0.5})
    with pytest.raises(ValueError, match=r"pipeline.sentences: \[sentences\]"):
        run(tmp_path, "a", *data, cfg)
    states, ids = report_states(*data)
    src = sentence_cache(tmp_path / "s.h5", states, ids)
    with pytest.raises(ValueError, match="latent"):
        run(tmp_path, "b", *data, tiny_cfg(epochs=1, pool={"kind": "cross", "dim": 16, "num_heads": 2},
                                          loss={"sentence_weight": 0.5, "kind": "infonce"}), sentences=src)
    with pytest.raises(MissingInputError, match="cxrpipe embed-sentences"):
        run(tmp_path, "d", *data, tiny_cfg(epochs=1, loss={"sentence_weight": 0.5}),
            sentences=SentenceSource(tmp_path / "absent.h5", SECTIONS))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        run(tmp_path, "c", *data, tiny_cfg(epochs=1, loss={"sentence_weight": 1.5}), sentences=src)


def test_sentences_that_are_the_reports_change_nothing_and_noise_does(tmp_path, data):
    """Each report is one sentence; when its cached states ARE the report's, the sentence term is the report
    term (logged step by step) and the encoder is the one trained on reports only, up to float summation order
    (the draw, the positives and the mixing lose nothing). Noise states in their place train another encoder; the mae
    variant never reads them."""
    states, ids = report_states(*data)
    twin = sentence_cache(tmp_path / "twin.h5", states, ids)
    rng = np.random.default_rng(0)
    noise = sentence_cache(tmp_path / "noise.h5", [rng.normal(size=s.shape).astype(np.float32) * 3 for s in states], ids)
    plain, _ = run(tmp_path, "plain", *data, tiny_cfg(epochs=1))
    cfg = tiny_cfg(epochs=1, loss={"sentence_weight": 0.5})
    a, m = run(tmp_path, "twin", *data, cfg, sentences=twin)
    b, _ = run(tmp_path, "noise", *data, cfg, sentences=noise)
    rows = loss_rows(a)
    assert rows and all(r["report_loss"] == r["sentence_loss"] == r["contrastive_loss"] for r in rows)
    # the same up to summation order (measured 2e-6 after these 3 steps); noise moves it ~300x as far (7e-4)
    assert gap(encoder(plain), encoder(a)) < 1e-5
    assert gap(encoder(a), encoder(b)) > 1e-4
    assert any(r["report_loss"] != r["sentence_loss"] for r in loss_rows(b))
    assert m["final_epoch"]["sentence_loss"] == m["final_epoch"]["report_loss"]
    mae, _ = run(tmp_path, "mae", *data, tiny_cfg(epochs=1), variant="mae")
    mae_noise, _ = run(tmp_path, "mae-noise", *data, cfg, variant="mae", sentences=noise)
    assert same(encoder(mae), encoder(mae_noise))


@pytest.mark.parametrize("signal", [True, False], ids=["sentences-carry-it", "sentences-without-it"])
def test_a_signal_only_the_sentences_carry_is_learned(tmp_path, signal):
    """Train reports shuffled (they say nothing about their images; validate stays truly paired), and the
    sentence term alone (weight 1): when each study's one sentence holds its TRUE report states, the encoder
    learns the clusters (validate image -> report retrieval far above chance, as with truly paired reports in
    test_pretrain_learns; measured R@10 0.81, median rank 7); when the sentence is the shuffled report's own
    states, it stays at chance (measured R@10 0.19, median rank 22; chance 0.21)."""
    from .test_pretrain_learns import CLUSTERED

    prepared, text_path = make_pairs(tmp_path, n_train=96, n_val=48, shuffle_train_text=True)
    cache = TextCache(text_path)
    sids, _, _ = manifest_sentences(prepared, SECTIONS)  # train studies in order: study k's true states are row k
    rows = [k if signal else cache.row_of(s) for k, s in enumerate(sids)]
    src = sentence_cache(tmp_path / "s.h5", [cache.text_row(r).astype(np.float32) for r in rows],
                         [cache.token_ids(r) for r in rows])
    cfg = tiny_cfg(**{**CLUSTERED, "loss": {"sentence_weight": 1.0}})
    _, m = run(tmp_path, "run", prepared, text_path, cfg, sentences=src)
    r = m["retrieval"]
    print(f"validate retrieval, sentences {'with' if signal else 'without'} the signal: {r}")
    assert r["chance@10"] == pytest.approx(10 / 47)
    if signal:
        assert r["recall@10"] > 0.5 and r["median_rank"] < 12
    else:
        assert r["recall@10"] < 0.4 and r["median_rank"] > 15
