"""Reading the archives a user hands us (tar, tar.gz, zip) without trusting them.

One rule for every archive the project reads (IU X-ray's ``NLMCXR_png.tgz`` and ``NLMCXR_reports.tgz``,
MIMIC's ``mimic-cxr-reports.zip``, the demo model's wheel), whoever made it:

* a member's name must be a relative path without ``..`` parts (no absolute name, no drive letter, no
  backslash, no NUL): anything else is an :class:`UnsafeArchiveError` (the archive is hostile or broken);
  a leading ``./`` is dropped;
* only regular files are read: symbolic and hard links, devices, FIFOs and folders are skipped, never
  followed or created, and counted (:class:`Skipped`, logged once per archive);
* a member is read up to its declared size and no further; one that holds more (a zip member that
  inflates past its header's size, a tar member whose data runs into where the next header should be)
  or that declares more than ``max_bytes`` is an :class:`UnsafeArchiveError`, as is a truncated or
  corrupt archive (tarfile would otherwise stop at a bad header silently, losing the rest);
* extraction (:func:`extract_tar_members`, :func:`extract_zip`) writes each file under a temporary name and
  renames it, after checking that the resolved target lies inside the destination folder and that no
  folder on the way is a link.

Errors name the archive, the params key it came from (when given) and the member, on one line.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import stat
import tarfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator

from cxrpipe.io import UserError

log = logging.getLogger(__name__)

MAX_MEMBER_BYTES = 1 << 30  # no report, image or weight file the project reads from an archive is near 1 GiB


class UnsafeArchiveError(UserError):
    """An archive member has an unsafe name or size, or the archive is damaged."""


@dataclasses.dataclass
class Skipped:
    """Members left out because they are not regular files: ``{kind: count}`` and a few names."""

    counts: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    examples: list[str] = dataclasses.field(default_factory=list)

    def add(self, kind: str, name: str) -> None:
        self.counts[kind] += 1
        if len(self.examples) < 3:
            self.examples.append(f"{name} ({kind})")

    def log(self, where: str) -> None:
        if self.counts:
            log.warning("%s: skipped %d member(s) that are not regular files (%s), e.g. %s", where,
                        sum(self.counts.values()), dict(self.counts), ", ".join(self.examples))


def _where(path: Path, param: str) -> str:
    return f"{param} = {path}" if param else str(path)


def safe_member_name(name: str, where: str) -> str:
    """The member's name as a safe relative POSIX path (``./`` dropped), or :class:`UnsafeArchiveError`."""
    bad = ("\\" in name or "\0" in name or name.startswith("/") or (len(name) > 1 and name[1] == ":")
           or ".." in PurePosixPath(name).parts)
    clean = str(PurePosixPath(*[p for p in PurePosixPath(name).parts if p != "."])) if not bad else ""
    if bad or clean in ("", "."):
        raise UnsafeArchiveError(f"{where}: member {name!r} has an unsafe name (absolute, '..', a drive or a "
                                 "backslash); refusing to read this archive")
    return clean


# -------------------------------------------------------------------------------------------------- tar
class _CheckedTarInfo(tarfile.TarInfo):
    """Records a damaged header: tarfile ends iteration there silently when it is not the first member."""

    @classmethod
    def fromtarfile(cls, tar):  # type: ignore[override]
        try:
            return super().fromtarfile(tar)
        except (tarfile.InvalidHeaderError, tarfile.TruncatedHeaderError) as e:
            tar.cxrpipe_bad_header = f"{type(e).__name__}: {e}"
            raise


def _tar_kind(m: tarfile.TarInfo) -> str | None:
    """None for a regular file, else what it is."""
    if m.isreg():
        return None
    for kind, test in (("symlink", m.issym), ("hardlink", m.islnk), ("device", lambda: m.ischr() or m.isblk()),
                       ("fifo", m.isfifo), ("folder", m.isdir)):
        if test():
            return kind
    return "other"


def iter_tar(path: str | Path, want: Callable[[str], bool] = lambda name: True, read: bool = True,
             param: str = "", max_bytes: int = MAX_MEMBER_BYTES) -> Iterator[tuple[str, bytes | None]]:
    """``(safe name, bytes)`` of every regular member whose name ``want`` accepts, in archive order, in one
    sequential pass (``read=False``: names only, bytes None). Non-regular members are skipped and counted."""
    path = Path(path)
    where = _where(path, param)
    skipped = Skipped()
    try:
        with tarfile.open(path, "r:*", tarinfo=_CheckedTarInfo) as tar:
            for m in tar:
                name = safe_member_name(m.name, where)
                kind = _tar_kind(m)
                if kind is not None:
                    skipped.add(kind, name)
                    continue
                if not want(name):
                    continue
                if m.size > max_bytes:
                    raise UnsafeArchiveError(f"{where}: member {name!r} declares {m.size} bytes, more than the "
                                             f"{max_bytes} any input member may hold")
                yield name, (_read_exact(tar.extractfile(m), m.size, where, name) if read else None)
            bad = getattr(tar, "cxrpipe_bad_header", None)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise UnsafeArchiveError(f"{where}: not a readable tar archive ({type(e).__name__}: {e})") from None
    if bad:
        raise UnsafeArchiveError(f"{where}: damaged after the last member read ({bad}): a member larger than "
                                 "its declared size, or a truncated archive; nothing after it can be trusted")
    skipped.log(where)


def _read_exact(f, size: int, where: str, name: str) -> bytes:
    """Exactly the declared ``size`` bytes; a member holding more or fewer is refused."""
    data = f.read(size + 1) if f is not None else b""
    if len(data) != size:
        raise UnsafeArchiveError(f"{where}: member {name!r} holds {'more' if len(data) > size else 'fewer'} "
                                 f"bytes than its declared {size}: a damaged or crafted archive")
    return data


# -------------------------------------------------------------------------------------------------- zip
class SafeZip:
    """A zip file read member by member: names checked on open, links skipped and counted, every read
    bounded by the member's declared size (a member that inflates past it, or fails its CRC, is refused)."""

    def __init__(self, path: str | Path, param: str = "", max_bytes: int = MAX_MEMBER_BYTES):
        self.path = Path(path)
        self.where = _where(self.path, param)
        self.max_bytes = max_bytes
        self.skipped = Skipped()
        self._zip = zipfile.ZipFile(self.path)  # BadZipFile for the caller: it knows the expected layout
        self.infos: dict[str, zipfile.ZipInfo] = {}
        for info in self._zip.infolist():
            name = safe_member_name(info.filename.rstrip("/") if info.is_dir() else info.filename, self.where)
            kind = stat.S_IFMT(info.external_attr >> 16)  # unix file type bits; 0 when the zip records none
            if info.is_dir():
                self.skipped.add("folder", name)
            elif kind and kind != stat.S_IFREG:
                self.skipped.add("symlink" if kind == stat.S_IFLNK else "special file", name)
            else:
                self.infos[name] = info
        self.skipped.log(self.where)

    def names(self) -> list[str]:
        """The regular members' safe names, in archive order."""
        return list(self.infos)

    def read(self, name: str) -> bytes:
        info = self.infos[name]
        if info.file_size > self.max_bytes:
            raise UnsafeArchiveError(f"{self.where}: member {name!r} declares {info.file_size} bytes, more than "
                                     f"the {self.max_bytes} any input member may hold")
        try:
            with self._zip.open(info) as f:
                return _read_exact(f, info.file_size, self.where, name)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, RuntimeError, NotImplementedError) as e:
            raise UnsafeArchiveError(f"{self.where}: member {name!r} is damaged or holds more than its declared "
                                     f"{info.file_size} bytes ({type(e).__name__}: {e})") from None

    def close(self) -> None:
        self._zip.close()

    def __enter__(self) -> "SafeZip":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ----------------------------------------------------------------------------------------------- extract
def safe_target(dest: Path, name: str) -> Path:
    """``dest / name`` after checking that it resolves inside ``dest`` and that no folder on the way is a link
    (a link left there could point anywhere)."""
    root = dest.resolve()
    target = root / name
    for parent in list(target.parents)[: len(PurePosixPath(name).parts) - 1]:
        if parent.is_symlink():
            raise UnsafeArchiveError(f"{dest}: {parent} is a link; refusing to extract {name!r} through it")
    if target.is_symlink() or not str(target.resolve()).startswith(str(root) + os.sep):
        raise UnsafeArchiveError(f"{dest}: member {name!r} would be written outside the folder; refusing")
    return target


def _write_member(dest: Path, name: str, data: bytes) -> None:
    target = safe_target(dest, name)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, target)


def extract_tar_members(path: str | Path, names: set[str], dest: str | Path, param: str = "") -> int:
    """Extract the regular members named in ``names`` (safe names, as :func:`iter_tar` gives them) into
    ``dest``; returns how many were written."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    n = 0
    for name, data in iter_tar(path, lambda m: m in names, param=param):
        _write_member(dest, name, data or b"")
        n += 1
    return n


def extract_zip(path: str | Path, dest: str | Path, param: str = "") -> int:
    """Extract every regular member of a zip file into ``dest`` (links and special files skipped, counted)."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    with SafeZip(path, param) as z:
        for name in z.names():
            _write_member(dest, name, z.read(name))
        return len(z.names())
