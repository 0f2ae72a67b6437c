"""Storage forms of the text cache (embed.store_dtype) and the linked cache over the part files."""

from __future__ import annotations

import os

import numpy as np
import pytest

from cxrpipe.data.manifest import read_studies
from cxrpipe.text.cache import TextCache, TextCacheError
from cxrpipe.text.embed import expected_fingerprint, parts_dir, run_embed
from cxrpipe.text.store import INT8_EXACT, StoreDtype, bytes_per_token, decode, encode

from .test_embed import SECTIONS, cfg_for


def hidden_states(rng, tokens=50, hidden=256) -> np.ndarray:
    """Residual-stream-like values with two massive-activation dims (as LLaMA's 1415 / 2533)."""
    x = rng.normal(size=(tokens, hidden)).astype(np.float32)
    x[:, 7] *= 3000.0
    x[:, 100] = 9e4  # beyond float16's range
    return x


@pytest.mark.parametrize("store", list(StoreDtype))
def test_round_trip_error_and_size(store):
    x = hidden_states(np.random.default_rng(0))
    enc, n_clipped = encode(x, store)
    y = decode(enc, store).astype(np.float32)
    assert y.shape == x.shape
    assert sum(a.nbytes for a in enc.values()) == bytes_per_token(store, x.shape[1]) * len(x)
    normal = np.delete(np.arange(x.shape[1]), [7, 100])
    if store is StoreDtype.float16:
        assert n_clipped == len(x) and np.all(y[:, 100] == 65504)  # clipped, counted
    else:
        assert n_clipped == 0
        np.testing.assert_allclose(y[:, 100], 9e4, rtol=4e-3)  # range kept
    if store is StoreDtype.int8:
        np.testing.assert_array_equal(y[:, [7, 100]], x[:, [7, 100]])  # outliers exact
        scale = np.abs(x[:, normal]).max(axis=1, keepdims=True) / 127
        assert np.all(np.abs(y[:, normal] - x[:, normal]) <= scale / 2 + 1e-6)
    if store is StoreDtype.bfloat16:
        np.testing.assert_allclose(y[:, normal], x[:, normal], rtol=2 ** -8, atol=1e-30)


def test_int8_without_exact_values_would_lose_the_small_dims():
    """Why the largest values are kept exact: one massive value per token sets a scale that zeroes the rest."""
    x = hidden_states(np.random.default_rng(1))
    scale = np.abs(x).max(axis=1) / 127
    naive = np.rint(x / scale[:, None])
    assert np.mean(naive[:, 10:20] == 0) > 0.99
    y = decode(encode(x, "int8")[0], "int8")
    assert np.mean(y[:, 10:20] == 0) < 0.05
    assert INT8_EXACT >= 2


@pytest.mark.parametrize("store", ["bfloat16", "int8"])
def test_embed_with_a_smaller_store_reads_close_to_float16(tiny_model_dir, manifest_dir, tmp_path, store):
    run_embed(cfg_for(tiny_model_dir), manifest_dir, tmp_path / "f16.h5", SECTIONS, progress=False)
    cfg = cfg_for(tiny_model_dir, store_dtype=store)
    run_embed(cfg, manifest_dir, tmp_path / "small.h5", SECTIONS, progress=False)
    texts = [s.text for s in read_studies(manifest_dir)]
    ref = TextCache(tmp_path / "f16.h5")
    small = TextCache(tmp_path / "small.h5", expect=expected_fingerprint(cfg, texts, SECTIONS))
    assert small.store is StoreDtype(store)
    for sid in ref.study_ids:
        a, b = ref.for_study(sid).astype(np.float32), small.for_study(sid)
        assert b.dtype == np.float32 and a.shape == b.shape
        np.testing.assert_allclose(b, a, atol=0.05 * np.abs(a).max(), rtol=0.02)
    with pytest.raises(TextCacheError, match="store_dtype"):  # params asking float16 refuse it
        TextCache(tmp_path / "small.h5", expect=expected_fingerprint(cfg_for(tiny_model_dir), texts, SECTIONS))


def test_linked_cache_reads_from_any_directory_and_refuses_a_missing_part(tiny_model_dir, manifest_dir, tmp_path,
                                                                          monkeypatch):
    out = tmp_path / "cache" / "text.h5"
    run_embed(cfg_for(tiny_model_dir), manifest_dir, out, SECTIONS, progress=False)
    first = TextCache(out).for_study(TextCache(out).study_ids[0])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # part files resolve relative to text.h5, not to the working directory
    np.testing.assert_array_equal(TextCache(os.path.relpath(out)).for_study(TextCache(out).study_ids[0]), first)
    part = sorted(parts_dir(out).glob("part-*.h5"))[1]
    part.unlink()
    with pytest.raises(TextCacheError, match="missing or changed"):
        TextCache(out)


def test_plain_h5py_reads_the_cache_from_any_directory(tiny_model_dir, manifest_dir, tmp_path, monkeypatch):
    """A user's notebook: `h5py.File("data/cache/text.h5")["embeddings"]` from the repository root (not the
    cache's folder) reads the same rows as TextCache; it failed with "unable to open external raw data file"
    while the parts were HDF5 external storage. A missing part reads as fill values (NaN): TextCache's part
    check is what refuses it."""
    import h5py

    out = tmp_path / "data" / "cache" / "text.h5"
    run_embed(cfg_for(tiny_model_dir), manifest_dir, out, SECTIONS, progress=False)
    cache = TextCache(out)
    monkeypatch.chdir(tmp_path)  # the repository root
    with h5py.File("data/cache/text.h5", "r") as f:
        emb, offsets = f["embeddings"][:], f["offsets"][:]
        rows = dict(zip(f["study_ids"][:], f["study_rows"][:]))
    for sid in cache.study_ids:
        r = rows[sid]
        np.testing.assert_array_equal(emb[offsets[r] : offsets[r + 1]], cache.for_study(sid))
    assert np.isfinite(emb).all()
    cache.close()  # (an open cache keeps its parts open: HDF5 would still read the deleted file)
    sorted(parts_dir(out).glob("part-*.h5"))[0].unlink()
    with h5py.File("data/cache/text.h5", "r") as f:
        assert np.isnan(f["embeddings"][: offsets[1]]).all()  # silently: why TextCache checks the parts
    with pytest.raises(TextCacheError, match="missing or changed"):
        TextCache(out)


LIMIT_SCRIPT = """
import resource, sys
import numpy as np
from cxrpipe.text.cache import TextCache, TextCacheError
soft, hard = int(sys.argv[2]), int(sys.argv[3])
resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
try:
    cache = TextCache(sys.argv[1])
except TextCacheError as e:
    print("REFUSED", e)
    sys.exit(0)
ok = all(np.isfinite(cache.text_row(r)).all() for r in range(cache.n_texts))
print("READ", ok, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
"""


def test_the_reader_raises_its_open_file_limit_to_cover_the_parts(tmp_path):
    """HDF5 keeps every source part open and reads the ones past the open-file limit as fill values: the
    reader raises its soft limit to fit, or refuses when the hard limit is too low."""
    import subprocess
    import sys

    from cxrpipe.text.cache import Fingerprint, read_part, write_linked_text_cache, write_part

    rng = np.random.default_rng(0)
    out = tmp_path / "text.h5"
    parts_dir(out).mkdir()
    files, offsets = [], [0]
    for k in range(120):  # 120 parts of one 3-token text each
        files.append(parts_dir(out) / f"part-{k:06d}-test.h5")
        write_part(files[-1], [k], [rng.normal(size=(3, 8)).astype(np.float16)], [[1, 2, 3]], 0)
        offsets.append(offsets[-1] + 3)
    fp = Fingerprint("m", "", "fp32", -1, "", ("findings",), 8, "h")
    write_linked_text_cache(out, [read_part(f)[0] for f in files], np.asarray(offsets), list(range(120)),
                            list(range(120)), fp, 8)
    run = lambda soft, hard: subprocess.run([sys.executable, "-c", LIMIT_SCRIPT, str(out), str(soft), str(hard)],  # noqa: E731
                                            capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    res = run(60, 4096)  # soft limit below the 120 parts: raised
    assert res.stdout.startswith("READ True"), res.stdout + res.stderr[-2000:]
    assert int(res.stdout.split()[-1]) >= 120
    res = run(60, 100)  # the hard limit too low: a clear refusal, not NaN rows
    assert res.stdout.startswith("REFUSED") and "ulimit" in res.stdout, res.stdout + res.stderr[-2000:]


def test_too_many_parts_for_a_linked_cache_fail_before_any_forward_pass(tiny_model_dir, manifest_dir, tmp_path,
                                                                        monkeypatch):
    from cxrpipe.text import embed as embed_mod

    monkeypatch.setattr(embed_mod, "MAX_LINKED_PARTS", 2)
    monkeypatch.setattr(embed_mod, "_run_parts", lambda *a, **k: pytest.fail("forward passes started"))
    with pytest.raises(ValueError, match="raise embed.part_tokens"):
        run_embed(cfg_for(tiny_model_dir), manifest_dir, tmp_path / "text.h5", SECTIONS, progress=False)
