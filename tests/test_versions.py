"""The numeric stack's versions that benchmark logs carry."""

import numpy
import torch

from cxrpipe.versions import NUMERIC_STACK, package_versions


def test_versions_are_the_installed_ones_and_none_for_an_absent_package():
    v = package_versions()
    assert set(v) == set(NUMERIC_STACK)
    assert v["numpy"] == numpy.__version__ and torch.__version__.startswith(v["torch"])
    assert package_versions(["no-such-distribution-cxrpipe"]) == {"no-such-distribution-cxrpipe": None}
