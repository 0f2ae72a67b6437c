"""Batches of texts for the language model, and their split across processes.

Padding is the main waste of a batched forward pass over reports whose lengths vary from ~20 to ~500
tokens: a batch costs ``max_len x batch_size`` token slots whatever its texts' real lengths. Grouping texts
of similar length under a budget of padded slots keeps that waste small (and the memory of every batch
bounded); the naive fixed-order batching is kept only as the benchmark's reference.

Everything here is pure Python on lengths (no torch), deterministic, and so identical in every process.
"""

from __future__ import annotations

import dataclasses
import heapq
from typing import Sequence


@dataclasses.dataclass(frozen=True)
class Batch:
    """Text rows that go through the model together, padded on the right to the longest."""

    rows: tuple[int, ...]  # indices into the list of texts
    max_len: int  # padded length of the batch

    @property
    def padded_tokens(self) -> int:
        """Token slots computed: ``batch_size x max_len``."""
        return len(self.rows) * self.max_len


def length_grouped_batches(lengths: Sequence[int], batch_tokens: int) -> list[Batch]:
    """Texts sorted by length (longest first, ties by row) cut into batches of at most ``batch_tokens`` padded
    slots (``len(batch) x max_len <= batch_tokens``); a text longer than the budget goes alone.

    Longest first so that the largest batch (the memory peak) runs at once, not after an hour.
    """
    if batch_tokens < 1:
        raise ValueError(f"batch_tokens must be >= 1, got {batch_tokens}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[Batch] = []
    rows: list[int] = []
    max_len = 0
    for i in order:
        n = max(1, int(lengths[i]))
        if rows and max(max_len, n) * (len(rows) + 1) > batch_tokens:
            batches.append(Batch(tuple(rows), max_len))
            rows, max_len = [], 0
        rows.append(i)
        max_len = max(max_len, n)
    if rows:
        batches.append(Batch(tuple(rows), max_len))
    return batches


def fixed_order_batches(lengths: Sequence[int], batch_size: int) -> list[Batch]:
    """The naive reference: texts in their given order, ``batch_size`` at a time, padded to each batch's
    longest."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    out = []
    for a in range(0, len(lengths), batch_size):
        rows = tuple(range(a, min(a + batch_size, len(lengths))))
        out.append(Batch(rows, max(max(1, int(lengths[i])) for i in rows)))
    return out


def padding_fraction(batches: Sequence[Batch], lengths: Sequence[int]) -> float:
    """Share of computed token slots that are padding."""
    slots = sum(b.padded_tokens for b in batches)
    real = sum(max(1, int(lengths[i])) for b in batches for i in b.rows)
    return 1.0 - real / slots if slots else 0.0


def group_into_parts(batches: Sequence[Batch], lengths: Sequence[int], part_tokens: int) -> list[list[int]]:
    """Consecutive batches gathered into parts of at least ``part_tokens`` real tokens (the last may be
    smaller); returns batch indices per part. A part is the unit written to disk and resumed."""
    if part_tokens < 1:
        raise ValueError(f"part_tokens must be >= 1, got {part_tokens}")
    parts: list[list[int]] = []
    cur: list[int] = []
    tokens = 0
    for j, b in enumerate(batches):
        cur.append(j)
        tokens += sum(int(lengths[i]) for i in b.rows)
        if tokens >= part_tokens:
            parts.append(cur)
            cur, tokens = [], 0
    if cur:
        parts.append(cur)
    return parts


def balanced_split(costs: Sequence[float], n_ranks: int) -> list[list[int]]:
    """Item indices for each of ``n_ranks`` ranks, balanced by cost (greedy longest-processing-time: the
    costliest item goes to the least loaded rank; ties to the lower rank). Deterministic, so every process
    computes the same split without talking to the others; each rank's items stay in ascending order."""
    if n_ranks < 1:
        raise ValueError(f"n_ranks must be >= 1, got {n_ranks}")
    heap = [(0.0, r) for r in range(n_ranks)]
    out: list[list[int]] = [[] for _ in range(n_ranks)]
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        load, r = heapq.heappop(heap)
        out[r].append(i)
        heapq.heappush(heap, (load + float(costs[i]), r))
    return [sorted(items) for items in out]
