"""How the text cache stores each token's hidden state (params ``embed.store_dtype``), and back.

At MIMIC-CXR scale the cache is ~27-46 M tokens x 4096 dims: every byte per value is 100-190 GiB. Options,
per token of ``hidden`` values (bytes/token for LLaMA-2-7b's 4096 in brackets):

- ``float16`` (2 x hidden = 8192): the default. Values beyond +-65504 are clipped (counted): LLaMA's raw
  middle layers overflow it, the last (normed) layer does not.
- ``bfloat16`` (2 x hidden = 8192): float32's range, 8 bits of mantissa (float16 has 11). No clipping.
  Stored as the raw uint16 bit patterns (numpy and HDF5 have no bfloat16 type).
- ``int8`` (hidden + 4 + 6 x INT8_EXACT = 4148): the INT8_EXACT largest-magnitude values of each token are
  kept exact (float32 value + int16 index: LLaMA's massive-activation dims, e.g. 1415 and 2533, at BOS and
  delimiter tokens), the rest quantized symmetric int8 with one float32 scale per token (absmax / 127).

Encoded form: a dict of arrays with a leading token axis; ``embeddings`` is always there (float16, uint16
bf16 bits, or int8 codes), ``int8`` adds ``scales [T]``, ``exact_index [T, k]``, ``exact_value [T, k]``.
"""

from __future__ import annotations

import enum

import numpy as np

FLOAT16_MAX = 65504.0
INT8_EXACT = 8  # values per token kept exact by the int8 form


class StoreDtype(str, enum.Enum):
    float16 = "float16"
    bfloat16 = "bfloat16"
    int8 = "int8"


# the arrays of each form besides ``embeddings`` (their names are HDF5 dataset names in text.h5 too)
EXTRA_ARRAYS = {
    StoreDtype.float16: (),
    StoreDtype.bfloat16: (),
    StoreDtype.int8: ("scales", "exact_index", "exact_value"),
}


def bytes_per_token(store: StoreDtype | str, hidden: int) -> int:
    """Stored bytes per token (token id excluded)."""
    store = StoreDtype(store)
    if store is StoreDtype.int8:
        return hidden + 4 + INT8_EXACT * (2 + 4)
    return 2 * hidden


def encode(x: np.ndarray, store: StoreDtype | str) -> tuple[dict[str, np.ndarray], int]:
    """``x`` float32 ``[T, hidden]`` -> (encoded arrays, number of values clipped to the form's range)."""
    store = StoreDtype(store)
    x = np.asarray(x, dtype=np.float32)
    if store is StoreDtype.float16:
        n_clipped = int(np.count_nonzero(np.abs(x) > FLOAT16_MAX))
        return {"embeddings": np.clip(x, -FLOAT16_MAX, FLOAT16_MAX).astype(np.float16)}, n_clipped
    if store is StoreDtype.bfloat16:
        import torch

        bits = torch.from_numpy(np.ascontiguousarray(x)).to(torch.bfloat16).view(torch.int16).numpy()
        return {"embeddings": bits.view(np.uint16)}, 0
    k = min(INT8_EXACT, x.shape[1])
    idx = np.argpartition(-np.abs(x), k - 1, axis=1)[:, :k] if len(x) else np.zeros((0, k), np.int64)
    idx = np.sort(idx, axis=1)  # [T, k]
    val = np.take_along_axis(x, idx, axis=1)  # [T, k]
    rest = x.copy()
    np.put_along_axis(rest, idx, 0.0, axis=1)
    scales = np.abs(rest).max(axis=1) / 127.0  # [T]
    safe = np.where(scales > 0, scales, 1.0)
    codes = np.clip(np.rint(rest / safe[:, None]), -127, 127).astype(np.int8)
    return {"embeddings": codes, "scales": scales.astype(np.float32), "exact_index": idx.astype(np.int16),
            "exact_value": val.astype(np.float32)}, 0


def decode(arrays: dict[str, np.ndarray], store: StoreDtype | str) -> np.ndarray:
    """Encoded arrays of ``T`` tokens -> ``[T, hidden]``: float16 as stored for ``float16``, float32 otherwise."""
    store = StoreDtype(store)
    emb = arrays["embeddings"]
    if store is StoreDtype.float16:
        return emb
    if store is StoreDtype.bfloat16:
        return (emb.astype(np.uint32) << 16).view(np.float32)
    x = emb.astype(np.float32) * arrays["scales"][:, None]
    np.put_along_axis(x, arrays["exact_index"].astype(np.int64), arrays["exact_value"], axis=1)
    return x
