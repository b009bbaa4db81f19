"""Checks that the labels a table gives are class names, not text that a broken row let in.

One stray quote in a CSV makes the parser merge rows or shift columns, so that fragments of
text land in the label column ("figures show."), each a new class of one document. These checks
catch that before anything is published:
- a label that spans lines, is long, or reads like a sentence, is refused where it occurs;
- more distinct labels than a classifier can learn from the documents is refused at the end;
- spellings of one value that become separate classes (`1`, `1.0`, `true`) are pointed out.
"""

from __future__ import annotations

import math
import sys
from collections import defaultdict
from collections.abc import Mapping

from pipeline.core.errors import UserError

MAX_LABEL_CHARS = 64
MAX_LABEL_WORDS = 6
MAX_LABELS = 10_000  # distinct labels kept in memory while reading; a real corpus has far fewer
MIN_DOCS_PER_LABEL = 3  # on average: fewer means the label column holds something else
HINT = "a stray quote in a CSV can merge rows, or download.label_field names the wrong column"


def _why_text(label: str) -> str | None:
    words = label.split()
    if "\n" in label or "\r" in label:
        return "spans lines"
    if len(label) > MAX_LABEL_CHARS:
        return f"is {len(label)} characters long"
    if len(words) > MAX_LABEL_WORDS:
        return f"has {len(words)} words"
    if len(words) > 1 and label[-1] in ".!?" and label[-2].isalpha():
        return "reads like a sentence"
    return None


def check_new(label: str, known: int, where: str) -> None:
    """Refuse a label seen for the first time that looks like text; `known` labels came before."""
    reason = _why_text(label)
    if reason is not None:
        shown = label if len(label) <= 40 else label[:37] + "..."
        raise UserError(f"{where}: the label {shown!r} {reason}, like text, not a class; {HINT}")
    if known >= MAX_LABELS:
        raise UserError(f"{where}: more than {MAX_LABELS} distinct labels; {HINT}")


def check_all(counts: Mapping[str, int], where: str) -> None:
    """Refuse a label column that cannot be classes; warn about one value spelt several ways."""
    documents, labels = sum(counts.values()), len(counts)
    once = [label for label, n in counts.items() if n == 1]
    if labels > 20 and labels * MIN_DOCS_PER_LABEL > documents:
        raise UserError(
            f"{where}: {labels} distinct labels for {documents} documents, fewer than "
            f"{MIN_DOCS_PER_LABEL} a label; {HINT}"
        )
    if len(once) > 10 and len(once) * 2 > labels:
        shown = ", ".join(repr(label) for label in sorted(once)[:3])
        raise UserError(f"{where}: {len(once)} of the {labels} labels have a single document ({shown}, ...); {HINT}")
    same: defaultdict[float, list[str]] = defaultdict(list)
    for label in sorted(counts):
        value = _as_number(label)
        if value is not None:
            same[value].append(label)
    for spellings in same.values():
        if len(spellings) > 1:
            names = ", ".join(repr(s) for s in spellings)
            print(
                f"warning: {where}: the labels {names} are separate classes; if they mean the "
                "same, write them one way in the source",
                file=sys.stderr,
            )


def _as_number(label: str) -> float | None:
    """The value a label spells as a number or a boolean (`1`, `1.0`, `true` are all 1)."""
    text = label.strip().lower()
    if text in ("true", "false"):
        return float(text == "true")
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None
