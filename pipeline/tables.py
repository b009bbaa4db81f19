"""CSV files that users give: the one CSV reader, for download's tables and predict's input.

A record ends at a line break outside quotes, so with the field limit and io.bounded_lines no
record is ever longer than io.MAX_LINE_CHARS: a crafted file cannot make the parser read
gigabytes into one string. JSON lines need no helper here: io.jsonl_objects reads them.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from typing import IO

from pipeline import io
from pipeline.errors import UserError


def csv_records(fh: IO[str], where: str) -> tuple[list[str], Iterator[tuple[int, list[str]]]]:
    """The header, then (line number, fields) of each non-blank record of a CSV file."""
    # Records end at a line break outside quotes, so a field can never be longer than the
    # field limit, nor a line longer than bounded_lines allows: memory stays bounded.
    csv.field_size_limit(io.MAX_LINE_CHARS)
    reader = csv.reader(io.bounded_lines(fh, where))

    def records() -> Iterator[tuple[int, list[str]]]:
        try:
            for fields in reader:
                if fields:  # a blank line, as csv.DictReader skips it
                    yield reader.line_num, fields
        except csv.Error as exc:
            raise UserError(f"{where}: line {reader.line_num}: not valid CSV ({exc})") from None

    found = records()
    header = next(found, (0, []))[1]
    return header, found
