"""Peak memory of `pipeline download` on crafted archives: none may take it past 1 GB RSS.

Builds each archive in a temp folder (streamed, never whole in memory), serves it from a local
HTTP server on 127.0.0.1, and runs `pipeline download` on it as a child process, reading its wall
time and peak RSS from the kernel (os.wait4). Every case must be refused with exit code 2 and
one `error:` line. A small good corpus is run first as the reference for RSS.

    nice -n 10 python benchmarks/download_memory.py [--gb 1.0] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import functools
import gzip
import hashlib
import sys
import tarfile
import tempfile
import threading
import zipfile
from collections.abc import Callable, Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import rss
import yaml

ROOT = Path(__file__).resolve().parents[1]
LIMIT_MB = 1024
BLOCK = 1 << 20


def zeros(total: int) -> Iterator[bytes]:
    for start in range(0, total, BLOCK):
        yield b"\0" * min(BLOCK, total - start)


def repeated(unit: bytes, total: int) -> Iterator[bytes]:
    block = unit * (BLOCK // len(unit))
    for start in range(0, total, len(block)):
        yield block[: min(len(block), total - start)]


class _Chain:
    """A read()-able stream over byte blocks, for tarfile.addfile."""

    def __init__(self, blocks: Iterator[bytes]) -> None:
        self.blocks, self.buffer = blocks, b""

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self.buffer) < size:
            block = next(self.blocks, None)
            if block is None:
                break
            self.buffer += block
        size = len(self.buffer) if size < 0 else size
        out, self.buffer = self.buffer[:size], self.buffer[size:]
        return out


def gz_file(path: Path, blocks: Iterator[bytes]) -> None:
    with gzip.GzipFile(path, "wb", compresslevel=9, mtime=0) as fh:
        for block in blocks:
            fh.write(block)


Member = tuple[tarfile.TarInfo, int, Callable[[], Iterator[bytes]]]  # (header, size, content)


def tar_gz(path: Path, members: list[Member]) -> None:
    with (
        gzip.GzipFile(path, "wb", compresslevel=9, mtime=0) as raw,
        tarfile.open(fileobj=raw, mode="w|", format=tarfile.GNU_FORMAT) as tar,
    ):
        for info, size, blocks in members:
            info.size = size
            tar.addfile(info, _Chain(blocks()) if size else None)


def raw_tar_gz(path: Path, header_type: bytes, size: int) -> None:
    """A member header of `header_type` announcing `size` bytes, then those bytes (zeros)."""
    info = tarfile.TarInfo("././@LongLink" if header_type == tarfile.GNUTYPE_LONGNAME else "pax")
    info.type, info.size = header_type, size
    with gzip.GzipFile(path, "wb", compresslevel=9, mtime=0) as fh:
        fh.write(info.tobuf(format=tarfile.USTAR_FORMAT))
        for block in zeros(size + (-size % 512)):
            fh.write(block)
        fh.write(b"\0" * 1024)


def empty_members(path: Path, n: int) -> None:
    """n empty members, headers written directly (tarfile's writer would keep n objects)."""
    with gzip.GzipFile(path, "wb", compresslevel=9, mtime=0) as fh:
        for i in range(n):
            fh.write(tarfile.TarInfo(f"{i}.txt").tobuf(format=tarfile.USTAR_FORMAT))
        fh.write(b"\0" * 1024)


def zip_file(path: Path, name: str, blocks: Iterator[bytes], method=zipfile.ZIP_DEFLATED) -> None:
    with zipfile.ZipFile(path, "w", method) as zf, zf.open(name, "w", force_zip64=True) as fh:
        for block in blocks:
            fh.write(block)


def zip_of_entries(path: Path, n: int) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for i in range(n):
            zf.writestr(f"{i}.txt", b"")
        zf.writestr("data.csv", b"text,label\nhello,a\n")


def cases(size: int) -> dict[str, tuple[str, Callable[[Path], None]]]:
    """name -> (file name served, how to build it)."""
    csv_zeros = lambda: zeros(size)  # noqa: E731 - one line of NULs, no newline
    return {
        "csv.gz: one line of zeros": ("a.csv.gz", lambda p: gz_file(p, csv_zeros())),
        "tar.gz: data.csv of zeros": (
            "b.tar.gz",
            lambda p: tar_gz(p, [(tarfile.TarInfo("data.csv"), size, csv_zeros)]),
        ),
        "zip: data.csv of zeros": ("c.zip", lambda p: zip_file(p, "data.csv", csv_zeros())),
        "zip: bzip2 data.csv of zeros": ("d.zip", lambda p: zip_file(p, "data.csv", csv_zeros(), zipfile.ZIP_BZIP2)),
        "tar.gz: 1 GB pax header": ("e.tar.gz", lambda p: raw_tar_gz(p, tarfile.XHDTYPE, size)),
        "tar.gz: 1 GB GNU long name": ("f.tar.gz", lambda p: raw_tar_gz(p, tarfile.GNUTYPE_LONGNAME, size)),
        "tar.gz: 2M empty members": ("g.tar.gz", lambda p: empty_members(p, size // 512)),
        "zip: 200k entries": ("h.zip", lambda p: zip_of_entries(p, 200_000)),
        "csv.gz: one quoted field of 1 GB": (
            "i.csv.gz",
            lambda p: gz_file(p, iter([b'text,label\n"', *repeated(b"word word\n", size)])),
        ),
        "jsonl.gz: 1 GB of [": ("j.jsonl.gz", lambda p: gz_file(p, repeated(b"[", size))),
        "jsonl.gz: 1 GB line of a string": (
            "k.jsonl.gz",
            lambda p: gz_file(p, iter([b'{"text": "', *repeated(b"a", size), b'"}\n'])),
        ),
    }


def serve(root: Path) -> tuple[ThreadingHTTPServer, threading.Thread]:
    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    return server, thread


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def download(url: str, sha: str, work: Path) -> tuple[int, float, float, str]:
    """Exit code, wall seconds, peak RSS in MB and stderr of `pipeline download`."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["download"].update(source="url", url=url, sha256=sha)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return rss.pipeline("download", work, ROOT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=1.0, help="uncompressed size of each bomb")
    parser.add_argument("--only", nargs="*", help="run only the cases whose name contains these")
    args = parser.parse_args()
    size = int(args.gb * 1e9)
    chosen = {n: c for n, c in cases(size).items() if not args.only or any(word in n for word in args.only)}
    rows, failures = [], 0
    with tempfile.TemporaryDirectory(prefix="download-memory-") as tmp:
        served, work = Path(tmp) / "served", Path(tmp) / "work"
        served.mkdir()
        work.mkdir()
        server, thread = serve(served)
        try:
            base = f"http://127.0.0.1:{server.server_port}"
            (served / "good.csv").write_bytes(b"text,label\nhello there,a\ngood bye,b\n")
            code, seconds, rss, _ = download(f"{base}/good.csv", sha256(served / "good.csv"), work)
            rows.append(("good 2-row csv (reference)", 0, seconds, rss, code, "published"))
            for name, (file, build) in chosen.items():
                path = served / file
                build(path)
                code, seconds, rss, error = download(f"{base}/{file}", sha256(path), work)
                ok = code == 2 and error.startswith("error: ") and "\n" not in error
                failures += not ok or rss > LIMIT_MB
                rows.append((name, path.stat().st_size, seconds, rss, code, error.split(": ", 2)[-1][:70]))
                path.unlink()
                print(f"{name}: exit {code}, {seconds:.1f} s, {rss:.0f} MB: {error[:110]}", flush=True)
        finally:
            server.shutdown()
            server.server_close()
            thread.join()
    print(
        f"\n| archive ({args.gb:g} GB uncompressed) | size on the wire | wall s | peak RSS MB "
        "| exit | message |\n|---|---:|---:|---:|---:|---|"
    )
    for name, wire, seconds, rss, code, message in rows:
        print(f"| {name} | {wire / 1e6:,.2f} MB | {seconds:.1f} | {rss:,.0f} | {code} | {message} |")
    worst = max(r[3] for r in rows)
    print(
        f"\nhighest peak RSS: {worst:,.0f} MB (limit {LIMIT_MB} MB); "
        f"{'all refused within the limit' if not failures else f'{failures} case(s) FAILED'}"
    )
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
