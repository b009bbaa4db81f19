"""An http(s) .csv, .jsonl, .csv.gz, .jsonl.gz, .zip, .tar.gz or .tgz file.

Streamed to a temp file and checked against `download.sha256` before anything reads it, then
unpacked (pipeline.data.sources.archive). A download must finish within DEADLINE_S and, once
RATE_GRACE_S have passed, keep up MIN_BYTES_PER_S on average: a server that trickles a byte
now and then is dropped instead of holding the stage for hours.
"""

from __future__ import annotations

import hashlib
import http.client
import signal
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from pipeline.core.errors import UserError
from pipeline.data.sources import archive
from pipeline.data.sources.table import Format

TIMEOUT_S = 60.0  # to connect, and the longest wait for any single read
DEADLINE_S = 3600.0  # the whole download, headers included
RATE_GRACE_S = 60.0
MIN_BYTES_PER_S = 16 * 1024
CHUNK = 1 << 16


def fetch(url: str, expected: str, tmp: Path) -> tuple[Path, Format, dict]:
    """Download and verify `url`, then unpack it; return the data file, its format and origin."""
    # params.py already insists on http(s); checked again because urllib also opens file:// URLs.
    if urlsplit(url).scheme not in ("http", "https"):
        raise UserError(f"{url}: download.url must be an http:// or https:// URL")
    kind, fmt = _kind(url)
    fetched = tmp / "download"
    digest = _stream(url, fetched)
    if digest != expected:
        raise UserError(f"sha256 mismatch: expected {expected}, got {digest} ({url})")
    origin = {"source": "url", "url": url, "url_sha256": digest}
    if kind == "plain":
        return fetched, fmt, origin  # type: ignore[return-value]
    # Whatever is unpacked goes to a fixed name: an archive's member names never become paths.
    data = tmp / "data"
    try:
        if kind == "gzip":
            archive.gunzip(fetched, data, url)
            return data, fmt, origin  # type: ignore[return-value]
        member, fmt = (archive.unzip if kind == "zip" else archive.untar)(fetched, data, url)
    except (OSError, EOFError, zlib.error, tarfile.TarError, zipfile.BadZipFile) as exc:
        raise UserError(f"{url}: not a readable {kind} archive ({exc})") from None
    return data, fmt, {**origin, "member": member}


def _kind(url: str) -> tuple[str, Format | None]:
    name = PurePosixPath(urlsplit(url).path).name.lower()
    for suffix, kind in ((".tar.gz", "tar"), (".tgz", "tar"), (".zip", "zip")):
        if name.endswith(suffix):
            return kind, None
    for fmt in ("csv", "jsonl"):
        if name.endswith(f".{fmt}.gz"):
            return "gzip", fmt
        if name.endswith(f".{fmt}"):
            return "plain", fmt
    raise UserError(f"{url}: the URL path must end in .csv, .jsonl, .csv.gz, .jsonl.gz, .zip, .tar.gz or .tgz")


def _stream(url: str, dest: Path) -> str:
    """Stream `url` into `dest` in chunks and return its sha256; network errors become one line."""
    request = urllib.request.Request(url, headers={"User-Agent": "pipeline-download"})
    digest = hashlib.sha256()
    start = time.monotonic()
    try:
        with _deadline(url), urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            # read1 returns whatever one receive brings, so the clock is checked between
            # trickled bytes too; read(n) would wait for all n of them.
            body = archive.Capped(response.read1, url)
            with open(dest, "wb") as fh:
                for chunk in iter(lambda: body.read(CHUNK), b""):
                    digest.update(chunk)
                    fh.write(chunk)
                    _check_rate(body.total, time.monotonic() - start, url)
    except urllib.error.HTTPError as exc:
        raise UserError(f"download failed: HTTP {exc.code} {exc.reason} ({url})") from None
    except urllib.error.URLError as exc:
        raise UserError(f"download failed: {exc.reason} ({url})") from None
    except (OSError, http.client.HTTPException) as exc:
        raise UserError(f"download failed: {exc or type(exc).__name__} ({url})") from None
    return digest.hexdigest()


def _check_rate(received: int, elapsed: float, url: str) -> None:
    if elapsed > DEADLINE_S:
        raise UserError(f"download failed: not finished within {DEADLINE_S:g} s ({url})")
    if elapsed > RATE_GRACE_S and received < MIN_BYTES_PER_S * elapsed:
        raise UserError(
            f"download failed: {received} bytes in {elapsed:.0f} s, below the minimum of "
            f"{MIN_BYTES_PER_S} bytes/s ({url})"
        )


class _Expired(Exception):
    pass


@contextmanager
def _deadline(url: str) -> Iterator[None]:
    """Interrupt whatever is waiting (connecting, headers, a read) once DEADLINE_S has passed."""

    def expire(signum: int, frame: object) -> None:
        raise _Expired

    try:
        previous = signal.signal(signal.SIGALRM, expire)
    except ValueError:  # not the main thread: the checks between reads still apply
        yield
        return
    signal.setitimer(signal.ITIMER_REAL, DEADLINE_S)
    try:
        yield
    except _Expired:
        raise UserError(f"download failed: not finished within {DEADLINE_S:g} s ({url})") from None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
