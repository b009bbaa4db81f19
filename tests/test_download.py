"""The download stage: bbc-news, local csv/jsonl and verified, safely unpacked URLs."""

from __future__ import annotations

import csv
import functools
import gzip
import hashlib
import io
import json
import socket
import tarfile
import tempfile
import threading
import zipfile
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.core.errors import UserError
from pipeline.core.files import sha256_file
from pipeline.core.params import parse
from pipeline.data.sources import archive as archives
from pipeline.stages import download

CORPUS = Path("data/raw/corpus.jsonl")
MANIFEST = Path("data/raw/manifest.json")
ROWS = [
    ("Zürich\n“quoted” text, with a comma", "news"),
    ("Rocket 🚀 launch\r\nsecond line", "science"),
    ("  surrounding whitespace is kept\n", "news"),
]


def _section(**overrides) -> dict:
    section = {
        "source": "bbc-news",
        "path": None,
        "url": None,
        "sha256": None,
        "text_field": "text",
        "label_field": "label",
    }
    return {**section, **overrides}


def _run(**overrides) -> None:
    download.run(parse({"download": _section(**overrides)}, ("download",)))


def _cli(**overrides):
    Path("params.yaml").write_text(yaml.safe_dump({"download": _section(**overrides)}))
    return CliRunner().invoke(app, ["download", "--params", "params.yaml"])


def _corpus() -> list[dict]:
    return [json.loads(line) for line in CORPUS.read_text(encoding="utf-8").split("\n")[:-1]]


def _csv_bytes(rows, header=("text", "label"), encoding="utf-8") -> bytes:
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue().encode(encoding)


def _jsonl_bytes(rows) -> bytes:
    return "".join(json.dumps({"text": t, "label": line}) + "\n" for t, line in rows).encode()


def _zip(members: dict) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)  # writestr keeps the name verbatim, "../" and "/" included
    return buffer.getvalue()


def _symlink(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = 0o120777 << 16  # S_IFLNK: how `zip --symlinks` records a link
    return info


def _tar_gz(members: dict[str, bytes], links: dict[str, tuple[bytes, str]] = None) -> bytes:
    if links is None:
        links = {}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, (kind, target) in links.items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, target
            tar.addfile(info)
    return buffer.getvalue()


@pytest.fixture
def work(tmp_path, monkeypatch) -> Path:
    """Run in tmp_path/work with the system temp folder moved to tmp_path/systmp."""
    (tmp_path / "work").mkdir()
    (tmp_path / "systmp").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    # So that an archive escaping its temp folder would land inside tmp_path, where we look.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "systmp"))
    return tmp_path


@pytest.fixture
def serve(tmp_path):
    """serve(name, data) -> (url, sha256): a file served over HTTP on 127.0.0.1."""
    root = tmp_path / "served"
    root.mkdir()

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()

    def publish(name: str, data: bytes) -> tuple[str, str]:
        (root / name).write_bytes(data)
        return f"http://127.0.0.1:{server.server_port}/{name}", hashlib.sha256(data).hexdigest()

    yield publish
    server.shutdown()
    server.server_close()
    thread.join()


def test_bbc_news_has_2225_articles_in_five_sorted_classes(work):
    _run()
    docs, manifest = _corpus(), json.loads(MANIFEST.read_text())
    classes = ["business", "entertainment", "politics", "sports", "tech"]
    assert len(docs) == manifest["documents"] == 2225
    assert all(list(d) == ["text", "label"] for d in docs)
    assert manifest["labels"] == classes
    assert list(manifest["class_counts"]) == classes
    assert manifest["class_counts"] == {
        "business": 510,
        "entertainment": 386,
        "politics": 417,
        "sports": 511,
        "tech": 401,
    }
    assert manifest["corpus_sha256"] == sha256_file(CORPUS)
    assert manifest["decoded_cp1252"] == 1 and manifest["skipped_rows"] == 0
    # sports/199.txt, the cp1252 file: its pound sign must survive as "£".
    assert any(d["text"].startswith("Chelsea sack Mutu") and "£15.8m" in d["text"] for d in docs)
    assert all(d["text"] == d["text"].strip() and d["text"] for d in docs)
    assert [d["label"] for d in docs] == sorted(d["label"] for d in docs)


def test_bbc_news_is_byte_identical_across_runs(work, monkeypatch):
    _run()
    first = CORPUS.read_bytes(), MANIFEST.read_bytes()
    (work / "again").mkdir()
    monkeypatch.chdir(work / "again")
    _run()
    assert (CORPUS.read_bytes(), MANIFEST.read_bytes()) == first


def test_csv_keeps_multiline_unicode_fields_exactly(work):
    # utf-8-sig writes the BOM that Excel puts first; the header must still read as "text".
    data = _csv_bytes(ROWS + [("spaced label", " news ")], encoding="utf-8-sig")
    Path("in.csv").write_bytes(data)
    _run(source="csv", path="in.csv")
    assert [(d["text"], d["label"]) for d in _corpus()] == ROWS + [("spaced label", "news")]
    manifest = json.loads(MANIFEST.read_text())
    assert manifest["source"] == "csv" and manifest["path"] == "in.csv"
    assert manifest["class_counts"] == {"news": 3, "science": 1}
    assert "Zürich" in CORPUS.read_text(encoding="utf-8")  # ensure_ascii=False


def test_csv_rows_with_empty_text_or_label_are_skipped_and_counted(work):
    rows = [("kept", "a"), ("", "a"), ("no label", "  "), ("   \n ", "b"), ("kept too", 7)]
    data = _csv_bytes(rows)
    Path("in.csv").write_bytes(data + b"short row\r\n")
    _run(source="csv", path="in.csv")
    assert [(d["text"], d["label"]) for d in _corpus()] == [("kept", "a"), ("kept too", "7")]
    assert json.loads(MANIFEST.read_text())["skipped_rows"] == 4


def test_csv_missing_column_names_the_field_and_the_columns(work):
    Path("in.csv").write_bytes(_csv_bytes(ROWS, header=("body", "label")))
    expected = r"no column 'text' \(download.text_field\); columns found: 'body', 'label'"
    with pytest.raises(UserError, match=expected):
        _run(source="csv", path="in.csv")
    assert not Path("data").exists()


@pytest.mark.parametrize(
    "name, data, message",
    [
        ("in.csv", "text,label\ncafé,a\n".encode("latin-1"), "not UTF-8"),
        ("missing.csv", None, "file not found"),
        ("in.csv", _csv_bytes([("", "a"), ("b", "")]), "no usable documents"),
        ("in.jsonl", b'{"text": "a", "label": "x"}\n{"text": "b",\n', "line 2: not valid JSON"),
        ("in.jsonl", b'["a", "x"]\n', "line 1: expected a JSON object"),
    ],
)
def test_unusable_local_files_are_user_errors(work, name, data, message):
    if data is not None:
        Path(name).write_bytes(data)
    with pytest.raises(UserError, match=message):
        _run(source=name.split(".")[-1], path=name)
    assert not Path("data").exists()


def test_jsonl_converts_labels_to_strings_and_sorts_the_manifest(work):
    lines = [
        {"text": "line\u2028separator", "label": "b", "extra": 0},
        {"text": "no label"},
        {},
        {"text": "Zürich 🚀", "label": 1},
    ]
    Path("in.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n\n", encoding="utf-8")
    _run(source="jsonl", path="in.jsonl")
    docs = [(d["text"], d["label"]) for d in _corpus()]
    assert docs == [("line\u2028separator", "b"), ("Zürich 🚀", "1")]  # file order kept
    # Readers that split with str.splitlines() must still see one document per line.
    assert len(CORPUS.read_text(encoding="utf-8").splitlines()) == 2
    manifest = json.loads(MANIFEST.read_text())
    assert manifest["skipped_rows"] == 2 and manifest["labels"] == ["1", "b"]
    assert list(manifest["class_counts"].items()) == [("1", 1), ("b", 1)]


@pytest.mark.parametrize(
    "name, payload",
    [
        ("corpus.csv", lambda: _csv_bytes(ROWS)),
        ("corpus.jsonl.gz", lambda: gzip.compress(_jsonl_bytes(ROWS), mtime=0)),
        (
            "corpus.zip",
            lambda: _zip({"__MACOSX/._data.csv": b"junk", "README.txt": b"hi", "dir/data.csv": _csv_bytes(ROWS)}),
        ),
        ("corpus.tar.gz", lambda: _tar_gz({"dir/data.jsonl": _jsonl_bytes(ROWS), "LICENSE": b"x"})),
    ],
)
def test_url_with_matching_sha256_is_unpacked_and_read(work, serve, name, payload):
    url, sha = serve(name, payload())
    _run(source="url", url=url, sha256=sha.upper())
    assert [(d["text"], d["label"]) for d in _corpus()] == ROWS
    manifest = json.loads(MANIFEST.read_text())
    assert (manifest["source"], manifest["url"], manifest["url_sha256"]) == ("url", url, sha)
    assert manifest["corpus_sha256"] == sha256_file(CORPUS)
    assert list((work / "systmp").iterdir()) == []  # the download's temp folder is gone


def test_url_sha256_mismatch_exits_2_and_leaves_data_raw_untouched(work, serve):
    url, sha = serve("corpus.csv", _csv_bytes(ROWS))
    Path("data/raw").mkdir(parents=True)
    CORPUS.write_bytes(b"old corpus\n")
    MANIFEST.write_bytes(b"old manifest\n")
    wrong = "0" * 64
    result = _cli(source="url", url=url, sha256=wrong)
    assert result.exit_code == 2
    assert result.stderr == f"error: sha256 mismatch: expected {wrong}, got {sha} ({url})\n"
    assert sorted(p.name for p in Path("data/raw").iterdir()) == ["corpus.jsonl", "manifest.json"]
    assert (CORPUS.read_bytes(), MANIFEST.read_bytes()) == (b"old corpus\n", b"old manifest\n")


GOOD = _csv_bytes(ROWS)
SYMLINK, HARDLINK = (tarfile.SYMTYPE, "/etc/passwd"), (tarfile.LNKTYPE, "data.csv")


@pytest.mark.parametrize(
    "name, archive",
    [
        ("zip-dotdot.zip", lambda tmp: _zip({"data.csv": GOOD, "../evil.csv": GOOD})),
        ("zip-absolute.zip", lambda tmp: _zip({"data.csv": GOOD, f"{tmp}/evil.csv": GOOD})),
        ("zip-symlink.zip", lambda tmp: _zip({"data.csv": GOOD, _symlink("evil.csv"): b"/etc"})),
        ("tar-dotdot.tar.gz", lambda tmp: _tar_gz({"data.csv": GOOD, "a/../../evil.csv": GOOD})),
        ("tar-symlink.tar.gz", lambda tmp: _tar_gz({"data.csv": GOOD}, {"evil.csv": SYMLINK})),
        ("tar-hardlink.tar.gz", lambda tmp: _tar_gz({"data.csv": GOOD}, {"evil.csv": HARDLINK})),
    ],
)
def test_malicious_archives_are_refused(work, serve, name, archive):
    url, sha = serve(name, archive(work))
    result = _cli(source="url", url=url, sha256=sha)
    assert result.exit_code == 2, result.output
    assert "refused, archive member" in result.stderr and "evil.csv" in result.stderr
    assert not Path("data").exists()
    assert [p for p in work.rglob("evil.csv")] == []
    assert list((work / "systmp").iterdir()) == []


def test_archive_needs_exactly_one_data_file(work, serve):
    url, sha = serve("two.zip", _zip({"a.csv": GOOD, "b.jsonl": _jsonl_bytes(ROWS)}))
    with pytest.raises(UserError, match=r"exactly one .* \(found: a.csv, b.jsonl\)"):
        _run(source="url", url=url, sha256=sha)
    url, sha = serve("none.tar.gz", _tar_gz({"README.txt": b"no data"}))
    with pytest.raises(UserError, match=r"exactly one .* \(found: none\)"):
        _run(source="url", url=url, sha256=sha)


@pytest.mark.parametrize(
    "name, pack",
    [
        ("big.csv.gz", lambda data: gzip.compress(data, mtime=0)),
        ("big.zip", lambda data: _zip({"big.csv": data})),
        ("big.tar.gz", lambda data: _tar_gz({"big.csv": data})),
    ],
)
def test_uncompressed_size_cap_is_enforced(work, serve, monkeypatch, name, pack):
    monkeypatch.setattr(archives, "MAX_UNCOMPRESSED_BYTES", 20_000)
    archive = pack(_csv_bytes([("same text again", "a")] * 10_000))
    assert len(archive) < 20_000  # small on the wire: only the unpacked size can trip the cap
    url, sha = serve(name, archive)
    with pytest.raises(UserError, match="more than 20000 bytes; refused"):
        _run(source="url", url=url, sha256=sha)
    assert not Path("data").exists()


def test_http_404_and_refused_connection_exit_2_with_one_line(work, serve):
    url, _ = serve("present.csv", GOOD)
    result = _cli(source="url", url=url.replace("present", "absent"), sha256="0" * 64)
    assert result.exit_code == 2
    assert "download failed: HTTP 404" in result.stderr and result.stderr.count("\n") == 1
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = _cli(source="url", url=f"http://127.0.0.1:{port}/x.csv", sha256="0" * 64)
    assert result.exit_code == 2
    assert "download failed" in result.stderr and result.stderr.count("\n") == 1
    assert not Path("data").exists()


def test_url_with_unsupported_suffix_is_refused_before_downloading(work):
    with pytest.raises(UserError, match=r"must end in \.csv"):
        _run(source="url", url="http://127.0.0.1:9/corpus.xlsx", sha256="0" * 64)
