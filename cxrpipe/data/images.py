"""Decode one radiograph file to a uint8 2-D array, and letterbox it to a square.

Formats:
  * JPEG / PNG (and anything else Pillow reads): 8-bit grey as is; colour converted to luminance; 16-bit
    grey (Pillow mode ``I;16`` / ``I``) scaled by ``2**b - 1`` for the smallest ``b`` in 8, 10, 12, 14, 16
    that holds the image's maximum (the PNG spec says 16-bit samples span the full range, but PNGs written
    from 12-bit DICOM often store the raw 12-bit values; dividing those by 65535 would give a black image).
  * DICOM (``.dcm``, or any file with the ``DICM`` magic): pydicom 3 decodes the pixel data (uncompressed,
    JPEG baseline, JPEG 2000, ... through the decoders pydicom + Pillow provide), then the display pipeline
    of DICOM PS3.3 C.11: modality LUT / rescale (``apply_modality_lut``), VOI LUT or window from the file
    (``apply_voi_lut``; its output range is taken from the file, not from the image, so a window keeps its
    meaning), else a percentile window (``percentile`` .. ``100 - percentile``, ``0`` = min-max);
    MONOCHROME1 (white = low values) is inverted last so that bone is always bright. Multi-frame: frame 0.

Every failure is an :class:`ImageDecodeError` naming the file and the reason; ``prepare`` lists it as a
reject and goes on. This is the only module that imports pydicom.

Letterbox (:func:`letterbox`): the longer side is resized to ``S`` (Pillow, Lanczos with a reducing gap),
aspect ratio kept, the image centred on an ``S x S`` canvas of zeros (black, the background of a radiograph).
:func:`load_image` = decode + letterbox; :func:`decode_task` / :func:`decode_chunk` wrap it for ``prepare``'s
worker processes (failures come back as reasons, not exceptions).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

log = logging.getLogger(__name__)

DICOM_SUFFIXES = (".dcm", ".dicom")
_DICOM_MAGIC_OFFSET = 128  # 128-byte preamble, then b"DICM"


class ImageDecodeError(Exception):
    """A file that cannot be decoded to a radiograph."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")

    def __reduce__(self):  # travels back from worker processes intact
        return (type(self), (self.path, self.reason))


def is_dicom(path: str | Path) -> bool:
    """By suffix, else by the ``DICM`` magic after the 128-byte preamble."""
    path = Path(path)
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with path.open("rb") as f:
            f.seek(_DICOM_MAGIC_OFFSET)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def decode_image(path: str | Path, percentile: float = 0.5, draft_size: int | None = None) -> np.ndarray:
    """Decode ``path`` to uint8 ``[H, W]`` (display orientation: bone bright).

    ``percentile``: window for DICOMs that carry none (see module doc). ``draft_size``: a JPEG may be
    decoded at a reduced scale (1/2, 1/4, 1/8 in the DCT domain, far faster for full-size MIMIC JPGs) as
    long as both sides stay >= ``draft_size``.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as e:
        raise ImageDecodeError(path, f"cannot read file: {e.strerror or e}") from None
    if size == 0:
        raise ImageDecodeError(path, "empty file (0 bytes)")
    if is_dicom(path):
        return decode_dicom(path, percentile=percentile)
    return decode_raster(path, draft_size=draft_size)


def decode_raster(path: str | Path, draft_size: int | None = None) -> np.ndarray:
    """JPEG / PNG / ... via Pillow -> uint8 ``[H, W]``."""
    try:
        with Image.open(path) as im:
            if draft_size and im.format == "JPEG":
                im.draft("L", (draft_size, draft_size))
            im.load()  # decode now: a truncated file fails here, not later
            return _pil_to_uint8(im)
    except UnidentifiedImageError:
        raise ImageDecodeError(path, "not an image Pillow can identify (corrupt or unknown format)") from None
    except (OSError, SyntaxError, ValueError) as e:  # Pillow: "image file is truncated", broken PNG chunks...
        raise ImageDecodeError(path, f"corrupt image: {e}") from None


def _pil_to_uint8(im: Image.Image) -> np.ndarray:
    if im.mode == "L":
        return np.asarray(im, dtype=np.uint8).copy()
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        a = np.asarray(im).astype(np.int64)
        if a.min() < 0:
            return _to_uint8(a.astype(np.float64), float(a.min()), float(a.max()))
        top = int(a.max())
        bits = next((b for b in (8, 10, 12, 14, 16) if top <= 2**b - 1), None)
        if bits is None:  # 32-bit data: no convention, use its own range
            return _to_uint8(a.astype(np.float64), float(a.min()), float(top))
        return _to_uint8(a.astype(np.float64), 0.0, float(2**bits - 1))
    if im.mode == "F":
        a = np.asarray(im, dtype=np.float64)
        return _to_uint8(a, float(a.min()), float(a.max()))
    # palette, RGB(A), LA, 1-bit, CMYK...: Pillow's ITU-R 601 luminance
    return np.asarray(im.convert("L"), dtype=np.uint8).copy()


def decode_dicom(path: str | Path, percentile: float = 0.5) -> np.ndarray:
    """DICOM -> uint8 ``[H, W]``: modality LUT, VOI LUT / window (file's, else percentile), MONOCHROME1 inverted."""
    with warnings.catch_warnings():  # pydicom both warns and logs each header oddity: keep the log only
        warnings.simplefilter("ignore", UserWarning)
        return _decode_dicom(path, percentile)


def _decode_dicom(path: str | Path, percentile: float) -> np.ndarray:
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError as e:
        raise ImageDecodeError(path, f"unreadable DICOM: {e}") from None
    except Exception as e:  # pydicom raises many types on a damaged header
        raise ImageDecodeError(path, f"unreadable DICOM header: {type(e).__name__}: {e}") from None
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise ImageDecodeError(path, "DICOM has no pixel data")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    try:
        arr = ds.pixel_array
    except Exception as e:  # missing decoder, truncated pixel data, bad transfer syntax...
        tsyntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(tsyntax, "name", tsyntax)
        raise ImageDecodeError(path, f"cannot decode DICOM pixel data ({name}): {type(e).__name__}: {e}") from None
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        arr = arr[0]  # [frames, H, W(, C)] -> first frame
    if arr.ndim == 3:  # colour (pydicom returns RGB): luminance, no VOI for colour images
        rgb = arr.astype(np.float64)
        grey = rgb @ np.array([0.299, 0.587, 0.114])
        return _to_uint8(grey, float(grey.min()), float(grey.max()))
    if arr.ndim != 2:
        raise ImageDecodeError(path, f"unexpected pixel array shape {arr.shape}")

    try:
        values = apply_modality_lut(arr, ds)
        lo, hi = _voi_output_range(ds)
        if lo is not None:
            if ds.get("VOILUTSequence") and not np.issubdtype(values.dtype, np.integer):
                values = np.rint(values).astype(np.int64)  # a LUT is indexed by integer values
            values = apply_voi_lut(values, ds)
    except Exception as e:  # a broken window (width 0, bad LUT): fall back to the image's own range
        log.warning("%s: VOI from the file unusable (%s); using a percentile window", path, e)
        values, lo = apply_modality_lut(arr, ds), None
    values = np.asarray(values, dtype=np.float64)
    if lo is None:
        lo, hi = _percentile_window(values, percentile)
    out = _to_uint8(values, lo, hi)
    if photometric == "MONOCHROME1":
        out = 255 - out
    return out


def _voi_output_range(ds) -> tuple[float | None, float | None]:
    """The value range ``apply_voi_lut`` maps onto for this file, or (None, None) when it has no VOI."""
    from pydicom.pixels import apply_voi_lut

    seq = ds.get("VOILUTSequence")
    if seq and seq[0].get("LUTDescriptor") is not None and seq[0].get("LUTData") is not None:
        n_entries, first_map = int(seq[0].LUTDescriptor[0]) or 2**16, int(seq[0].LUTDescriptor[1])
        # the LUT's own output values: run it over its whole input domain
        out = apply_voi_lut(np.arange(first_map, first_map + n_entries, dtype=np.int64), ds)
        return float(out.min()), float(out.max())
    if ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        # windowing maps to [y_min, y_max] of the stored (rescaled) range: far ends of the axis give them
        out = apply_voi_lut(np.array([-1e15, 1e15]), ds)
        return float(out.min()), float(out.max())
    return None, None


def _percentile_window(values: np.ndarray, percentile: float) -> tuple[float, float]:
    if percentile <= 0:
        return float(values.min()), float(values.max())
    sample = values[::4, ::4] if values.size > 1_000_000 else values  # percentiles of a grid sample: 16x less work
    lo, hi = np.percentile(sample, [percentile, 100.0 - percentile])
    return float(lo), float(hi)


def _to_uint8(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Map ``[lo, hi]`` linearly onto 0..255, clipping outside (a constant image becomes 0)."""
    if not np.isfinite(lo) or not np.isfinite(hi) or hi <= lo:
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = (values - lo) * (255.0 / (hi - lo))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def letterbox(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 ``[H, W]`` -> uint8 ``[size, size]``: longer side -> ``size``, aspect kept, centred, padded with 0."""
    if image.ndim != 2 or image.dtype != np.uint8:
        raise ValueError(f"letterbox expects uint8 [H, W], got {image.dtype} {image.shape}")
    h, w = image.shape
    if h == 0 or w == 0:
        raise ValueError(f"letterbox: empty image {image.shape}")
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    im = Image.fromarray(image, mode="L")
    if (nh, nw) != (h, w):
        # reducing_gap: a cheap box pre-reduction before Lanczos, visually identical, much faster on 3000 px
        im = im.resize((nw, nh), Image.Resampling.LANCZOS, reducing_gap=3.0)
    out = np.zeros((size, size), dtype=np.uint8)
    top, left = (size - nh) // 2, (size - nw) // 2
    out[top : top + nh, left : left + nw] = np.asarray(im, dtype=np.uint8)
    return out


def load_image(path: str | Path, size: int, percentile: float = 0.5) -> np.ndarray:
    """Decode + letterbox: the work one ``prepare`` worker does per image. uint8 ``[size, size]``."""
    image = decode_image(path, percentile=percentile, draft_size=2 * size)
    if image.size == 0:
        raise ImageDecodeError(path, f"image has no pixels {image.shape}")
    return letterbox(image, size)


def decode_task(task: tuple[int, str, int, float]) -> tuple[int, np.ndarray | None, str | None]:
    """A ``prepare`` worker's job: (index, path, size, percentile) -> (index, uint8 [S, S] or None, why not).

    Lives here, not in ``prepare``, so that a spawned worker imports only numpy, Pillow and (lazily) pydicom.
    """
    i, path, size, percentile = task
    try:
        return i, load_image(path, size, percentile), None
    except ImageDecodeError as e:
        return i, None, e.reason
    except Exception as e:  # one odd file must not end a 377k-image run; it is listed like any other
        return i, None, f"unexpected {type(e).__name__}: {e}"


def decode_chunk(tasks: list[tuple[int, str, int, float]]) -> list[tuple[int, np.ndarray | None, str | None]]:
    """:func:`decode_task` over a chunk (one message to and from a worker per chunk)."""
    return [decode_task(t) for t in tasks]


def dicom_view_position(path: str | Path) -> str:
    """A DICOM's ``ViewPosition`` (upper case), read from the header alone; "" when absent or unreadable
    (the decode step reports an unreadable file)."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["ViewPosition"])
    except Exception:  # noqa: BLE001 - decode_image names the problem later
        return ""
    return str(ds.get("ViewPosition", "") or "").strip().upper()
