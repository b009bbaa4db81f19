"""download against hostile inputs: archive bombs, endless lines, deep JSON, trickling servers.

Each case asserts what a user relies on: exit code 2, one line naming the problem, and every
file of the previous data/raw byte-identical afterwards. The limits are lowered here so that
small inputs trip them; benchmarks/download_memory.py runs the real sizes.
"""

from __future__ import annotations

import gzip
import io as stdio
import tarfile
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from test_download import GOOD, ROWS, _cli, _csv_bytes, _jsonl_bytes, serve, work  # noqa: F401

from pipeline.core import files
from pipeline.data.sources import archive, url


def _snapshot() -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(Path(".").rglob("*")) if p.is_file() and p.name != "params.yaml"}


@pytest.fixture
def previous(work, serve):
    """A good data/raw from an earlier run; returns a check that it is still byte-identical."""
    link, sha = serve("good.csv", GOOD)
    assert _cli(source="url", url=link, sha256=sha).exit_code == 0
    before = _snapshot()
    assert "data/raw/corpus.jsonl" in before
    return lambda: _snapshot() == before


def _refused(result, *expected: str) -> None:
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: "), result.stderr
    assert len(result.stderr) < 300  # the line never echoes what made the input huge
    for text in expected:
        assert text in result.stderr, result.stderr
    assert "Traceback" not in result.output


def _tar_gz(infos: list[tuple[tarfile.TarInfo, bytes]], fmt=tarfile.PAX_FORMAT) -> bytes:
    buffer = stdio.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", format=fmt) as tar:
        for info, data in infos:
            info.size = len(data)
            tar.addfile(info, stdio.BytesIO(data))
    return buffer.getvalue()


def _member(name: str, **attrs) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    for key, value in attrs.items():
        setattr(info, key, value)
    return info


def _chained_pax_headers(n: int) -> bytes:
    """n extended headers in a row before one member: tarfile follows them by recursion."""
    record = b"16 comment=abcd\n"
    raw = b""
    for _ in range(n):
        header = _member("pax", type=tarfile.XHDTYPE, size=len(record))
        raw += header.tobuf(format=tarfile.USTAR_FORMAT) + record.ljust(512, b"\0")
    data = _member("data.csv", size=len(GOOD)).tobuf(format=tarfile.USTAR_FORMAT)
    raw += data + GOOD.ljust(512 * (len(GOOD) // 512 + 1), b"\0") + b"\0" * 1024
    return gzip.compress(raw, mtime=0)


def _zip(members: dict[str, bytes], method=zipfile.ZIP_DEFLATED) -> bytes:
    buffer = stdio.BytesIO()
    with zipfile.ZipFile(buffer, "w", method) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


SPARSE_PAX = {
    "GNU.sparse.major": "1",
    "GNU.sparse.minor": "0",
    "GNU.sparse.name": "data.csv",
    "GNU.sparse.realsize": "100",
}

ARCHIVES = {
    "huge pax header": (
        "x.tar.gz",
        lambda: _tar_gz([(_member("data.csv", pax_headers={"comment": "x" * 5000}), GOOD)]),
        "byte extended header",
    ),
    "huge GNU long name": (
        "x.tar.gz",
        lambda: _tar_gz([(_member("d/" + "n" * 3000 + ".csv"), GOOD)], fmt=tarfile.GNU_FORMAT),
        "extended header",
    ),
    "GNU sparse member": (
        "x.tar.gz",
        lambda: _tar_gz([(_member("data.csv", type=tarfile.GNUTYPE_SPARSE), GOOD)], fmt=tarfile.GNU_FORMAT),
        "sparse member",
    ),
    "pax sparse member": (
        "x.tar.gz",
        lambda: _tar_gz([(_member("GNUSparseFile.0/data.csv", pax_headers=SPARSE_PAX), b"3\n0\n")]),
        "sparse",
    ),
    "chained pax headers": ("x.tar.gz", lambda: _chained_pax_headers(3000), "too many extended"),
    "bzip2 zip member": ("x.zip", lambda: _zip({"data.csv": GOOD}, zipfile.ZIP_BZIP2), "not stored or deflated"),
    "lzma zip member": ("x.zip", lambda: _zip({"data.csv": GOOD}, zipfile.ZIP_LZMA), "not stored or deflated"),
    "zip of many entries": (
        "x.zip",
        lambda: _zip({"data.csv": GOOD, **{f"f{i}.txt": b"" for i in range(60)}}),
        "a zip of 61 entries",
    ),
    "tar of many members": (
        "x.tar.gz",
        lambda: _tar_gz([(_member(f"f{i}.txt"), b"") for i in range(60)] + [(_member("data.csv"), GOOD)]),
        "more than 50 archive members",
    ),
    "a header of one huge name": (
        "x.csv",
        lambda: b"\0" * 40_000 + b"\n" + GOOD,
        "no column 'text' (download.text_field); columns found: '",
    ),
    "endless line in a .csv.gz": (
        "x.csv.gz",
        lambda: gzip.compress(b"text,label\n" + b"\0" * 200_000, mtime=0),
        "line 2: longer than 50000 characters",
    ),
    "endless quoted field": (
        "x.csv.gz",
        lambda: gzip.compress(b'text,label\n"' + b"word\n" * 20_000, mtime=0),
        "field larger than field limit",
    ),
    "endless JSON line": (
        "x.jsonl.gz",
        lambda: gzip.compress(b"[" * 200_000, mtime=0),
        "line 1: longer than 50000 characters",
    ),
    "deeply nested JSON": (
        "x.jsonl",
        lambda: (
            b'{"text": "'
            + b"[" * 40_000
            + b'", "label": "a"}\n'
            + b'{"text": '
            + b"[" * 20_000
            + b"]" * 20_000
            + b"}\n"
        ),
        "line 2: JSON nested too deeply",
    ),
}


@pytest.mark.parametrize("case", ARCHIVES, ids=list(ARCHIVES))
def test_crafted_inputs_are_refused_in_one_line(previous, serve, monkeypatch, case):
    monkeypatch.setattr(archive, "MAX_TAR_HEADER_BYTES", 2048)
    monkeypatch.setattr(archive, "MAX_MEMBERS", 50)
    monkeypatch.setattr(files, "MAX_LINE_CHARS", 50_000)
    name, make, expected = ARCHIVES[case]
    link, sha = serve(name, make())
    _refused(_cli(source="url", url=link, sha256=sha), link, expected)
    assert previous()


def test_a_zip_with_a_huge_central_directory_is_refused_before_reading_it(previous, serve, monkeypatch):
    monkeypatch.setattr(archive, "MAX_ZIP_DIRECTORY_BYTES", 1000)
    link, sha = serve("x.zip", _zip({f"{'d' * 200}/{i}.txt": b"" for i in range(10)}))
    _refused(_cli(source="url", url=link, sha256=sha), "directory); refused")
    assert previous()


class _Trickle(BaseHTTPRequestHandler):
    """Sends one byte at a time, `gap` seconds apart: headers too when `headers_too`."""

    gap, headers_too, stop = 0.05, False, threading.Event()

    def do_GET(self) -> None:
        head = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n"
        if not self.headers_too:
            self.wfile.write(head)
            head = b""
        try:
            for byte in head + b"x" * 100_000:
                if self.stop.wait(self.gap):
                    return
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
        except OSError:  # the client gave up: that is the point
            pass

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def trickle():
    _Trickle.stop = threading.Event()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Trickle)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/slow.csv"
    _Trickle.stop.set()
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.mark.parametrize("headers_too", [False, True], ids=["body", "headers"])
def test_a_trickling_server_meets_the_total_deadline(previous, trickle, monkeypatch, headers_too):
    monkeypatch.setattr(_Trickle, "headers_too", headers_too)
    monkeypatch.setattr(url, "TIMEOUT_S", 5.0)  # every single read is far quicker than this
    monkeypatch.setattr(url, "DEADLINE_S", 1.0)
    monkeypatch.setattr(url, "RATE_GRACE_S", 100.0)
    start = time.monotonic()
    _refused(_cli(source="url", url=trickle, sha256="0" * 64), "not finished within 1 s", trickle)
    # The message names the deadline; the clock only guards against a download that never ends
    # (the server trickles forever), generously: the machine may be busy.
    assert time.monotonic() - start < 30
    assert previous()


def test_a_trickling_server_is_dropped_below_the_minimum_rate(previous, trickle, monkeypatch):
    monkeypatch.setattr(url, "RATE_GRACE_S", 0.5)
    monkeypatch.setattr(url, "MIN_BYTES_PER_S", 1000)
    start = time.monotonic()
    _refused(_cli(source="url", url=trickle, sha256="0" * 64), "below the minimum of 1000 bytes/s")
    assert time.monotonic() - start < 30  # a guard against a download that never ends, not a timing
    assert previous()


def test_a_fast_download_passes_the_rate_checks(work, serve, monkeypatch):
    monkeypatch.setattr(url, "RATE_GRACE_S", 0.0)
    monkeypatch.setattr(url, "MIN_BYTES_PER_S", 1000)
    link, sha = serve("corpus.jsonl", _jsonl_bytes(ROWS))
    assert _cli(source="url", url=link, sha256=sha).exit_code == 0


def test_an_archive_within_the_limits_still_unpacks(work, serve, monkeypatch):
    monkeypatch.setattr(archive, "MAX_TAR_HEADER_BYTES", 2048)
    data = _csv_bytes(ROWS)
    link, sha = serve("ok.tar.gz", _tar_gz([(_member("data.csv", pax_headers={"comment": "é"}), data)]))
    result = _cli(source="url", url=link, sha256=sha)
    assert result.exit_code == 0, result.output


# The zip end records and the tar header budget are read with the formats' public layouts.


def test_zip64_end_records_are_read_for_the_entry_count(tmp_path):
    # Over 65,535 entries: zipfile writes zip64 end records, and the 16-bit count says 0xFFFF.
    path = tmp_path / "x.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("data.csv", GOOD)
        for i in range(70_000):
            zf.writestr(f"{i}", b"")
        zf.comment = b"a comment after the end record"
    with pytest.raises(archive.UserError, match=r"^x: a zip of 70001 entries \(\d+-byte directory\); refused$"):
        archive.unzip(path, tmp_path / "out", "x")


def test_a_zip_comment_does_not_hide_the_end_record(tmp_path):
    path = tmp_path / "x.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("data.csv", GOOD)
        zf.comment = b"PK" * 30_000
    assert archive.unzip(path, tmp_path / "out", "x") == ("data.csv", "csv")
    assert (tmp_path / "out").read_bytes() == GOOD
    (tmp_path / "bad.zip").write_bytes(b"PK" + b"\0" * 100)
    with pytest.raises(zipfile.BadZipFile):
        archive.unzip(tmp_path / "bad.zip", tmp_path / "out", "x")


def _tar_file(tmp_path, infos):
    path = tmp_path / "x.tar.gz"
    path.write_bytes(_tar_gz(infos))
    return path


def test_the_tar_header_budget_starts_after_each_members_data(tmp_path, monkeypatch):
    # A member's data, however long, is not header: the next member's small pax header passes...
    monkeypatch.setattr(archive, "MAX_TAR_HEADER_BYTES", 2048)
    big = _member("notes.txt", pax_headers={"comment": "a" * 100})
    small = _member("data.csv", pax_headers={"comment": "b" * 100})
    path = _tar_file(tmp_path, [(big, b"x" * 100_000), (small, GOOD)])
    assert archive.untar(path, tmp_path / "out", "x") == ("data.csv", "csv")
    assert (tmp_path / "out").read_bytes() == GOOD
    # ...and a large one after the same data is refused.
    huge = _member("data.csv", pax_headers={"comment": "b" * 3000})
    path = _tar_file(tmp_path, [(big, b"x" * 100_000), (huge, GOOD)])
    with pytest.raises(archive.UserError, match="over-2048-byte extended header$"):
        archive.untar(path, tmp_path / "out", "x")
