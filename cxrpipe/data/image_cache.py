"""``images.h5``: decoded, windowed, resized uint8 radiographs, made once by ``prepare``.

Layout (schema 1):
  ``images``    uint8 ``[N, S, S]``  row ``i`` is ``images.csv`` row ``i``; aspect kept, letterboxed with 0
  ``dicom_id``  utf-8 strings ``[N]``
  ``done``      bool ``[N]``         which rows are written (resume skips them)
  attrs: ``schema_version``, ``size``, ``complete`` (True only once every row is written), plus whatever
  the writer records (source, windowing, ...).

h5py handles must not cross ``fork``: :class:`ImageCache` opens its file lazily, in the process that reads
(each DataLoader worker gets its own read-only handle).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import h5py
import numpy as np

SCHEMA_VERSION = 1


class ImageCacheError(RuntimeError):
    pass


def _read_ids(f: h5py.File) -> list[str]:
    return list(f["dicom_id"].asstr()[:])


class ImageCacheWriter:
    """Create or reopen (resume) an image cache. Rows can be written in any order, in batches."""

    def __init__(
        self,
        path: str | Path,
        dicom_ids: Sequence[str],
        size: int,
        attrs: dict[str, Any] | None = None,
    ):
        self.path = Path(path)
        self.size = int(size)
        n = len(dicom_ids)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() and self._matches(dicom_ids):
            self.f = h5py.File(self.path, "r+")
        else:
            self.f = h5py.File(self.path, "w")
            self.f.attrs["schema_version"] = SCHEMA_VERSION
            self.f.attrs["size"] = self.size
            self.f.attrs["complete"] = False
            self.f.create_dataset(
                "images",
                shape=(n, self.size, self.size),
                dtype=np.uint8,
                chunks=(1, self.size, self.size) if n else None,
            )
            self.f.create_dataset("dicom_id", data=np.array(dicom_ids, dtype=object), dtype=h5py.string_dtype())
            self.f.create_dataset("done", shape=(n,), dtype=bool, fillvalue=False)
        for k, v in (attrs or {}).items():
            self.f.attrs[k] = v

    def _matches(self, dicom_ids: Sequence[str]) -> bool:
        """An existing file is resumed only if it is for the same images at the same size."""
        try:
            with h5py.File(self.path, "r") as f:
                return (
                    int(f.attrs.get("schema_version", -1)) == SCHEMA_VERSION
                    and int(f.attrs["size"]) == self.size
                    and f["dicom_id"].shape[0] == len(dicom_ids)
                    and _read_ids(f) == list(dicom_ids)
                )
        except (OSError, KeyError):  # unreadable / half-created file: start over
            return False

    def done_rows(self) -> np.ndarray:
        return self.f["done"][:]

    def write(self, row: int, image: np.ndarray) -> None:
        if image.shape != (self.size, self.size) or image.dtype != np.uint8:
            raise ValueError(f"image row {row}: expected uint8 {(self.size, self.size)}, got {image.dtype} {image.shape}")
        self.f["images"][row] = image
        self.f["done"][row] = True

    def flush(self) -> None:
        self.f.flush()

    def close(self, complete: bool) -> None:
        self.f.attrs["complete"] = bool(complete)
        self.f.close()

    def __enter__(self) -> "ImageCacheWriter":
        return self

    def __exit__(self, *exc) -> None:
        if self.f.id.valid:
            self.close(complete=bool(self.f["done"][:].all()) and exc[0] is None)


class ImageCache:
    """Read-only, lazily opened, fork-safe reader of ``images.h5``."""

    def __init__(self, path: str | Path, require_complete: bool = True):
        self.path = Path(path)
        self._f: h5py.File | None = None
        with h5py.File(self.path, "r") as f:
            if require_complete and not bool(f.attrs.get("complete", False)):
                raise ImageCacheError(f"{self.path} is not complete (prepare was interrupted); run prepare again")
            self.size = int(f.attrs["size"])
            self.n = int(f["images"].shape[0])

    @property
    def file(self) -> h5py.File:
        if self._f is None:
            self._f = h5py.File(self.path, "r")
        return self._f

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, row: int) -> np.ndarray:
        """uint8 ``[S, S]``."""
        # the dataset handle is kept: looking "images" up by name costs more than reading a 224 px row
        # (benchmarks/data_path.py: 4.1 vs 0.75 ms per image on the shared 2-core machine)
        images = self.__dict__.get("_images")
        if images is None or self._f is None:
            images = self._images = self.file["images"]
        return images[row]

    def dicom_ids(self) -> list[str]:
        return _read_ids(self.file)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_f"] = None  # never pickle an open handle into a worker
        state.pop("_images", None)
        return state

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None
