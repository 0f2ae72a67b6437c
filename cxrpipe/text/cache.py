"""``text.h5``: per-token hidden states of every distinct cleaned, prompted report (stage one's output).

Layout (schema 1), ragged, no padding stored:
  ``embeddings``  float16 ``[total_tokens, hidden]``  tokens of text ``i`` are rows ``offsets[i]:offsets[i+1]``
  ``token_ids``   int32   ``[total_tokens]``
  ``offsets``     int64   ``[n_texts + 1]``           ``offsets[-1] == total_tokens``
  ``study_ids``   int64   ``[n_studies]``             with ``study_rows`` the study -> text map
  ``study_rows``  int64   ``[n_studies]``             (identical texts are embedded once)
  attrs: the :class:`Fingerprint` fields, ``complete`` (True only for a finished cache), ``hidden_size``.

A *linked* cache (what the embed stage writes, :func:`write_linked_text_cache`) holds the same datasets, but
``embeddings`` and ``token_ids`` (and the ``embed.store_dtype`` extras, see :mod:`cxrpipe.text.store`) are
HDF5 external-storage datasets over the embed stage's part files in ``text.h5.parts/``: nothing is copied, the
parts ARE the data, and text.h5 is a few MB of index. Rows are in the parts' order. ``linked_parts`` (attr)
lists each part's name and size; a reader refuses the cache when one is missing or has another size.
External file names are relative to text.h5's folder: open its datasets with :func:`dataset` (plain
``h5py.File(path)["embeddings"]`` resolves them against the working directory instead).

Readers open the file lazily in the process that reads, read-only (h5py handles must not cross fork).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import h5py
import numpy as np

from cxrpipe.text.store import EXTRA_ARRAYS, StoreDtype, decode

SCHEMA_VERSION = 1
# HDF5 keeps a dataset's external file list in one object-header message (64 KiB): 2729 files measured
MAX_LINKED_PARTS = 2700


class TextCacheError(RuntimeError):
    """The cache is missing, unfinished, or was made with other settings than the ones asked for."""


@dataclasses.dataclass(frozen=True)
class Fingerprint:
    """What a text cache was made from. A reader refuses a cache whose fingerprint differs (but for
    ``package_version``, which is recorded, not enforced)."""

    model: str
    revision: str
    quantization: str
    layer: int
    prompt: str
    sections: tuple[str, ...]
    max_tokens: int
    texts_hash: str
    package_version: str = ""
    schema_version: int = SCHEMA_VERSION
    store_dtype: str = StoreDtype.float16.value  # embed.store_dtype (a cache without the attr is float16)

    def to_attrs(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["sections"] = json.dumps(list(self.sections))
        return d

    @classmethod
    def from_attrs(cls, attrs: Any) -> "Fingerprint":
        kw = {}
        for f in dataclasses.fields(cls):
            if f.name not in attrs and f.name == "store_dtype":
                continue
            if f.name not in attrs:
                raise TextCacheError(f"text cache has no '{f.name}' attribute (not a cxrpipe text cache?)")
            v = attrs[f.name]
            if isinstance(v, bytes):
                v = v.decode()
            if isinstance(v, np.generic):
                v = v.item()
            kw[f.name] = v
        kw["sections"] = tuple(json.loads(kw["sections"]))
        return cls(**kw)

    def differences(self, other: "Fingerprint") -> list[str]:
        """Fields (but ``package_version``) that differ, as readable ``name: cache=... params=...`` lines."""
        out = []
        for f in dataclasses.fields(self):
            if f.name == "package_version":
                continue
            a, b = getattr(self, f.name), getattr(other, f.name)
            if a != b:
                out.append(f"{f.name}: cache={a!r} params={b!r}")
        return out


def hash_texts(texts: Iterable[str]) -> str:
    """Order-independent sha256 of the set of distinct texts that go into the cache."""
    h = hashlib.sha256()
    for t in sorted(set(texts)):
        h.update(t.encode())
        h.update(b"\0")
    return h.hexdigest()


def write_text_cache(
    path: str | Path,
    embeddings: Sequence[np.ndarray],
    token_ids: Sequence[np.ndarray],
    study_ids: Sequence[int],
    study_rows: Sequence[int],
    fingerprint: Fingerprint,
    chunk_tokens: int = 1024,
) -> None:
    """Write a complete cache in one go, atomically (temp file + ``os.replace``).

    ``embeddings[i]`` is ``[L_i, hidden]`` for text row ``i``; ``token_ids[i]`` is ``[L_i]``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lengths = np.array([len(t) for t in token_ids], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    total = int(offsets[-1])
    hidden = int(embeddings[0].shape[1]) if len(embeddings) else 0
    tmp = path.with_name(path.name + ".tmp")
    with h5py.File(tmp, "w") as f:
        emb = f.create_dataset(
            "embeddings",
            shape=(total, hidden),
            dtype=np.float16,
            chunks=(max(1, min(chunk_tokens, total)), hidden) if total and hidden else None,
        )
        ids = f.create_dataset("token_ids", shape=(total,), dtype=np.int32)
        for i, (e, t) in enumerate(zip(embeddings, token_ids)):
            if e.shape[0] != len(t):
                raise ValueError(f"text row {i}: {e.shape[0]} embeddings for {len(t)} tokens")
            a, b = offsets[i], offsets[i + 1]
            emb[a:b] = np.asarray(e, dtype=np.float16)
            ids[a:b] = np.asarray(t, dtype=np.int32)
        f.create_dataset("offsets", data=offsets)
        f.create_dataset("study_ids", data=np.asarray(study_ids, dtype=np.int64))
        f.create_dataset("study_rows", data=np.asarray(study_rows, dtype=np.int64))
        for k, v in fingerprint.to_attrs().items():
            f.attrs[k] = v
        f.attrs["hidden_size"] = hidden
        f.attrs["complete"] = True
    tmp.replace(path)


@dataclasses.dataclass(frozen=True)
class PartLayout:
    """Where one part file holds its arrays: ``arrays[name] = (dtype, shape, byte offset, byte count)``,
    each array C-contiguous little-endian with a leading token axis."""

    file: Path
    arrays: dict[str, tuple[str, tuple[int, ...], int, int]]

    @property
    def n_tokens(self) -> int:
        return int(self.arrays["token_ids"][1][0])


def write_linked_text_cache(
    path: str | Path,
    parts: Sequence[PartLayout],
    offsets: np.ndarray,
    study_ids: Sequence[int],
    study_rows: Sequence[int],
    fingerprint: Fingerprint,
    hidden: int,
) -> None:
    """Write text.h5 as an index over ``parts`` (see the module doc), atomically: temp file + ``os.replace``,
    ``complete`` set last. Row ``i`` is tokens ``offsets[i]:offsets[i+1]`` of the parts laid end to end."""
    path = Path(path)
    if len(parts) > MAX_LINKED_PARTS:
        raise ValueError(f"{len(parts)} part files; a linked cache holds at most {MAX_LINKED_PARTS}: "
                         "raise embed.part_tokens")
    total = sum(p.n_tokens for p in parts)
    if int(offsets[-1]) != total:
        raise ValueError(f"offsets end at {int(offsets[-1])}, the parts hold {total} tokens")
    names = ["embeddings", "token_ids", *EXTRA_ARRAYS[StoreDtype(fingerprint.store_dtype)]]
    tmp = path.with_name(path.name + ".tmp")
    with h5py.File(tmp, "w") as f:
        for name in names:
            dtype, shape = parts[0].arrays[name][0], parts[0].arrays[name][1]
            external = [(os.path.relpath(p.file, path.parent), p.arrays[name][2], p.arrays[name][3])
                        for p in parts if p.n_tokens]
            f.create_dataset(name, shape=(total, *shape[1:]), dtype=dtype, external=external or None)
        f.create_dataset("offsets", data=np.asarray(offsets, dtype=np.int64))
        f.create_dataset("study_ids", data=np.asarray(study_ids, dtype=np.int64))
        f.create_dataset("study_rows", data=np.asarray(study_rows, dtype=np.int64))
        for k, v in fingerprint.to_attrs().items():
            f.attrs[k] = v
        f.attrs["hidden_size"] = hidden
        f.attrs["linked_parts"] = json.dumps([[p.file.name, p.file.stat().st_size] for p in parts])
        f.attrs["complete"] = True
    tmp.replace(path)


def dataset(f: h5py.File, name: str) -> h5py.Dataset:
    """Dataset ``name`` of an open text cache, external part files resolved relative to the cache's folder
    (HDF5's ``${ORIGIN}`` prefix), so a linked cache reads the same from any working directory."""
    dapl = h5py.h5p.create(h5py.h5p.DATASET_ACCESS)
    dapl.set_efile_prefix(b"${ORIGIN}")
    return h5py.Dataset(h5py.h5d.open(f.id, name.encode(), dapl))


def _check_linked_parts(path: Path, attrs: Any) -> None:
    """A linked cache's part files are all there with their recorded sizes (else TextCacheError)."""
    if "linked_parts" not in attrs:
        return
    folder = path.with_name(path.name + ".parts")
    for name, size in json.loads(attrs["linked_parts"]):
        f = folder / name
        if not f.exists() or f.stat().st_size != size:
            raise TextCacheError(f"{path}: its part file {f} is missing or changed; run the embed stage again")


class TextCache:
    """Read-only, lazily opened reader of ``text.h5``.

    ``TextCache(path, expect=fingerprint)`` raises :class:`TextCacheError` naming every differing field
    when the cache was made with other settings; ``expect=None`` skips the check (inspection only).
    """

    def __init__(self, path: str | Path, expect: Fingerprint | None = None):
        self.path = Path(path)
        if not self.path.exists():
            raise TextCacheError(f"text cache not found: {self.path} (run the embed stage)")
        self._f: h5py.File | None = None
        with h5py.File(self.path, "r") as f:
            if not bool(f.attrs.get("complete", False)):
                raise TextCacheError(f"{self.path} is not a finished cache (embed was interrupted); run embed again")
            self.fingerprint = Fingerprint.from_attrs(f.attrs)
            _check_linked_parts(self.path, f.attrs)
            self.store = StoreDtype(self.fingerprint.store_dtype)
            self.hidden_size = int(f.attrs["hidden_size"])
            self.offsets = f["offsets"][:]
            sids = f["study_ids"][:]
            rows = f["study_rows"][:]
        if expect is not None:
            diff = self.fingerprint.differences(expect)
            if diff:
                raise TextCacheError(
                    f"{self.path} was made with other settings than these params; differing: "
                    + "; ".join(diff)
                    + ". Run the embed stage again."
                )
        self._row_of = {int(s): int(r) for s, r in zip(sids, rows)}

    @property
    def file(self) -> h5py.File:
        if self._f is None:
            self._f = h5py.File(self.path, "r")
            self._datasets: dict[str, h5py.Dataset] = {}
        return self._f

    def _data(self, name: str) -> h5py.Dataset:
        """A data set of the cache (linked or not), opened once per process."""
        f = self.file
        if name not in self._datasets:
            self._datasets[name] = dataset(f, name)
        return self._datasets[name]

    @property
    def n_texts(self) -> int:
        return len(self.offsets) - 1

    @property
    def study_ids(self) -> list[int]:
        return list(self._row_of)

    def __contains__(self, study_id: int) -> bool:
        return int(study_id) in self._row_of

    def row_of(self, study_id: int) -> int:
        try:
            return self._row_of[int(study_id)]
        except KeyError:
            raise KeyError(f"study {study_id} is not in text cache {self.path}") from None

    def text_row(self, row: int) -> np.ndarray:
        """``[L, hidden]`` of text row ``row``: float16 (``store_dtype`` float16), float32 (the others)."""
        a, b = int(self.offsets[row]), int(self.offsets[row + 1])
        if self.store is StoreDtype.float16:
            return self._data("embeddings")[a:b]
        names = ("embeddings", *EXTRA_ARRAYS[self.store])
        return decode({k: self._data(k)[a:b] for k in names}, self.store)

    def token_ids(self, row: int) -> np.ndarray:
        a, b = int(self.offsets[row]), int(self.offsets[row + 1])
        return self._data("token_ids")[a:b]

    def for_study(self, study_id: int) -> np.ndarray:
        """``[L, hidden]`` of a study's report (dtype as :meth:`text_row`)."""
        return self.text_row(self.row_of(study_id))

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_f"] = None
        state.pop("_datasets", None)
        return state

    def close(self) -> None:
        if self._f is not None:
            self._datasets.clear()
            self._f.close()
            self._f = None
