"""``text.h5``: per-token hidden states of every distinct cleaned, prompted report (stage one's output).

Layout (schema 2), ragged, no padding stored; every dataset chunked with HDF5's fletcher32 checksum (HDF5
checks a chunk whenever it is read) and its sha256 recorded as attribute ``sha256_<name>`` (checked in full
by :func:`verify_text_cache` / ``cxrpipe verify``):
  ``embeddings``  float16 ``[total_tokens, hidden]``  tokens of text ``i`` are rows ``offsets[i]:offsets[i+1]``
  ``token_ids``   int32   ``[total_tokens]``
  ``offsets``     int64   ``[n_texts + 1]``           ``offsets[-1] == total_tokens``
  ``study_ids``   int64   ``[n_studies]``             with ``study_rows`` the study -> text map
  ``study_rows``  int64   ``[n_studies]``             (identical texts are embedded once)
  attrs: the :class:`Fingerprint` fields, ``complete`` (True only for a finished cache), ``hidden_size``.

A truncated, bit-flipped or foreign file raises :class:`~cxrpipe.io.CorruptFileError` naming the file and
``dvc repro -f embed``. Readers open the file lazily in the process that reads, read-only (h5py handles must not cross fork).
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

from cxrpipe.io import SHA_PREFIX, create_h5, CorruptFileError, corrupt_error, verify_checksums

SCHEMA_VERSION = 2
STAGE = "embed"  # the stage that makes text.h5 (named in every error)


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
    model_identity: str = ""  # the weights: "hub:<commit>" or "local:<hash of the folder's files>" (text.model)
    package_version: str = ""
    schema_version: int = SCHEMA_VERSION

    def to_attrs(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["sections"] = json.dumps(list(self.sections))
        return d

    @classmethod
    def from_attrs(cls, attrs: Any) -> "Fingerprint":
        kw = {}
        for f in dataclasses.fields(cls):
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
        """Fields (but ``package_version``, and ``model_identity`` when ``other``'s is unknown "") that differ,
        as readable ``name: cache=... params=...`` lines."""
        out = []
        for f in dataclasses.fields(self):
            if f.name == "package_version":
                continue
            if f.name == "model_identity" and not other.model_identity:
                continue  # not known to the reader (model not at hand offline): the cache's is kept
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
    with create_h5(tmp) as f:
        emb = f.create_dataset(
            "embeddings",
            shape=(total, hidden),
            dtype=np.float16,
            chunks=(max(1, min(chunk_tokens, total)), hidden) if total and hidden else None,
            fletcher32=bool(total and hidden),
        )
        ids = f.create_dataset("token_ids", shape=(total,), dtype=np.int32, **_checked(total, chunk_tokens))
        h_emb, h_ids = hashlib.sha256(), hashlib.sha256()
        for i, (e, t) in enumerate(zip(embeddings, token_ids)):
            if e.shape[0] != len(t):
                raise ValueError(f"text row {i}: {e.shape[0]} embeddings for {len(t)} tokens")
            a, b = offsets[i], offsets[i + 1]
            e16, t32 = np.ascontiguousarray(e, dtype=np.float16), np.ascontiguousarray(t, dtype=np.int32)
            emb[a:b] = e16
            ids[a:b] = t32
            h_emb.update(e16.tobytes())  # rows in order: the dataset's C-order bytes
            h_ids.update(t32.tobytes())
        f.attrs[SHA_PREFIX + "embeddings"] = h_emb.hexdigest()
        f.attrs[SHA_PREFIX + "token_ids"] = h_ids.hexdigest()
        _write_checked(f, "offsets", offsets)
        _write_checked(f, "study_ids", np.asarray(study_ids, dtype=np.int64))
        _write_checked(f, "study_rows", np.asarray(study_rows, dtype=np.int64))
        for k, v in fingerprint.to_attrs().items():
            f.attrs[k] = v
        f.attrs["hidden_size"] = hidden
        f.attrs["complete"] = True
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    tmp.replace(path)


def _checked(n: int, chunk: int) -> dict[str, Any]:
    """create_dataset kwargs of a 1-D dataset of ``n`` values: chunked, fletcher32-checked."""
    return {"chunks": (max(1, min(chunk, n)),), "fletcher32": True} if n else {}


def _write_checked(f: h5py.File, name: str, data: np.ndarray, chunk: int = 65536) -> None:
    """A small 1-D dataset with fletcher32 and its sha256 attribute."""
    f.create_dataset(name, data=data, **_checked(len(data), chunk))
    f.attrs[SHA_PREFIX + name] = hashlib.sha256(np.ascontiguousarray(data).tobytes()).hexdigest()


def verify_text_cache(path: str | Path) -> dict[str, str]:
    """Read every byte of ``text.h5`` and compare with the checksums recorded at write time."""
    TextCache(path)  # the cheap checks first
    try:
        with h5py.File(path, "r") as f:
            return verify_checksums(f, path, STAGE)
    except OSError as e:
        raise corrupt_error(path, STAGE, str(e)) from None


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
        try:
            with h5py.File(self.path, "r") as f:
                if not bool(f.attrs.get("complete", False)):
                    raise TextCacheError(f"{self.path} is not a finished cache (embed was interrupted); run embed again")
                if int(f.attrs.get("schema_version", -1)) != SCHEMA_VERSION:
                    raise TextCacheError(
                        f"{self.path} has schema {f.attrs.get('schema_version')}, this cxrpipe reads {SCHEMA_VERSION}: "
                        f"rebuild it with `dvc repro -f {STAGE}`"
                    )
                self.fingerprint = Fingerprint.from_attrs(f.attrs)
                self.hidden_size = int(f.attrs["hidden_size"])
                self.offsets = f["offsets"][:]
                sids = f["study_ids"][:]
                rows = f["study_rows"][:]
                n_tokens = f["embeddings"].shape[0]
        except (OSError, KeyError) as e:
            raise corrupt_error(self.path, STAGE, f"{type(e).__name__}: {e}") from None
        if len(self.offsets) == 0 or int(self.offsets[-1]) != n_tokens or len(sids) != len(rows):
            raise corrupt_error(self.path, STAGE, "offsets, embeddings and the study map disagree")
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
            try:
                self._f = h5py.File(self.path, "r")
            except OSError as e:
                raise corrupt_error(self.path, STAGE, str(e)) from None
        return self._f

    def _read(self, name: str, a: int, b: int) -> np.ndarray:
        try:
            return self.file[name][a:b]
        except OSError as e:  # fletcher32 mismatch, truncated file
            raise corrupt_error(self.path, STAGE, f"{name}[{a}:{b}]: {e}") from None

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
        """float16 ``[L, hidden]`` of text row ``row``."""
        a, b = int(self.offsets[row]), int(self.offsets[row + 1])
        return self._read("embeddings", a, b)

    def token_ids(self, row: int) -> np.ndarray:
        a, b = int(self.offsets[row]), int(self.offsets[row + 1])
        return self._read("token_ids", a, b)

    def for_study(self, study_id: int) -> np.ndarray:
        """float16 ``[L, hidden]`` of a study's report."""
        return self.text_row(self.row_of(study_id))

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_f"] = None
        return state

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None
