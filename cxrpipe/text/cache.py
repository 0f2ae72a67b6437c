"""``text.h5``: per-token hidden states of every distinct cleaned, prompted report (stage one's output).

Layout (schema 2), ragged, no padding stored; every dataset's sha256 recorded as attribute ``sha256_<name>``
(checked in full by :func:`verify_text_cache` / ``cxrpipe verify``); the datasets stored inside the file are
chunked with HDF5's fletcher32 checksum (checked whenever a chunk is read):
  ``embeddings``  float16 ``[total_tokens, hidden]``  tokens of text ``i`` are rows ``offsets[i]:offsets[i+1]``
  ``token_ids``   int32   ``[total_tokens]``
  ``offsets``     int64   ``[n_texts + 1]``           ``offsets[-1] == total_tokens``
  ``study_ids``   int64   ``[n_studies]``             with ``study_rows`` the study -> text map
  ``study_rows``  int64   ``[n_studies]``             (identical texts are embedded once)
  attrs: the :class:`Fingerprint` fields, ``complete`` (True only for a finished cache), ``hidden_size``.

A *linked* cache (what the embed stage writes, :func:`write_linked_text_cache`) holds the same datasets, but
``embeddings`` and ``token_ids`` (and the ``embed.store_dtype`` extras, see :mod:`cxrpipe.text.store`) are
HDF5 *virtual datasets* over the embed stage's part files in ``text.h5.parts/`` (small HDF5 files,
:func:`write_part`): nothing is copied, the parts ARE the data, and text.h5 is a few MB of index. Rows are
in the parts' order. The source paths are relative to text.h5's folder, which HDF5 resolves from any working
directory: plain ``h5py.File("data/cache/text.h5")["embeddings"]`` reads it anywhere.

HDF5 reads a missing source as fill values (NaN, -1) rather than failing, so ``linked_parts`` (attr) lists
each part's name and size and :class:`TextCache` refuses the cache when one is missing or has another size;
HDF5 also keeps every source file open, so the reader makes sure the open-file limit covers the parts.

A truncated, bit-flipped or foreign file raises :class:`~cxrpipe.io.CorruptFileError` naming the file and
``dvc repro -f embed``; the part bytes are checked against their sha256 by ``cxrpipe verify``. Readers open
the file lazily in the process that reads, read-only (h5py handles must not cross fork).
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

from cxrpipe.io import (  # noqa: F401
    SHA_PREFIX, CorruptFileError, UserError, corrupt_error, create_h5, missing_input, verify_checksums,
)
from cxrpipe.text.store import EXTRA_ARRAYS, StoreDtype, decode, encode

SCHEMA_VERSION = 3  # 3: linked datasets are virtual datasets over HDF5 parts (2: external storage)
STAGE = "embed"  # the stage that makes text.h5 (named in every error)
# HDF5 keeps every virtual source file open: a reader needs this many files open at once, and the common
# default limit is 1024 (`ulimit -n`); TextCache raises its soft limit when it can, a plain h5py reader cannot
MAX_LINKED_PARTS = 900
PART_SUFFIX = ".h5"
# what a virtual dataset reads where a part is missing: NaN for floats (bfloat16's bit pattern for uint16)
FILL = {"f": np.nan, "u": 0x7FC0, "i": -1}


class TextCacheError(UserError, RuntimeError):
    """The cache is missing, unfinished, or was made with other settings than the ones asked for."""


@dataclasses.dataclass(frozen=True)
class Fingerprint:
    """What a text cache was made from. A reader refuses a cache whose fingerprint differs (but for
    ``package_version`` and ``cpu_kernels``, which are recorded, not enforced)."""

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
    store_dtype: str = StoreDtype.float16.value  # embed.store_dtype (a cache without the attr is float16)
    # the CPU code that computed it (cxrpipe.cpu.kernels_in_use: "ATen AVX2, MKL_CBWR=AVX2, ..."); "" = not
    # recorded (a GPU run, or a cache made before this field)
    cpu_kernels: str = ""

    def to_attrs(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["sections"] = json.dumps(list(self.sections))
        return d

    @classmethod
    def from_attrs(cls, attrs: Any) -> "Fingerprint":
        kw = {}
        for f in dataclasses.fields(cls):
            if f.name not in attrs and f.name in ("store_dtype", "cpu_kernels"):
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
        """Fields (but ``package_version``, ``cpu_kernels``, and ``model_identity`` when ``other``'s is unknown "")
        that differ,
        as readable ``name: cache=... params=...`` lines."""
        out = []
        for f in dataclasses.fields(self):
            if f.name in ("package_version", "cpu_kernels"):
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
) -> int:
    """Write a complete cache in one go, atomically (temp file + ``os.replace``), in the storage form its
    fingerprint names (``store_dtype``: the form is part of what a reader checks, so it must be the one
    written). Returns the number of values clipped (float16's range).

    ``embeddings[i]`` is ``[L_i, hidden]`` (float32, or float16) for text row ``i``; ``token_ids[i]`` is ``[L_i]``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    store = StoreDtype(fingerprint.store_dtype)
    lengths = np.array([len(t) for t in token_ids], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    total = int(offsets[-1])
    hidden = int(embeddings[0].shape[1]) if len(embeddings) else 0
    tmp = path.with_name(path.name + ".tmp")
    n_clipped = 0
    with create_h5(tmp) as f:
        probe, _ = encode(np.zeros((1, max(hidden, 1)), np.float32), store)  # each array's dtype and trailing shape
        data = {name: f.create_dataset(name, shape=(total, *a.shape[1:]) if hidden else (total, 0), dtype=a.dtype,
                                       chunks=(max(1, min(chunk_tokens, total)), *a.shape[1:]) if total and hidden
                                       else None, fletcher32=bool(total and hidden))
                for name, a in probe.items()}
        ids = f.create_dataset("token_ids", shape=(total,), dtype=np.int32, **_checked(total, chunk_tokens))
        hashes = {name: hashlib.sha256() for name in [*data, "token_ids"]}
        for i, (e, t) in enumerate(zip(embeddings, token_ids)):
            if e.shape[0] != len(t):
                raise ValueError(f"text row {i}: {e.shape[0]} embeddings for {len(t)} tokens")
            a, b = offsets[i], offsets[i + 1]
            arrays, clipped = encode(np.asarray(e, dtype=np.float32), store)
            n_clipped += clipped
            arrays["token_ids"] = np.ascontiguousarray(t, dtype=np.int32)
            for name, x in arrays.items():
                (data.get(name) or ids)[a:b] = x
                hashes[name].update(np.ascontiguousarray(x).tobytes())  # rows in order: the dataset's C-order bytes
        for name, h in hashes.items():
            f.attrs[SHA_PREFIX + name] = h.hexdigest()
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
    return n_clipped


@dataclasses.dataclass(frozen=True)
class PartLayout:
    """What one part file holds: ``arrays[name] = (dtype, shape)``, each with a leading token axis."""

    file: Path
    arrays: dict[str, tuple[str, tuple[int, ...]]]

    @property
    def n_tokens(self) -> int:
        return int(self.arrays["token_ids"][1][0])


def write_part(path: Path, rows: Sequence[int], embeddings: Sequence[np.ndarray], ids: Sequence[Sequence[int]],
               n_clipped: int, extra: dict[str, Sequence[np.ndarray]] | None = None) -> None:
    """One part of the embed stage, atomically (temp file + fsync + ``os.replace``): HDF5 with ``rows [n]``,
    ``offsets [n+1]``, ``token_ids [T]``, ``embeddings [T, hidden]`` (float16, or the ``embed.store_dtype``
    form with its ``extra`` arrays, each ``[T, ...]`` per text), attribute ``n_clipped``. Contiguous, not
    chunked: a virtual dataset reads its rows as plain byte ranges."""
    lengths = [len(x) for x in ids]
    emb = np.concatenate(embeddings)
    arrays = {
        "rows": np.asarray(rows, dtype=np.int64),
        "offsets": np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        "token_ids": np.concatenate([np.asarray(x, dtype=np.int32) for x in ids]),
        "embeddings": emb if emb.dtype != np.float32 else emb.astype(np.float16),
        **{k: np.concatenate(v) for k, v in (extra or {}).items()},
    }
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with create_h5(tmp) as f:
        for name, a in arrays.items():
            f.create_dataset(name, data=np.ascontiguousarray(a))
        f.attrs["n_clipped"] = int(n_clipped)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_part(path: Path) -> tuple[PartLayout, np.ndarray, np.ndarray, int]:
    """(layout, rows ``[n]``, offsets ``[n+1]``, values clipped) of a part file."""
    with h5py.File(path, "r") as f:
        arrays = {k: (f[k].dtype.str, tuple(f[k].shape)) for k in f if k not in ("rows", "offsets")}
        return PartLayout(Path(path), arrays), f["rows"][:], f["offsets"][:], int(f.attrs.get("n_clipped", 0))


def linked_names(store_dtype: str) -> list[str]:
    """The datasets a linked cache keeps in its part files (the rest live inside text.h5)."""
    return ["embeddings", "token_ids", *EXTRA_ARRAYS[StoreDtype(store_dtype)]]


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
    names = linked_names(fingerprint.store_dtype)
    tmp = path.with_name(path.name + ".tmp")
    with create_h5(tmp) as f:
        for name in names:
            _link(f, name, parts, total, path.parent)
            f.attrs[SHA_PREFIX + name] = _sha256_of_parts(parts, name)
        _write_checked(f, "offsets", np.asarray(offsets, dtype=np.int64))
        _write_checked(f, "study_ids", np.asarray(study_ids, dtype=np.int64))
        _write_checked(f, "study_rows", np.asarray(study_rows, dtype=np.int64))
        for k, v in fingerprint.to_attrs().items():
            f.attrs[k] = v
        f.attrs["hidden_size"] = hidden
        f.attrs["linked_parts"] = json.dumps([[p.file.name, p.file.stat().st_size] for p in parts])
        f.attrs["complete"] = True
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    tmp.replace(path)


def _link(f: h5py.File, name: str, parts: Sequence[PartLayout], total: int, folder: Path) -> None:
    """Dataset ``name`` of text.h5 as a virtual dataset: the parts' arrays laid end to end, each source named
    relative to text.h5's folder (HDF5 resolves it from there, whatever the working directory)."""
    dtype, shape = parts[0].arrays[name]
    layout = h5py.VirtualLayout(shape=(total, *shape[1:]), dtype=dtype)
    start = 0
    for p in parts:
        if not p.n_tokens:
            continue
        part_dtype, part_shape = p.arrays[name]
        layout[start : start + part_shape[0]] = h5py.VirtualSource(os.path.relpath(p.file, folder), name, part_shape,
                                                                   dtype=part_dtype)
        start += part_shape[0]
    f.create_virtual_dataset(name, layout, fillvalue=FILL[np.dtype(dtype).kind])


def _sha256_of_parts(parts: Sequence[PartLayout], name: str, rows: int = 1 << 16) -> str:
    """sha256 of array ``name`` of the parts laid end to end: the bytes the linked dataset reads (one pass)."""
    h = hashlib.sha256()
    for p in parts:
        if not p.n_tokens:
            continue
        with h5py.File(p.file, "r") as f:
            d = f[name]
            for a in range(0, d.shape[0], rows):
                h.update(np.ascontiguousarray(d[a : a + rows]).tobytes())
    return h.hexdigest()


def dataset(f: h5py.File, name: str) -> h5py.Dataset:
    """Dataset ``name`` of an open text cache (``f[name]``: the virtual datasets resolve their part files
    against the cache's folder by themselves; kept as the one accessor every reader uses)."""
    return f[name]


def ensure_open_files(n_files: int, path: Path, reserve: int = 64) -> None:
    """Raise this process's soft open-file limit to cover ``n_files`` part files (HDF5 keeps a virtual
    dataset's sources open, and past the limit reads them as fill values); refuse when it cannot."""
    try:
        import resource
    except ImportError:  # not a POSIX system: nothing to check
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = n_files + reserve
    if soft == resource.RLIM_INFINITY or soft >= need:
        return
    if hard != resource.RLIM_INFINITY and hard < need:
        raise TextCacheError(f"{path} is spread over {n_files} part files but this process may open only {hard} "
                             "files (`ulimit -Hn`): raise the limit, or rebuild with a larger embed.part_tokens")
    resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


def _check_linked_parts(path: Path, attrs: Any) -> None:
    """A linked cache's part files are all there with their recorded sizes (else TextCacheError: HDF5 would
    read a missing one as fill values), and this process may keep them all open."""
    if "linked_parts" not in attrs:
        return
    folder = path.with_name(path.name + ".parts")
    parts = json.loads(attrs["linked_parts"])
    for name, size in parts:
        f = folder / name
        if not f.exists() or f.stat().st_size != size:
            raise TextCacheError(f"{path}: its part file {f} is missing or changed; run the embed stage again")
    ensure_open_files(len(parts), path)


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
            return verify_checksums(f, path, STAGE, open_dataset=dataset)
    except OSError as e:
        raise corrupt_error(path, STAGE, str(e)) from None


CONTENT_DATASETS = ("offsets", "study_ids", "study_rows", "token_ids")  # + embeddings and the store's extras


def content_hash(path: str | Path, block_tokens: int = 1 << 14) -> str:
    """sha256 of what the cache holds, not of its file's bytes: every dataset's name, dtype, shape and
    values (embeddings and the ``store_dtype`` extras, token ids, offsets, the study map), read back through
    :func:`dataset`. Two caches with the same hash give every reader the same numbers, whether linked or
    not and whatever their HDF5 layout, attributes or part file names."""
    h = hashlib.sha256()
    with h5py.File(path, "r") as f:
        store = StoreDtype(Fingerprint.from_attrs(f.attrs).store_dtype)
        for name in ("embeddings", *EXTRA_ARRAYS[store], *CONTENT_DATASETS):
            d = dataset(f, name)
            h.update(f"{name}\0{d.dtype.str}\0{d.shape}\0".encode())
            for a in range(0, d.shape[0], block_tokens):
                h.update(np.ascontiguousarray(d[a : a + block_tokens]).tobytes())
    return h.hexdigest()


class TextCache:
    """Read-only, lazily opened reader of ``text.h5``.

    ``TextCache(path, expect=fingerprint)`` raises :class:`TextCacheError` naming every differing field
    when the cache was made with other settings; ``expect=None`` skips the check (inspection only).
    """

    def __init__(self, path: str | Path, expect: Fingerprint | None = None, stage: str = STAGE):
        self.path = Path(path)
        self.stage = stage  # the stage that makes it: named in every error
        if not self.path.exists():
            raise missing_input(self.path, "text cache", stage)
        self._f: h5py.File | None = None
        try:
            with h5py.File(self.path, "r") as f:
                if not bool(f.attrs.get("complete", False)):
                    raise TextCacheError(f"{self.path} is not a finished cache ({stage} was interrupted); run `dvc repro {stage}`")
                if int(f.attrs.get("schema_version", -1)) != SCHEMA_VERSION:
                    raise TextCacheError(
                        f"{self.path} has schema {f.attrs.get('schema_version')}, this cxrpipe reads {SCHEMA_VERSION}: "
                        f"rebuild it with `dvc repro -f {stage}`"
                    )
                self.fingerprint = Fingerprint.from_attrs(f.attrs)
                _check_linked_parts(self.path, f.attrs)
                self.store = StoreDtype(self.fingerprint.store_dtype)
                self.hidden_size = int(f.attrs["hidden_size"])
                self.offsets = f["offsets"][:]
                sids = f["study_ids"][:]
                rows = f["study_rows"][:]
                n_tokens = dataset(f, "embeddings").shape[0]
        except (OSError, KeyError) as e:
            raise corrupt_error(self.path, stage, f"{type(e).__name__}: {e}") from None
        if len(self.offsets) == 0 or int(self.offsets[-1]) != n_tokens or len(sids) != len(rows):
            raise corrupt_error(self.path, stage, "offsets, embeddings and the study map disagree")
        if expect is not None:
            diff = self.fingerprint.differences(expect)
            if diff:
                raise TextCacheError(
                    f"{self.path} was made with other settings than these params; differing: "
                    + "; ".join(diff)
                    + f". Run `dvc repro {stage}` (or `cxrpipe {stage.replace('_', '-')}`) again."
                )
        self._row_of = {int(s): int(r) for s, r in zip(sids, rows)}

    @property
    def file(self) -> h5py.File:
        if self._f is None:
            try:
                self._f = h5py.File(self.path, "r")
            except OSError as e:
                raise corrupt_error(self.path, self.stage, str(e)) from None
            self._datasets: dict[str, h5py.Dataset] = {}
        return self._f

    def _data(self, name: str) -> h5py.Dataset:
        """A data set of the cache (linked or not), opened once per process."""
        f = self.file
        if name not in self._datasets:
            self._datasets[name] = dataset(f, name)
        return self._datasets[name]

    def _read(self, name: str, a: int, b: int) -> np.ndarray:
        try:
            return self._data(name)[a:b]
        except OSError as e:  # fletcher32 mismatch, truncated file or part
            raise corrupt_error(self.path, self.stage, f"{name}[{a}:{b}]: {e}") from None

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
            return self._read("embeddings", a, b)
        names = ("embeddings", *EXTRA_ARRAYS[self.store])
        return decode({k: self._read(k, a, b) for k in names}, self.store)

    def token_ids(self, row: int) -> np.ndarray:
        a, b = int(self.offsets[row]), int(self.offsets[row + 1])
        return self._read("token_ids", a, b)

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
