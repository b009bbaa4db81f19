"""Unpacking a downloaded .gz, .zip or .tar.gz with bounded disk and memory.

An archive must hold exactly one .csv or .jsonl file. It is copied to a fixed name, so a
member's name never becomes a path; members whose names point outside the archive, links and
devices are refused. Every decompressed byte counts towards MAX_UNCOMPRESSED_BYTES as it is
produced (sizes in headers can lie), and what a format reads into memory before any data, a
zip's central directory or a tar's extended headers, is capped too. Compression methods that
can expand a few kilobytes into gigabytes in one step (bzip2, lzma inside a zip) are refused.
"""

from __future__ import annotations

import gzip
import shutil
import stat
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath, PureWindowsPath

from pipeline.core.errors import UserError
from pipeline.data.sources.table import Format

# A download, or anything unpacked from it, may occupy at most this much disk.
MAX_UNCOMPRESSED_BYTES = 1 << 30
# What a format holds in memory besides the data: real archives use a tiny share of these.
MAX_MEMBERS = 10_000  # a zip's entries or a tar's members (tarfile keeps one object for each)
MAX_ZIP_DIRECTORY_BYTES = 1 << 24
MAX_TAR_HEADER_BYTES = 1 << 20
CHUNK = 1 << 16
_NOT_A_FILE = "is a link or device, not a regular file"


class Capped:
    """A reader that refuses to yield more than MAX_UNCOMPRESSED_BYTES in total."""

    def __init__(self, read: Callable[[int], bytes], what: str) -> None:
        self._read, self.what, self.total = read, what, 0

    def read(self, size: int = -1) -> bytes:
        # Never ask for more than the cap leaves (plus one byte, to notice going past it).
        left = MAX_UNCOMPRESSED_BYTES - self.total + 1
        chunk = self._read(left if size < 0 else min(size, left))
        self.total += len(chunk)
        if self.total > MAX_UNCOMPRESSED_BYTES:
            raise UserError(f"{self.what}: more than {MAX_UNCOMPRESSED_BYTES} bytes; refused")
        return chunk


def gunzip(archive: Path, dest: Path, what: str) -> None:
    with gzip.open(archive) as src, open(dest, "wb") as dst:
        shutil.copyfileobj(Capped(src.read, what), dst, CHUNK)


def is_data(name: str) -> bool:
    # macOS zips carry resource-fork copies (__MACOSX/, ._name) that look like data files.
    path = PurePosixPath(name)
    return path.suffix.lower() in (".csv", ".jsonl") and "__MACOSX" not in path.parts and not path.name.startswith("._")


def _check_name(name: str, what: str) -> None:
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if name.startswith(("/", "\\")) or PureWindowsPath(name).drive or ".." in parts:
        raise UserError(f"{what}: refused, archive member {name!r} points outside the archive")


def _one_data_file(names: list[str], what: str) -> tuple[str, Format]:
    if len(names) != 1:
        found = ", ".join(names) or "none"
        raise UserError(f"{what}: an archive must hold exactly one .csv or .jsonl file (found: {found})")
    return names[0], PurePosixPath(names[0]).suffix.lower()[1:]  # type: ignore[return-value]


def unzip(archive: Path, dest: Path, what: str) -> tuple[str, Format]:
    # zipfile reads the whole central directory, and makes an object per entry, before
    # anything else: its announced size and entry count are checked first.
    with open(archive, "rb") as fh:
        end = zipfile._EndRecData(fh)  # type: ignore[attr-defined]  # the end record, zip64 sizes included (stdlib private)
    if end is None:
        raise zipfile.BadZipFile("no end of central directory record")
    entries, directory = end[zipfile._ECD_ENTRIES_TOTAL], end[zipfile._ECD_SIZE]  # type: ignore[attr-defined]
    if entries > MAX_MEMBERS or directory > MAX_ZIP_DIRECTORY_BYTES:
        raise UserError(f"{what}: a zip of {entries} entries ({directory}-byte directory); refused")
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        for info in infos:
            _check_name(info.filename, what)
            # The file type sits in the high bits of external_attr, and is 0 when not recorded.
            if stat.S_IFMT(info.external_attr >> 16) not in (0, stat.S_IFREG, stat.S_IFDIR):
                raise UserError(f"{what}: refused, archive member {info.filename!r} {_NOT_A_FILE}")
        if sum(info.file_size for info in infos) > MAX_UNCOMPRESSED_BYTES:
            raise UserError(f"{what}: unpacks to more than {MAX_UNCOMPRESSED_BYTES} bytes; refused")
        names = [i.filename for i in infos if not i.is_dir() and is_data(i.filename)]
        member, fmt = _one_data_file(names, what)
        if zf.getinfo(member).compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            # zipfile inflates bzip2 and lzma without an output limit per step.
            raise UserError(f"{what}: {member!r} is not stored or deflated; refused")
        # Sizes in the headers can lie, so the bytes are counted again while they are read.
        with zf.open(member) as src, open(dest, "wb") as dst:
            shutil.copyfileobj(Capped(src.read, what), dst, CHUNK)
    return member, fmt


class _Refused(Exception):
    pass


class _TarInfo(tarfile.TarInfo):
    """tarfile's member header, refusing the kinds that make tarfile read unbounded metadata.

    tarfile reads an extended (pax) or long-name header whole into memory, and builds a list
    from a sparse member's map; a crafted archive can make either gigabytes long. The hooks
    below are tarfile's own per-kind steps (private, stable across Python 3 releases).
    """

    def _proc_member(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        headers = (
            tarfile.XHDTYPE,
            tarfile.XGLTYPE,
            tarfile.SOLARIS_XHDTYPE,
            tarfile.GNUTYPE_LONGNAME,
            tarfile.GNUTYPE_LONGLINK,
        )
        if self.type in headers and self.size > MAX_TAR_HEADER_BYTES:
            raise _Refused(f"a {self.size}-byte extended header")
        if self.type == tarfile.GNUTYPE_SPARSE:
            raise _Refused(f"sparse member {self.name!r}")
        return super()._proc_member(tarfile_)  # type: ignore[misc]  # tarfile's private hook

    def _proc_gnusparse_00(self, *args: object) -> None:
        raise _Refused("a sparse member")

    _proc_gnusparse_01 = _proc_gnusparse_10 = _proc_gnusparse_00


def untar(archive: Path, dest: Path, what: str) -> tuple[str, Format]:
    # Stream mode over a capped reader: every decompressed byte, headers and skipped members
    # included, counts towards the cap, so a tar bomb stops early instead of filling the disk.
    found: list[str] = []
    try:
        with (
            gzip.open(archive) as raw,
            tarfile.open(fileobj=Capped(raw.read, what), mode="r|", tarinfo=_TarInfo) as tar,  # type: ignore[call-overload]
        ):
            for count, member in enumerate(tar, start=1):
                if count > MAX_MEMBERS:
                    raise UserError(f"{what}: more than {MAX_MEMBERS} archive members; refused")
                _check_name(member.name, what)
                if member.isdir():
                    continue
                if not member.isfile():
                    name = member.name
                    raise UserError(f"{what}: refused, archive member {name!r} {_NOT_A_FILE}")
                if is_data(member.name):
                    found.append(member.name)
                    if len(found) > 1:
                        break
                    with tar.extractfile(member) as src, open(dest, "wb") as dst:
                        shutil.copyfileobj(src, dst, CHUNK)
    except _Refused as exc:
        raise UserError(f"{what}: refused, the archive holds {exc}") from None
    except RecursionError:  # tarfile follows a chain of extended headers by recursion
        raise UserError(f"{what}: refused, the archive chains too many extended headers") from None
    return _one_data_file(found, what)
