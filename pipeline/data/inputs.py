"""The texts `pipeline predict` classifies: arguments, or a file or stdin read as it goes.

A file holds one text per line, or, by its suffix, one field of each row of a .csv (header row)
or .jsonl file; stdin (`-`) holds one text per line. Text comes in as it is classified, so
memory does not grow with the input. A problem seen before the first text (no such file, no
such column, no text at all) stops the command before the model loads; a bad line further on
stops it at that line, after the texts before it were printed. That holds for bytes that are not
UTF-8 too: each line is decoded on its own, so the error names the line that holds them.
"""

from __future__ import annotations

import io as stdio
import re
import sys
from collections.abc import Iterator, Sequence
from itertools import chain
from pathlib import Path
from typing import IO

from pipeline.core import files
from pipeline.core.errors import UserError
from pipeline.data import csv_reader

STDIN = "-"
# A byte that is not UTF-8 decodes, with errors="surrogateescape", to one of these; UTF-8 text
# itself never holds them (the decoder refuses encoded surrogates), so a line with one is not UTF-8.
_UNDECODABLE = re.compile("[\udc80-\udcff]")


def checked(text: object, where: str, field: str | None) -> str:
    if text is None:
        raise UserError(f"{where}: no {field!r} field; name the text field with --text-field")
    if not isinstance(text, str):
        raise UserError(f"{where}: {field!r} must be a string, got {type(text).__name__}")
    if not text.strip():
        raise UserError(f"{where}: the text is empty; every text needs at least one word")
    return text


def from_arguments(texts: Sequence[str]) -> list[str]:
    return [checked(text, f"text {n}", None) for n, text in enumerate(texts, start=1)]


def read_texts(source: str, text_field: str | None = None) -> Iterator[str]:
    """Texts from a file, or stdin for `-`: .csv and .jsonl by suffix, else one text per line.

    Opens the input and reads up to its first text at once, so that an unusable input is
    refused before anything else happens; the rest is read while the caller iterates.
    """
    where = "stdin" if source == STDIN else source
    suffix = "" if source == STDIN else Path(source).suffix.lower()
    if text_field is not None and suffix not in (".csv", ".jsonl"):
        raise UserError(f"{where}: --text-field applies to .csv and .jsonl files only")
    try:
        raw = sys.stdin.buffer if source == STDIN else open(source, "rb")
    except FileNotFoundError:
        raise UserError(f"{where}: file not found") from None
    except IsADirectoryError:
        raise UserError(f"{where}: is a folder; --file takes a file") from None
    except OSError as exc:
        raise UserError(f"{where}: cannot read ({exc.strerror or exc})") from None
    # utf-8-sig accepts the BOM that spreadsheet programs write. Lines end at "\n" only: the
    # csv module finds its own record ends, and str.splitlines would also break at U+2028.
    fh = stdio.TextIOWrapper(
        raw, encoding="utf-8-sig", errors="surrogateescape", newline="" if suffix == ".csv" else "\n"
    )
    texts = _texts(fh, suffix, where, text_field or "text", close=source != STDIN)
    first = next(texts, None)
    if first is None:
        raise UserError(f"{where}: holds no texts to classify")
    return chain([first], texts)


def _utf8_lines(fh: IO[str], where: str) -> Iterator[str]:
    """files.bounded_lines of a stream decoded with errors="surrogateescape", each checked to be UTF-8."""
    for number, line in enumerate(files.bounded_lines(fh, where), start=1):
        if _UNDECODABLE.search(line):
            raise UserError(f"{where}: line {number}: not UTF-8; save the file as UTF-8")
        yield line


def _texts(fh: IO[str], suffix: str, where: str, field: str, close: bool) -> Iterator[str]:
    lines = _utf8_lines(fh, where)
    try:
        if suffix == ".csv":
            header, records = csv_reader.csv_records(lines, where)
            if header and field not in header:
                found = csv_reader.describe_columns(header)
                raise UserError(f"{where}: no column {field!r} (columns: {found}); name it with --text-field")
            # Of equal column names the last counts, as with csv.DictReader.
            at = len(header) - 1 - header[::-1].index(field) if header else 0
            for number, fields in records:
                # A short row lacks its last cells: an empty text, not a missing column.
                yield checked(fields[at] if at < len(fields) else "", f"{where}:{number}", field)
        elif suffix == ".jsonl":
            for number, row in files.jsonl_objects(lines, where):
                yield checked(row.get(field), f"{where}:{number}", field)
        else:
            for number, line in enumerate(lines, start=1):
                text = line.removesuffix("\n").removesuffix("\r")
                yield checked(text, f"{where}:{number}", None)
    finally:
        if close:
            fh.close()
        else:
            fh.detach()  # type: ignore[attr-defined]  # a TextIOWrapper: stdin stays open for whoever else reads it
