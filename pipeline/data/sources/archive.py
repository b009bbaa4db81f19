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
import struct
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


def _zip_directory(archive: Path) -> tuple[int, int]:
    """The entry count and central directory size a zip's end records announce (APPNOTE 4.3.14-16)."""
    with open(archive, "rb") as fh:
        fh.seek(0, 2)
        size = fh.tell()
        # The end record is 22 bytes plus a comment of at most 65,535; a zip64 locator precedes it.
        tail_start = max(0, size - (22 + 0xFFFF + 20))
        fh.seek(tail_start)
        tail = fh.read()
        at = tail.rfind(b"PK\x05\x06")
        if at < 0 or len(tail) - at < 22:
            raise zipfile.BadZipFile("no end of central directory record")
        entries, directory = struct.unpack_from("<HI", tail, at + 10)
        locator = at - 20
        if locator >= 0 and tail[locator : locator + 4] == b"PK\x06\x07":
            (offset,) = struct.unpack_from("<Q", tail, locator + 8)
            fh.seek(offset)
            record = fh.read(56)
            if len(record) < 56 or record[:4] != b"PK\x06\x06":
                raise zipfile.BadZipFile("zip64 end of central directory record not found")
            entries, directory = struct.unpack_from("<QQ", record, 32)
    return entries, directory


def unzip(archive: Path, dest: Path, what: str) -> tuple[str, Format]:
    # zipfile reads the whole central directory, and makes an object per entry, before
    # anything else: its announced size and entry count are checked first.
    entries, directory = _zip_directory(archive)
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


class _Headers:
    """The decompressed tar stream, refusing to let one member's headers grow past MAX_TAR_HEADER_BYTES.

    tarfile reads an extended (pax) or long-name header whole into memory, and builds a list
    from a sparse member's map, all while it reads the member's header; a crafted archive can
    make either gigabytes long. Before tarfile reads the next header, `ceiling` is set to where
    the current member's data ends plus that budget and the member's own header block.
    """

    def __init__(self, capped: Capped) -> None:
        self._capped, self.ceiling = capped, MAX_TAR_HEADER_BYTES + tarfile.BLOCKSIZE

    def read(self, size: int = -1) -> bytes:
        # Never past the ceiling: tarfile takes short reads, and asks again only if it needs more.
        left = self.ceiling - self._capped.total
        if left <= 0 and size != 0:
            raise _Refused(f"too many extended headers or an over-{MAX_TAR_HEADER_BYTES}-byte extended header")
        return self._capped.read(left if size < 0 else min(size, left))

    def after(self, member: tarfile.TarInfo) -> None:
        data_end = member.offset_data + -(-member.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
        self.ceiling = data_end + MAX_TAR_HEADER_BYTES + tarfile.BLOCKSIZE


class _Refused(Exception):
    pass


def untar(archive: Path, dest: Path, what: str) -> tuple[str, Format]:
    # Stream mode over a capped reader: every decompressed byte, headers and skipped members
    # included, counts towards the cap, so a tar bomb stops early instead of filling the disk.
    found: list[str] = []
    try:
        with gzip.open(archive) as raw:
            stream = _Headers(Capped(raw.read, what))
            with tarfile.open(fileobj=stream, mode="r|") as tar:  # type: ignore[call-overload]
                count = 0
                while (member := tar.next()) is not None:
                    stream.after(member)
                    count += 1
                    if count > MAX_MEMBERS:
                        raise UserError(f"{what}: more than {MAX_MEMBERS} archive members; refused")
                    if member.issparse() or "GNU.sparse.map" in member.pax_headers:
                        raise _Refused(f"sparse member {member.name!r}")
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
    except ValueError:  # tarfile parses a GNU 1.0 sparse map with int() and tuple unpacking
        raise UserError(
            f"{what}: refused, the archive holds a member header that cannot be read (a sparse map)"
        ) from None
    except RecursionError:  # tarfile follows a chain of extended headers by recursion
        raise UserError(f"{what}: refused, the archive chains too many extended headers") from None
    return _one_data_file(found, what)
