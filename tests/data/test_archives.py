"""Hostile archives (issue 17, item 1): every archive the project reads goes through cxrpipe.data.archives.

Each test builds its archive here: members named ``..``/absolute, links, devices, members larger than their
declared size, truncated archives. Either a one-line error naming the archive and member, or the member
skipped and counted; never a byte written outside the folder.
"""

from __future__ import annotations

import io
import logging
import os
import tarfile
import zipfile
from pathlib import Path

import pytest

from cxrpipe.data.archives import (
    SafeZip,
    UnsafeArchiveError,
    extract_tar_members,
    extract_zip,
    iter_tar,
    safe_member_name,
)
from cxrpipe.data.prepare import DataConfig, run_prepare

from .test_iu_prepare import PREP, _add, _png_bytes, iu_layout


def _tar(path: Path, members: list[tarfile.TarInfo | tuple[str, bytes]], mode: str = "w") -> Path:
    with tarfile.open(path, mode) as tar:
        for m in members:
            if isinstance(m, tarfile.TarInfo):
                tar.addfile(m)
            else:
                _add(tar, *m)
    return path


def _link(name: str, target: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


def _outside_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


@pytest.mark.parametrize("name", ["../../x/CXR1_1_IM-0001-4001.png", "/tmp/abs/CXR1_1_IM-0001-4001.png",
                                  "a/../../CXR1_1_IM-0001-4001.png", "C:/x.png", "a\\..\\b.png"])
def test_unsafe_member_names_are_refused(name):
    with pytest.raises(UnsafeArchiveError, match="unsafe name"):
        safe_member_name(name, "NLMCXR_png.tgz")
    assert safe_member_name("./ecgen-radiology/1.xml", "x") == "ecgen-radiology/1.xml"


@pytest.mark.parametrize("hostile", ["../../escaped/CXR1_1_IM-0001-4001.png", "/ABSOLUTE/CXR1_1_IM-0001-4001.png"])
def test_iu_png_tarball_cannot_write_outside_its_folder(tmp_path, hostile):
    """The issue's reproduction: a tarball member named with .. or an absolute path, referenced by a report's
    parentImage, was written outside images.extracted/. Now prepare fails in one line and writes nothing."""
    lay = iu_layout(tmp_path / "iu")
    hostile = hostile.replace("/ABSOLUTE", str(tmp_path / "abs"))
    with tarfile.open(tmp_path / "evil.tar", "w") as evil:
        with tarfile.open(lay["tgz"], "r:gz") as good:
            for m in good:
                if m.name != "CXR1_1_IM-0001-4001.png":
                    evil.addfile(m, good.extractfile(m))
        _add(evil, hostile, _png_bytes(7))
    cfg = DataConfig(source="iu-xray", root=tmp_path / "evil.tar", reports=lay["reports"], views=())
    out = tmp_path / "work" / "prepared"
    with pytest.raises(UnsafeArchiveError) as e:
        run_prepare(cfg, PREP, out)
    msg = str(e.value)
    assert "\n" not in msg and "data.root" in msg and "unsafe name" in msg and "CXR1_1_IM-0001-4001.png" in msg
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "abs").exists()
    assert not (tmp_path / "work").exists() or not _outside_files(tmp_path / "work")


def test_links_and_devices_are_skipped_and_counted_never_followed(tmp_path, caplog):
    secret = tmp_path / "secret.txt"
    secret.write_text("not yours")
    dev = tarfile.TarInfo("dev/null0")
    dev.type = tarfile.CHRTYPE
    arc = _tar(tmp_path / "a.tar", [
        ("ok/CXR1_1_IM-0001-4001.png", b"png"),
        _link("ok/CXR2_2_IM-0002-4001.png", str(secret), tarfile.SYMTYPE),  # a symlink to a file outside
        _link("ok/CXR3_3_IM-0003-4001.png", "ok/CXR1_1_IM-0001-4001.png", tarfile.LNKTYPE),  # a hardlink
        dev,
    ])
    caplog.set_level(logging.WARNING)
    got = dict(iter_tar(arc))
    assert got == {"ok/CXR1_1_IM-0001-4001.png": b"png"}  # only the regular file
    assert "skipped 3 member(s)" in caplog.text and "symlink" in caplog.text and "hardlink" in caplog.text
    dest = tmp_path / "dest"
    n = extract_tar_members(arc, {"ok/CXR1_1_IM-0001-4001.png", "ok/CXR2_2_IM-0002-4001.png",
                                  "ok/CXR3_3_IM-0003-4001.png", "dev/null0"}, dest)
    assert n == 1 and _outside_files(dest) == [dest / "ok/CXR1_1_IM-0001-4001.png"]
    assert not any(p.is_symlink() for p in dest.rglob("*")) and secret.read_text() == "not yours"


def test_a_link_left_inside_the_destination_is_not_written_through(tmp_path):
    arc = _tar(tmp_path / "a.tar", [("sub/x.png", b"data")])
    dest, elsewhere = tmp_path / "dest", tmp_path / "elsewhere"
    dest.mkdir()
    elsewhere.mkdir()
    os.symlink(elsewhere, dest / "sub")  # planted by someone else
    with pytest.raises(UnsafeArchiveError, match="is a link"):
        extract_tar_members(arc, {"sub/x.png"}, dest)
    assert not list(elsewhere.iterdir())


def test_a_tar_member_larger_than_its_declared_size_is_refused(tmp_path):
    """tarfile stops SILENTLY at a damaged header after the first member: without the check, every member
    after an oversized one would vanish without a word."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        _add(tar, "a.xml", b"<a/>")
        _add(tar, "b.xml", b"x" * 1500)  # three 512-byte blocks
        _add(tar, "c.xml", b"<c/>")
    raw = bytearray(buf.getvalue())
    # b.xml's header is the second 512-byte block after a.xml's data block: declare 10 bytes (one block) instead of 1500
    hdr = 1024
    assert raw[hdr:hdr + 5] == b"b.xml"
    raw[hdr + 124:hdr + 136] = b"%011o\0" % 10  # the size field
    raw[hdr + 148:hdr + 156] = b" " * 8  # the header checksum: computed with its own field as spaces
    raw[hdr + 148:hdr + 156] = b"%06o\0 " % sum(raw[hdr:hdr + 512])
    (tmp_path / "r.tar").write_bytes(bytes(raw))
    with pytest.raises(UnsafeArchiveError, match="larger than its declared size"):
        list(iter_tar(tmp_path / "r.tar"))


def test_truncated_and_non_tar_archives_are_one_line_errors(tmp_path):
    good = _tar(tmp_path / "g.tar.gz", [(f"ecgen-radiology/{i}.xml", b"<x/>" * 500) for i in range(20)], "w:gz")
    cut = tmp_path / "cut.tgz"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(UnsafeArchiveError, match="not a readable tar archive") as e:
        list(iter_tar(cut, param="data.reports"))
    assert "data.reports" in str(e.value) and "\n" not in str(e.value)


def _zip_with_lying_size(path: Path, name: str, data: bytes, declared: int) -> Path:
    """A stored member whose headers declare ``declared`` bytes (fewer than it holds)."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(name, data)
    raw = bytearray(path.read_bytes())
    size = len(data).to_bytes(4, "little")
    # uncompressed size: local header offset 22, central directory offset 24 (after its signature)
    local = raw.index(b"PK\x03\x04")
    central = raw.index(b"PK\x01\x02")
    assert raw[local + 22:local + 26] == size and raw[central + 24:central + 28] == size
    raw[local + 22:local + 26] = raw[central + 24:central + 28] = declared.to_bytes(4, "little")
    path.write_bytes(bytes(raw))
    return path


def test_a_zip_member_holding_more_than_declared_is_refused(tmp_path):
    z = SafeZip(_zip_with_lying_size(tmp_path / "r.zip", "files/p10/p10000032/s50414267.txt", b"A" * 5000, 100),
                param="data.reports")
    with pytest.raises(UnsafeArchiveError) as e:
        z.read("files/p10/p10000032/s50414267.txt")
    assert "data.reports" in str(e.value) and "s50414267.txt" in str(e.value) and "declared 100" in str(e.value)


def test_zip_names_links_and_extraction(tmp_path):
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("../outside.txt", "x")
    with pytest.raises(UnsafeArchiveError, match="unsafe name"):
        SafeZip(evil)
    ok = tmp_path / "ok.zip"
    with zipfile.ZipFile(ok, "w") as z:
        z.writestr("pkg/model.gguf", "weights")
        link = zipfile.ZipInfo("pkg/link")
        link.external_attr = (0o120777 << 16)  # a symlink entry, as `zip --symlinks` writes it
        z.writestr(link, "/etc/passwd")
    dest = tmp_path / "unpacked"
    assert extract_zip(ok, dest) == 1
    assert _outside_files(dest) == [dest / "pkg/model.gguf"] and not (dest / "pkg/link").exists()


def test_mimic_reports_zip_with_an_unsafe_member_fails_prepare_in_one_line(tmp_path):
    from tests.data.mimic_tree import write_tree

    tree = write_tree(tmp_path / "mimic", n_good=4)
    with zipfile.ZipFile(tree.reports, "a") as z:
        z.writestr("/files/p10/p10000000/s59999999.txt", "FINDINGS: absolute.")
    cfg = DataConfig(root=tree.root, reports=tree.reports, views=())
    with pytest.raises(UnsafeArchiveError) as e:
        run_prepare(cfg, PREP, tmp_path / "out")
    assert "data.reports" in str(e.value) and "s59999999.txt" in str(e.value) and "\n" not in str(e.value)
