"""Length-grouped batching, parts and the token-balanced split across ranks."""

from __future__ import annotations

import random

import pytest

from cxrpipe.text.batching import (
    balanced_split,
    fixed_order_batches,
    group_into_parts,
    length_grouped_batches,
    padding_fraction,
)


def report_lengths(n: int = 500, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [max(5, int(rng.lognormvariate(4.4, 0.5))) for _ in range(n)]  # ~80 tokens, long tail


def test_grouped_batches_respect_budget_and_cover_every_text_once():
    lengths = report_lengths() + [900]  # one text longer than the budget goes alone
    batches = length_grouped_batches(lengths, batch_tokens=512)
    rows = [r for b in batches for r in b.rows]
    assert sorted(rows) == list(range(len(lengths)))
    for b in batches:
        assert b.max_len == max(lengths[r] for r in b.rows)
        assert b.padded_tokens <= 512 or len(b.rows) == 1
    assert any(b.rows == (len(lengths) - 1,) for b in batches)
    # longest first: the memory peak comes at once
    assert batches[0].max_len == max(lengths)


def test_grouping_wastes_less_padding_than_fixed_order():
    lengths = report_lengths()
    grouped = length_grouped_batches(lengths, batch_tokens=2048)
    naive = fixed_order_batches(lengths, batch_size=round(len(lengths) / len(grouped)))
    assert padding_fraction(grouped, lengths) < 0.05
    assert padding_fraction(naive, lengths) > 3 * padding_fraction(grouped, lengths)
    assert sorted(r for b in naive for r in b.rows) == list(range(len(lengths)))


def test_parts_hold_whole_batches_of_enough_tokens():
    lengths = report_lengths()
    batches = length_grouped_batches(lengths, batch_tokens=1024)
    parts = group_into_parts(batches, lengths, part_tokens=4000)
    assert [j for p in parts for j in p] == list(range(len(batches)))
    for p in parts[:-1]:
        assert sum(lengths[r] for j in p for r in batches[j].rows) >= 4000


def test_balanced_split_is_deterministic_complete_and_balanced():
    costs = [float(c) for c in report_lengths(200, seed=1)]
    split = balanced_split(costs, 3)
    assert split == balanced_split(costs, 3)
    assert sorted(i for s in split for i in s) == list(range(200))
    loads = [sum(costs[i] for i in s) for s in split]
    assert max(loads) - min(loads) <= max(costs)
    assert balanced_split(costs, 1) == [list(range(200))]
    assert balanced_split([5.0], 2) == [[0], []]


def test_invalid_sizes_raise():
    with pytest.raises(ValueError):
        length_grouped_batches([3, 4], 0)
    with pytest.raises(ValueError):
        balanced_split([1.0], 0)
