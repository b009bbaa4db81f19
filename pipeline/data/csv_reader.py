"""CSV files that users give: the one CSV reader, for download's tables and predict's input.

A record ends at a line break outside quotes, so with the field limit and files.bounded_lines no
record is ever longer than files.MAX_LINE_CHARS: a crafted file cannot make the parser read
gigabytes into one string. JSON lines need no helper here: files.jsonl_objects reads them.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator

from pipeline.core import files
from pipeline.core.errors import UserError


def describe_columns(header: list[str], most: int = 10, width: int = 30) -> str:
    """The header's names for an error line: a crafted header must not make the line huge."""
    names = [repr(c) if len(c) <= width else repr(c[: width - 3]) + "..." for c in header[:most]]
    more = f", ... ({len(header)} in all)" if len(header) > most else ""
    return (", ".join(names) + more) or "none"


def csv_records(lines: Iterable[str], where: str) -> tuple[list[str], Iterator[tuple[int, list[str]]]]:
    """The header, then (line number, fields) of each non-blank record of a CSV file's lines
    (files.bounded_lines of a file opened with newline="").

    Quoting is strict: a quote that is never closed, or closed in the middle of a field, is an
    error naming the line where its record began. The lenient default would instead run on
    into the following rows and merge them into one text, silently.
    """
    csv.field_size_limit(files.MAX_LINE_CHARS)
    reader = csv.reader(lines, strict=True)

    def records() -> Iterator[tuple[int, list[str]]]:
        start = 1
        try:
            for fields in reader:
                if fields:  # a blank line, as csv.DictReader skips it
                    yield start, fields
                start = reader.line_num + 1
        except csv.Error as exc:
            # Under strict quoting, these two mean that a quote in this record went astray.
            astray = "expected after" in str(exc) or "end of data" in str(exc)
            hint = "; a stray quote in this row runs on into the rows after it" if astray else ""
            raise UserError(f"{where}: line {start}: not valid CSV ({exc}){hint}") from None

    found = records()
    header = next(found, (0, []))[1]
    return header, found
