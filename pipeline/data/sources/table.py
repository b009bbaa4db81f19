"""A local CSV or JSON-lines file of documents, read one row at a time.

CSV: UTF-8 (a BOM is accepted) with a header row. JSONL: one JSON object per line.
`download.text_field` / `download.label_field` name the columns; a row whose text or label is
missing or blank is skipped and counted. Texts are kept exactly; labels become strings folded by
labels.fold (NFC, zero-width characters removed, stripped), with a warning naming every label
read another way than written (a JSON number or boolean label becomes its Python spelling: 1,
1.0, True; NaN and infinities are refused).

Memory stays bounded whatever the file holds: a line or a CSV field longer than
files.MAX_LINE_CHARS is refused rather than read. A CSV row with more fields than the header (the
mark of a stray quote or an unquoted comma) is refused, and so are labels that look like text
(see pipeline.data.sources.labels).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Literal

from pipeline.core import files
from pipeline.core.errors import UserError
from pipeline.core.params import DownloadParams
from pipeline.data import csv_reader
from pipeline.data.sources import Doc, Tally, labels

Format = Literal["csv", "jsonl"]
Row = tuple[int, str | None, str | None]  # (line number, text, label); None where missing
FOLDED_SHOWN = 5  # other spellings of one label kept for the warning


def read(path: Path, fmt: Format, cfg: DownloadParams, where: str, tally: Tally) -> Iterator[Doc]:
    """(text, label) for each usable row of `path`, counting skipped rows in `tally`."""
    seen: set[str] = set()
    folded: defaultdict[str, set[str]] = defaultdict(set)  # class -> other spellings read as it
    try:
        # utf-8-sig accepts the BOM that spreadsheet programs put in front of UTF-8 CSVs;
        # newline="" lets the csv module keep line breaks inside quoted fields as they are.
        with open(path, encoding="utf-8-sig", newline="" if fmt == "csv" else None) as fh:
            rows = _csv_rows(fh, cfg, where) if fmt == "csv" else _jsonl_rows(fh, cfg, where)
            for number, text, label in rows:
                if text is None or label is None or not text.strip() or not label.strip():
                    tally.skipped_rows += 1
                    continue
                written, label = label.strip(), labels.fold(label)
                if not label:  # only zero-width characters: as blank
                    tally.skipped_rows += 1
                    continue
                if written != label and len(folded[label]) < FOLDED_SHOWN:
                    folded[label].add(written)
                if label not in seen:
                    labels.check_new(label, len(seen), f"{where}: line {number}")
                    seen.add(label)
                yield text, label
    except FileNotFoundError:
        raise UserError(f"{where}: file not found; check download.path") from None
    except UnicodeDecodeError:
        raise UserError(f"{where}: not UTF-8 text; save the file as UTF-8") from None
    except OSError as exc:
        raise UserError(f"{where}: cannot read ({exc.strerror or exc})") from None
    labels.warn_folded(folded, where)
    if not seen:
        raise UserError(
            f"{where}: no usable documents ({tally.skipped_rows} rows had an empty "
            f"{cfg.text_field!r} or {cfg.label_field!r})"
        )


def _column(header: list[str], field: str, key: str, where: str) -> int:
    if field not in header:
        found = csv_reader.describe_columns(header)
        raise UserError(f"{where}: no column {field!r} (download.{key}); columns found: {found}")
    return len(header) - 1 - header[::-1].index(field)  # the last of equal names, as DictReader


def _csv_rows(fh: IO[str], cfg: DownloadParams, where: str) -> Iterator[Row]:
    header, records = csv_reader.csv_records(files.bounded_lines(fh, where), where)
    text_at = _column(header, cfg.text_field, "text_field", where)
    label_at = _column(header, cfg.label_field, "label_field", where)
    for number, fields in records:
        if len(fields) > len(header):
            raise UserError(
                f"{where}: line {number}: {len(fields)} fields where the header has "
                f"{len(header)}; a stray quote or an unquoted comma shifts the columns there"
            )
        # A short row lacks the last columns; it is skipped like an empty one.
        yield (
            number,
            fields[text_at] if text_at < len(fields) else None,
            fields[label_at] if label_at < len(fields) else None,
        )


def _jsonl_rows(fh: IO[str], cfg: DownloadParams, where: str) -> Iterator[Row]:
    for number, row in files.jsonl_objects(files.bounded_lines(fh, where), where):
        text, label = row.get(cfg.text_field), row.get(cfg.label_field)
        if text is not None and not isinstance(text, str):
            raise UserError(f"{where}: line {number}: {cfg.text_field!r} must be a string")
        if isinstance(label, (dict, list)):
            raise UserError(f"{where}: line {number}: a label must be a string or a number")
        if isinstance(label, float) and not math.isfinite(label):
            raise UserError(f"{where}: line {number}: the label is {label}, not a class; write labels as strings")
        yield number, text, None if label is None else str(label)
