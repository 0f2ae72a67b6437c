"""The numeric stack's versions that benchmark logs carry."""

import numpy
import torch

from cxrpipe.versions import NUMERIC_STACK, cpu_identity, package_versions


def test_versions_are_the_installed_ones_and_none_for_an_absent_package():
    v = package_versions()
    assert set(v) == set(NUMERIC_STACK)
    assert v["numpy"] == numpy.__version__ and torch.__version__.startswith(v["torch"])
    assert package_versions(["no-such-distribution-cxrpipe"]) == {"no-such-distribution-cxrpipe": None}


def test_cpu_identity_reads_the_first_processor_of_cpuinfo():
    text = ("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 26\nmodel\t\t: 2\nmodel name\t: AMD EPYC\n"
            "microcode\t: 0x1000065\ncache size\t: 1024 KB\nflags\t\t: fpu sse2 avx2 fma avx512f avx512_bf16\n\n"
            "processor\t: 1\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nflags\t\t: avx2 amx_bf16\n")
    c = cpu_identity(text)
    assert (c["vendor"], c["family"], c["model"], c["model_name"]) == ("AuthenticAMD", "26", "2", "AMD EPYC")
    assert c["microcode"] == "0x1000065" and c["cache_size"] == "1024 KB"
    assert c["isa"] == ["avx2", "fma", "avx512f", "avx512_bf16"]  # the second processor's amx_bf16 is not read
    assert c["cores"] >= 1
    assert set(cpu_identity("")) == {"cores"}  # no cpuinfo (not Linux): the core count only
