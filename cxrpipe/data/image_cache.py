"""``images.h5``: decoded, windowed, resized uint8 radiographs, made once by ``prepare``.

Layout (schema 2):
  ``images``    uint8 ``[N, S, S]``  row ``i`` is ``images.csv`` row ``i``; aspect kept, letterboxed with 0;
                                     one chunk per row, fletcher32-checked by HDF5 on every read
  ``dicom_id``  fixed-length ASCII ``[N]`` (fletcher32 too)
  attrs: ``schema_version``, ``size``, ``complete``, ``sha256_images`` / ``sha256_dicom_id`` (the bytes of
  each dataset, checked in full by :func:`verify_image_cache` / ``cxrpipe verify``), plus whatever the
  writer records (source, windowing, ...).

The file is written under a temporary name and renamed when complete, so ``images.h5`` is either whole or
absent; a truncated or bit-flipped one raises :class:`~cxrpipe.io.CorruptFileError` naming the file and
``dvc repro -f prepare`` (on open, or when the damaged row is read: HDF5 checks each chunk's checksum).
Resuming an interrupted ``prepare`` is not this file's business (see :mod:`cxrpipe.data.prepare`).

h5py handles must not cross ``fork``: :class:`ImageCache` opens its file lazily, in the process that reads
(each DataLoader worker gets its own read-only handle).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Sequence

import h5py
import numpy as np

from cxrpipe.io import SHA_PREFIX, CorruptFileError, UserError, corrupt_error, create_h5, verify_checksums

SCHEMA_VERSION = 2
STAGE = "prepare"  # the stage that makes images.h5 (named in every error)


class ImageCacheError(UserError, RuntimeError):
    """images.h5 is missing, unfinished or of another schema (the message says how to rebuild it)."""


def _read_ids(f: h5py.File) -> list[str]:
    return [x.decode() for x in f["dicom_id"][:]]


class ImageCacheWriter:
    """Write a new image cache: rows in any order (row order is fastest), then ``close(complete=True)``
    renames the temporary file onto ``path``; an exception inside ``with`` leaves no file behind."""

    def __init__(self, path: str | Path, dicom_ids: Sequence[str], size: int, attrs: dict[str, Any] | None = None):
        self.path = Path(path)
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        self.size = int(size)
        n = len(dicom_ids)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp.unlink(missing_ok=True)
        self.f = create_h5(self.tmp)
        self.f.attrs["schema_version"] = SCHEMA_VERSION
        self.f.attrs["size"] = self.size
        self.f.attrs["complete"] = False
        for k, v in (attrs or {}).items():
            self.f.attrs[k] = v
        ids = np.array([str(x).encode() for x in dicom_ids], dtype=f"S{max([len(x) for x in dicom_ids] + [1])}")
        self.f.create_dataset("dicom_id", data=ids, chunks=(max(1, min(n, 4096)),) if n else None,
                              fletcher32=bool(n))
        self.f.attrs[SHA_PREFIX + "dicom_id"] = hashlib.sha256(ids.tobytes()).hexdigest()
        self.f.create_dataset("images", shape=(n, self.size, self.size), dtype=np.uint8,
                              chunks=(1, self.size, self.size) if n else None, fletcher32=bool(n))
        self._hash, self._next, self._written = hashlib.sha256(), 0, np.zeros(n, dtype=bool)

    def write(self, row: int, image: np.ndarray) -> None:
        if image.shape != (self.size, self.size) or image.dtype != np.uint8:
            raise ValueError(f"image row {row}: expected uint8 {(self.size, self.size)}, got {image.dtype} {image.shape}")
        self.f["images"][row] = image
        self._written[row] = True
        if row == self._next and self._hash is not None:  # rows in order: hash as they come
            self._hash.update(np.ascontiguousarray(image).tobytes())
            self._next += 1
        else:
            self._hash = None  # out of order: hashed by reading back at close

    def close(self, complete: bool) -> None:
        """``complete``: every row written; record the checksums and rename onto ``path``. Else drop it."""
        if not complete:
            self.f.close()
            self.tmp.unlink(missing_ok=True)
            return
        if not self._written.all():
            missing = np.flatnonzero(~self._written)
            self.f.close()
            self.tmp.unlink(missing_ok=True)
            raise ImageCacheError(f"{self.path}: {len(missing)} rows never written (first: {missing[:5].tolist()})")
        from cxrpipe.io import sha256_rows

        digest = self._hash.hexdigest() if self._hash is not None else sha256_rows(self.f["images"])
        self.f.attrs[SHA_PREFIX + "images"] = digest
        self.f.attrs["complete"] = True
        self.f.close()
        with open(self.tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(self.tmp, self.path)

    def __enter__(self) -> "ImageCacheWriter":
        return self

    def __exit__(self, *exc) -> None:
        if self.f.id.valid:
            self.close(complete=exc[0] is None)


class ImageCache:
    """Read-only, lazily opened, fork-safe reader of ``images.h5``."""

    def __init__(self, path: str | Path, require_complete: bool = True):
        self.path = Path(path)
        self._f: h5py.File | None = None
        if not self.path.exists():
            raise ImageCacheError(f"image cache not found: {self.path} (run the prepare stage)")
        try:
            with h5py.File(self.path, "r") as f:
                if int(f.attrs.get("schema_version", -1)) != SCHEMA_VERSION:
                    raise ImageCacheError(
                        f"{self.path} has schema {f.attrs.get('schema_version')}, this cxrpipe reads {SCHEMA_VERSION}: "
                        f"rebuild it with `dvc repro -f {STAGE}`"
                    )
                if require_complete and not bool(f.attrs.get("complete", False)):
                    raise ImageCacheError(f"{self.path} is not complete (prepare was interrupted); run prepare again")
                self.size = int(f.attrs["size"])
                self.n = int(f["images"].shape[0])
                if f["dicom_id"].shape[0] != self.n or f["images"].shape[1:] != (self.size, self.size):
                    raise corrupt_error(self.path, STAGE, "datasets disagree in shape")
        except (OSError, KeyError) as e:
            raise corrupt_error(self.path, STAGE, f"{type(e).__name__}: {e}") from None

    @property
    def file(self) -> h5py.File:
        if self._f is None:
            try:
                self._f = h5py.File(self.path, "r")
            except OSError as e:
                raise corrupt_error(self.path, STAGE, str(e)) from None
        return self._f

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, row: int) -> np.ndarray:
        """uint8 ``[S, S]``; a damaged row raises :class:`CorruptFileError` (HDF5's chunk checksum)."""
        # the dataset handle is kept: looking "images" up by name costs more than reading a 224 px row
        # (benchmarks/data_path.py: 4.1 vs 0.75 ms per image on the shared 2-core machine)
        images = self.__dict__.get("_images")
        try:
            if images is None or self._f is None:
                images = self._images = self.file["images"]
            return images[row]
        except OSError as e:
            raise corrupt_error(self.path, STAGE, f"row {row}: {e}") from None

    def dicom_ids(self) -> list[str]:
        try:
            return _read_ids(self.file)
        except OSError as e:
            raise corrupt_error(self.path, STAGE, f"dicom_id: {e}") from None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_f"] = None  # never pickle an open handle into a worker
        state.pop("_images", None)
        return state

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


def verify_image_cache(path: str | Path) -> dict[str, str]:
    """Read every byte of ``images.h5`` and compare with the checksums recorded at write time."""
    ImageCache(path)  # the cheap checks first (schema, complete, shapes)
    try:
        with h5py.File(path, "r") as f:
            return verify_checksums(f, path, STAGE)
    except OSError as e:
        raise corrupt_error(path, STAGE, str(e)) from None


__all__ = ["ImageCache", "ImageCacheError", "ImageCacheWriter", "CorruptFileError", "verify_image_cache"]
