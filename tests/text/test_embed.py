"""The embed stage in-process: dedup, BOS, padding-exactness, the cache it writes, refusal, resume."""

from __future__ import annotations

import json
import types

import h5py
import numpy as np
import pytest
import torch
import yaml

from cxrpipe.data.manifest import read_studies
from cxrpipe.data.reports import apply_prompt
from cxrpipe.text import embed as embed_mod
from cxrpipe.text.cache import SCHEMA_VERSION, TextCache, TextCacheError, dataset
from cxrpipe.text.embed import (
    EmbedConfig,
    distinct_texts,
    embed_batch,
    expected_fingerprint,
    parts_dir,
    run_embed,
    stop_at_layer,
    to_float16,
)
from cxrpipe.text.model import load_text_model, load_tokenizer

SECTIONS = ("findings", "impression")


@pytest.fixture(scope="module")
def fp32_model(tiny_model_dir):
    return load_text_model(tiny_model_dir, "fp32", device="cpu")


def cfg_for(model_dir, **kw) -> EmbedConfig:
    base = dict(model=str(model_dir), quantization="fp32", prompt="The findings are:", max_tokens=192,
                batch_tokens=160, part_tokens=100)
    base.update(kw)
    return EmbedConfig(**base)


def test_identical_texts_are_embedded_once_and_map_back(manifest_dir):
    studies = read_studies(manifest_dir)
    table = distinct_texts([s.study_id for s in studies], [s.text for s in studies], "The findings are:")
    assert table.n_empty == 1
    assert len(table.texts) == 7 and len(set(table.texts)) == 7
    assert len(table.study_ids) == len(studies) - 1
    by_id = {s.study_id: s.text for s in studies}
    for sid, row in zip(table.study_ids, table.study_rows):
        assert table.texts[row] == apply_prompt(by_id[sid], "The findings are:")
    # canonical order: rows appear in the order of their first (smallest) study id, whatever the input order
    assert table.study_ids == sorted(table.study_ids)
    assert list(dict.fromkeys(table.study_rows)) == list(range(7))
    shuffled = list(reversed(studies))
    again = distinct_texts([s.study_id for s in shuffled], [s.text for s in shuffled], "The findings are:")
    assert again == table


def test_padded_batch_equals_unpadded_forward_with_bos_dropped(fp32_model):
    model, tok = fp32_model
    texts = ["No acute cardiopulmonary process.", "The heart size is mildly enlarged. No pneumothorax is seen."]
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    assert len(ids[0]) != len(ids[1])
    for layer in (-1, 1):
        out = embed_batch(model, ids, layer, bos=tok.bos_token_id, pad=tok.pad_token_id)
        for t, x, h in zip(texts, ids, out):
            assert h.shape == (len(x), model.config.hidden_size)  # BOS dropped, no padding
            full = tok(t, return_tensors="pt")["input_ids"]  # the tokenizer's own BOS + text
            assert full[0, 0].item() == tok.bos_token_id and full[0, 1:].tolist() == x
            with torch.inference_mode():
                ref = model.base_model(input_ids=full, output_hidden_states=True)
            want = (ref.last_hidden_state if layer == -1 else ref.hidden_states[layer])[0, 1:]
            torch.testing.assert_close(h, want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("layer", [0, 1, -2])
def test_a_mid_layer_is_computed_without_the_layers_above_it(tiny_model_dir, fp32_model, layer):
    full, tok = fp32_model
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in ("No acute process.", "Small left effusion.")]
    want = embed_batch(full, ids, layer, tok.bos_token_id, tok.pad_token_id)
    model, _ = load_text_model(tiny_model_dir, "fp32", device="cpu")
    read = stop_at_layer(model, layer)
    assert read == -1 and len(model.base_model.layers) == layer % 3  # hidden_states[k]: k layers, none above
    got = embed_batch(model, ids, read, tok.bos_token_id, tok.pad_token_id)
    for g, w in zip(got, want):
        assert torch.equal(g, w)  # the same kernels on the same inputs: bit for bit


def test_the_last_layer_keeps_the_whole_model_and_a_bad_layer_is_refused(tiny_model_dir):
    model, _ = load_text_model(tiny_model_dir, "fp32", device="cpu")
    for layer in (-1, 2):
        assert stop_at_layer(model, layer) == layer and len(model.base_model.layers) == 2
        assert not isinstance(model.base_model.norm, torch.nn.Identity)
    for bad in (3, -4):
        with pytest.raises(ValueError, match="out of range"):
            stop_at_layer(model, bad)
    other = types.SimpleNamespace(config=model.config, base_model=torch.nn.Module())  # not LLaMA-style
    with pytest.raises(ValueError, match="no `layers` and `norm`"):
        stop_at_layer(other, 1)
    assert stop_at_layer(other, -1) == -1  # the last layer needs nothing of the sort


def test_run_embed_stores_the_chosen_layer(tiny_model_dir, manifest_dir, fp32_model, tmp_path):
    cfg = cfg_for(tiny_model_dir, layer=1)
    out = tmp_path / "cache" / "text.h5"
    run_embed(cfg, manifest_dir, out, SECTIONS, progress=False)
    cache, (model, tok) = TextCache(out), fp32_model
    s = next(s for s in read_studies(manifest_dir) if s.text)
    ids = tok(apply_prompt(s.text, cfg.prompt), add_special_tokens=False)["input_ids"]
    for layer, close in ((1, True), (-1, False)):
        alone = embed_batch(model, [ids], layer, tok.bos_token_id, tok.pad_token_id)[0].numpy()
        assert np.allclose(cache.for_study(s.study_id).astype(np.float32), alone, atol=2e-3, rtol=2e-3) is close


def test_float16_clipping_is_counted():
    x = np.array([[1.0, -7e4], [7e4, 2.0]], dtype=np.float32)
    y, n = to_float16(x)
    assert n == 2 and y.dtype == np.float16 and np.isfinite(y).all() and y[0, 1] == -65504


def test_run_embed_writes_the_ragged_float16_cache(tiny_model_dir, manifest_dir, fp32_model, tmp_path):
    cfg = cfg_for(tiny_model_dir)
    out = tmp_path / "cache" / "text.h5"
    summary = run_embed(cfg, manifest_dir, out, SECTIONS, progress=False)
    # linked: the parts are the data (nothing copied), text.h5 an index of a few KB over them
    parts = sorted(parts_dir(out).glob("part-*.h5"))
    assert len(parts) == summary.n_parts and out.stat().st_size < sum(p.stat().st_size for p in parts) / 4
    assert summary.n_texts == 7 and summary.n_empty == 1 and summary.n_parts > 2
    studies = read_studies(manifest_dir)
    fp = expected_fingerprint(cfg, [s.text for s in studies], SECTIONS)
    cache = TextCache(out, expect=fp)
    with h5py.File(out, "r") as f:
        emb = f["embeddings"]
        assert emb.dtype == np.float16 and emb.is_virtual and len(emb.virtual_sources()) == summary.n_parts
        assert f["offsets"][-1] == f["embeddings"].shape[0] == f["token_ids"].shape[0] == summary.n_tokens
        for key in ("schema_version", "model", "revision", "quantization", "layer", "prompt", "sections",
                    "max_tokens", "texts_hash", "package_version"):
            assert key in f.attrs
        assert f.attrs["complete"] and f.attrs["schema_version"] == SCHEMA_VERSION
        assert f.attrs["prompt"] == "The findings are:" and json.loads(f.attrs["sections"]) == list(SECTIONS)
    model, tok = fp32_model
    for s in studies:
        if not s.text:
            assert s.study_id not in cache
            continue
        text = apply_prompt(s.text, cfg.prompt)
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert cache.token_ids(cache.row_of(s.study_id)).tolist() == ids
        alone = embed_batch(model, [ids], -1, tok.bos_token_id, tok.pad_token_id)[0].numpy()
        np.testing.assert_allclose(cache.for_study(s.study_id).astype(np.float32), alone, atol=2e-3, rtol=2e-3)


def test_reader_refuses_a_cache_made_with_another_prompt(tiny_model_dir, manifest_dir, tmp_path):
    cfg = cfg_for(tiny_model_dir)
    out = tmp_path / "text.h5"
    run_embed(cfg, manifest_dir, out, SECTIONS, progress=False)
    texts = [s.text for s in read_studies(manifest_dir)]
    other = cfg_for(tiny_model_dir, prompt="Findings:")
    with pytest.raises(TextCacheError, match=r"prompt: cache='The findings are:' params='Findings:'"):
        TextCache(out, expect=expected_fingerprint(other, texts, SECTIONS))
    with pytest.raises(TextCacheError, match="sections"):
        TextCache(out, expect=expected_fingerprint(cfg, texts, ("impression",)))
    TextCache(out, expect=expected_fingerprint(cfg, texts, SECTIONS))  # the right params open it



def _crash_after_parts(monkeypatch, n: int):
    """Make embed's write_part raise KeyboardInterrupt once ``n`` parts are written; returns the real one."""
    real_write = embed_mod.write_part
    calls = []

    def crash_after(*a, **k):
        if len(calls) == n:
            raise KeyboardInterrupt("simulated crash")
        calls.append(1)
        real_write(*a, **k)

    monkeypatch.setattr(embed_mod, "write_part", crash_after)
    return real_write

def test_a_crashed_run_resumes_from_its_parts(tiny_model_dir, manifest_dir, tmp_path, monkeypatch):
    cfg = cfg_for(tiny_model_dir)
    ref = tmp_path / "ref.h5"
    run_embed(cfg, manifest_dir, ref, SECTIONS, progress=False)

    out = tmp_path / "text.h5"
    real_write = _crash_after_parts(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        run_embed(cfg, manifest_dir, out, SECTIONS, progress=False)
    assert not out.exists() and len(list(parts_dir(out).glob("part-*.h5"))) == 2
    # stale parts of another plan (and an older cxrpipe's safetensors part) are removed, never read
    stale = [parts_dir(out) / "part-000000-0123456789abcdef.h5", parts_dir(out) / "part-000000-0123456789abcdef.safetensors"]
    for f in stale:
        f.write_bytes(b"junk")
    monkeypatch.setattr(embed_mod, "write_part", real_write)
    summary = run_embed(cfg, manifest_dir, out, SECTIONS, progress=False)
    assert summary.n_parts_reused == 2 and not any(f.exists() for f in stale)
    assert_same_cache(out, ref)
    # the very same data, byte for byte: the part files (text.h5 is an index over them that names its own
    # parts folder, so the two index files differ only in that path)
    ours, theirs = sorted(parts_dir(out).glob("part-*")), sorted(parts_dir(ref).glob("part-*"))
    assert [p.name for p in ours] == [p.name for p in theirs]
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(ours, theirs))


def test_parts_of_other_code_or_other_weights_are_not_reused(tiny_model_dir, manifest_dir, tmp_path, monkeypatch):
    from cxrpipe import provenance

    cfg = cfg_for(tiny_model_dir)
    out = tmp_path / "text.h5"
    real_write = _crash_after_parts(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        run_embed(cfg, manifest_dir, out, SECTIONS, progress=False)
    monkeypatch.setattr(embed_mod, "write_part", real_write)
    monkeypatch.setattr(provenance, "code_key", lambda stage: "0.1.0+edited")  # the stage's code changed
    assert run_embed(cfg, manifest_dir, out, SECTIONS, progress=False).n_parts_reused == 0


def assert_same_cache(a, b, atol: float = 0.0) -> None:
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        for key in ("offsets", "token_ids", "study_ids", "study_rows"):
            np.testing.assert_array_equal(dataset(fa, key)[:], dataset(fb, key)[:], err_msg=key)
        np.testing.assert_allclose(dataset(fa, "embeddings")[:].astype(np.float32),
                                   dataset(fb, "embeddings")[:].astype(np.float32), atol=atol)
        fa_parts, fb_parts = json.loads(fa.attrs.get("linked_parts", "[]")), json.loads(fb.attrs.get("linked_parts", "[]"))
        assert [n for n, _ in fa_parts] == [n for n, _ in fb_parts]
        skip = {"linked_parts"}  # part sizes differ with the parts' n_clipped attribute
        assert {k: v for k, v in fa.attrs.items() if k not in skip} == {k: v for k, v in fb.attrs.items() if k not in skip}


def test_embed_stage_cli(tiny_model_dir, manifest_dir, tmp_path):
    import typer
    from typer.testing import CliRunner

    from stages.embed import main

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({
        "data": {"sections": list(SECTIONS)},
        "embed": {"model": str(tiny_model_dir), "quantization": "nf4", "layer": 1, "prompt": "Findings:",
                  "max_tokens": 8, "batch_tokens": 64, "part_tokens": 40},
    }))
    app = typer.Typer()
    app.command()(main)
    out, report = tmp_path / "text.h5", tmp_path / "text-report.json"
    res = CliRunner().invoke(app, ["--params", str(params), "--manifest", str(manifest_dir), "--out", str(out),
                                   "--report", str(report)])
    assert res.exit_code == 0, res.output
    summary = json.loads(report.read_text())
    assert summary["n_truncated"] == 7 and summary["n_tokens"] == 7 * 8  # every text cut at max_tokens
    tok = load_tokenizer(tiny_model_dir)
    prompt_ids = tok(" Findings:", add_special_tokens=False)["input_ids"]
    cache = TextCache(out)
    first = tok(apply_prompt(read_studies(manifest_dir)[0].text, "Findings:"), add_special_tokens=False)["input_ids"]
    got = cache.token_ids(cache.row_of(read_studies(manifest_dir)[0].study_id)).tolist()  # report cut, prompt kept
    assert got == first[: 8 - len(prompt_ids)] + prompt_ids
    assert "config" not in summary  # strings stay out of the DVC metrics file
    assert json.loads((tmp_path / "text-report.config.json").read_text())["quantization"] == "nf4"
    with h5py.File(out, "r") as f:
        assert f.attrs["quantization"] == "nf4" and f.attrs["layer"] == 1
        assert np.isfinite(dataset(f, "embeddings")[:]).all() and f["embeddings"].shape == (56, 64)


def test_linked_cache_checksums_catch_a_changed_part(tiny_model_dir, manifest_dir, tmp_path):
    """The parts ARE the data of a linked cache: `cxrpipe verify` (verify_text_cache) recomputes the sha256
    recorded for every dataset, reading through the parts, and names the stage to rerun when one changed."""
    from cxrpipe.io import CorruptFileError
    from cxrpipe.text.cache import verify_text_cache

    out = tmp_path / "text.h5"
    run_embed(cfg_for(tiny_model_dir), manifest_dir, out, SECTIONS, progress=False)
    assert {"embeddings", "token_ids", "offsets", "study_ids", "study_rows"} <= set(verify_text_cache(out))
    part = sorted(parts_dir(out).glob("part-*"))[0]
    with h5py.File(part, "r") as f:  # a byte of the embeddings themselves (the part's metadata stays intact)
        at = f["embeddings"].id.get_offset() + 5
    data = bytearray(part.read_bytes())
    data[at] ^= 0xFF  # same size: the open-time size check passes, only the checksum can tell
    part.write_bytes(bytes(data))
    with pytest.raises(CorruptFileError, match=r"sha256.*dvc repro -f embed"):
        verify_text_cache(out)
