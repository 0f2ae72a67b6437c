import math

import numpy as np
import pytest

from cxrpipe.labels import CHEXPERT_LABELS, BlankPolicy, UncertainPolicy, parse_raw_label, targets_and_mask


def test_fourteen_labels_in_mimic_column_order():
    assert len(CHEXPERT_LABELS) == 14
    assert list(CHEXPERT_LABELS) == sorted(CHEXPERT_LABELS)
    assert "No Finding" in CHEXPERT_LABELS and "Support Devices" in CHEXPERT_LABELS


@pytest.mark.parametrize("cell, value", [("1.0", 1.0), ("0.0", 0.0), ("-1.0", -1.0), ("1", 1.0), (" ", math.nan), ("", math.nan), (None, math.nan)])
def test_parse_raw_label(cell, value):
    v = parse_raw_label(cell)
    assert (math.isnan(v) and math.isnan(value)) or v == value


@pytest.mark.parametrize("cell", ["2.0", "yes", "0.5", -2])
def test_parse_raw_label_rejects(cell):
    with pytest.raises(ValueError, match="not one of 1, 0, -1 or blank"):
        parse_raw_label(cell)


def test_policies():
    raw = np.array([[1.0, 0.0, -1.0, np.nan]])
    t, m = targets_and_mask(raw)
    assert t.tolist() == [[1, 0, 0, 0]] and m.tolist() == [[True, True, False, True]]
    t, m = targets_and_mask(raw, UncertainPolicy.ONES)
    assert t.tolist() == [[1, 0, 1, 0]] and m.all()
    t, m = targets_and_mask(raw, UncertainPolicy.ZEROS, BlankPolicy.IGNORE)
    assert t.tolist() == [[1, 0, 0, 0]] and m.tolist() == [[True, True, True, False]]
