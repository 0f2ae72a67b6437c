"""Truncated, bit-flipped and foreign cache files: a clear error naming the file and `dvc repro -f <stage>`,
never silently wrong numbers (HDF5 fletcher32 on every read; sha256 per dataset in `cxrpipe verify`)."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from cxrpipe.data.image_cache import ImageCache, ImageCacheWriter, verify_image_cache
from cxrpipe.io import CorruptFileError
from cxrpipe.text.cache import Fingerprint, TextCache, verify_text_cache, write_text_cache

N, S = 6, 8


def _images(path):
    rng = np.random.default_rng(0)
    with ImageCacheWriter(path, [f"id{i}" for i in range(N)], S) as w:
        for i in range(N):
            w.write(i, rng.integers(0, 256, (S, S), dtype=np.uint8))
    return path


def _text(path):
    rng = np.random.default_rng(1)
    emb = [rng.normal(size=(n, 16)).astype(np.float32) for n in (3, 5, 4)]
    ids = [np.arange(n, dtype=np.int32) for n in (3, 5, 4)]
    fp = Fingerprint("m", "", "fp32", -1, "", ("findings",), 64, "h")
    write_text_cache(path, emb, ids, [1, 2, 3], [0, 1, 2], fp, chunk_tokens=4)
    return path


def _flip(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


def _chunk_offset(path, name, index):
    with h5py.File(path, "r") as f:
        return f[name].id.get_chunk_info(index).byte_offset


def test_a_bit_flip_in_an_image_row_is_caught_when_the_row_is_read(tmp_path):
    path = _images(tmp_path / "images.h5")
    _flip(path, _chunk_offset(path, "images", 3) + 5)
    cache = ImageCache(path)  # opening is cheap and still fine
    assert cache[2].shape == (S, S)  # other rows read as before
    with pytest.raises(CorruptFileError, match=r"images.h5 .*row 3.*dvc repro -f prepare"):
        cache[3]
    with pytest.raises(CorruptFileError, match="dvc repro -f prepare"):
        verify_image_cache(path)


def test_a_truncated_or_foreign_file_names_itself_and_the_fix(tmp_path):
    path = _images(tmp_path / "images.h5")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptFileError, match=r"images.h5 is unreadable or corrupt.*dvc repro -f prepare"):
        ImageCache(path)
    text = _text(tmp_path / "text.h5")
    text.write_bytes(text.read_bytes()[:-200])
    with pytest.raises(CorruptFileError, match=r"text.h5 is unreadable or corrupt.*dvc repro -f embed"):
        TextCache(text)
    (tmp_path / "foreign.h5").write_bytes(b"not an hdf5 file at all" * 10)
    with pytest.raises(CorruptFileError, match="foreign.h5"):
        TextCache(tmp_path / "foreign.h5")


def test_a_bit_flip_in_text_embeddings_or_metadata_is_caught(tmp_path):
    path = _text(tmp_path / "text.h5")
    good = TextCache(path)
    assert good.text_row(1).shape == (5, 16)
    assert set(verify_text_cache(path)) == {"embeddings", "token_ids", "offsets", "study_ids", "study_rows"}
    good.close()  # a reader keeps its datasets open; HDF5 would serve it the chunks it already cached
    _flip(path, _chunk_offset(path, "embeddings", 1) + 7)  # tokens 4..7: text rows 1 (3..7)
    cache = TextCache(path)
    assert cache.text_row(0).shape == (3, 16)  # chunk 0 untouched
    with pytest.raises(CorruptFileError, match=r"embeddings\[3:8\].*dvc repro -f embed"):
        cache.text_row(1)
    meta = tmp_path / "meta.h5"
    shutil.copy(_text(tmp_path / "t2.h5"), meta)
    _flip(meta, 60)  # inside the superblock / root object header: checksummed in format v110
    with pytest.raises(CorruptFileError, match="meta.h5"):
        TextCache(meta)


def test_verify_command_reports_good_and_bad_files(tmp_path):
    from cxrpipe.cli import app

    images, text = _images(tmp_path / "images.h5"), _text(tmp_path / "text.h5")
    res = CliRunner().invoke(app, ["verify", str(images), str(text)])
    assert res.exit_code == 0, res.output
    assert "ok" in res.output and "images.h5" in res.output and "text.h5" in res.output
    _flip(images, _chunk_offset(images, "images", 0))
    res = CliRunner().invoke(app, ["verify", str(images), str(text)])
    assert res.exit_code == 1 and "dvc repro -f prepare" in res.output and "Traceback" not in res.output
