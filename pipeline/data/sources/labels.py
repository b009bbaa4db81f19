"""Checks that the labels a table gives are class names, not text that a broken row let in.

One stray quote in a CSV makes the parser merge rows or shift columns, so that fragments of
text land in the label column ("figures show."), each a new class of one document. These checks
catch that before anything is published:
- a label that spans lines, is long, or reads like a sentence, is refused where it occurs;
- more distinct labels than a classifier can learn from the documents is refused at the end;
- spellings of one value that become separate classes (`1`, `1.0`, `true`) are pointed out.

Labels that look the same are one class: `fold` reads each as Unicode NFC with zero-width
characters (U+200B-U+200D, U+2060, U+FEFF) removed and the ends stripped, so `café` typed
composed or decomposed, or `sport` with a zero-width space pasted in, is `café` or `sport`; the
source warns about every label it read another way than it was written. Labels that differ only
by case (`Sport`, `sport`) stay separate classes, since case can matter, and are pointed out by
name. A JSON label must be a string, a finite number or a boolean: NaN and infinities are
refused where they occur (a missing or null label skips its row, like a blank one).
"""

from __future__ import annotations

import math
import sys
import unicodedata
from collections import defaultdict
from collections.abc import Mapping

from pipeline.core.errors import UserError

MAX_LABEL_CHARS = 64
MAX_LABEL_WORDS = 6
MAX_LABELS = 10_000  # distinct labels kept in memory while reading; a real corpus has far fewer
MIN_DOCS_PER_LABEL = 3  # on average: fewer means the label column holds something else
HINT = "a stray quote in a CSV can merge rows, or download.label_field names the wrong column"
ZERO_WIDTH = "\u200b\u200c\u200d\u2060\ufeff"
_DROP_ZERO_WIDTH = str.maketrans("", "", ZERO_WIDTH)


def fold(label: str) -> str:
    """The class a label names: Unicode NFC, zero-width characters removed, the ends stripped."""
    return unicodedata.normalize("NFC", label).translate(_DROP_ZERO_WIDTH).strip()


def warn_folded(folded: Mapping[str, set[str]], where: str) -> None:
    """Name the labels that `fold` read as another: {class: the other spellings found}."""
    for label in sorted(folded):
        # ascii() shows what the eye cannot: a zero-width space, a combining accent.
        names = ", ".join(ascii(s) for s in sorted(folded[label]))
        print(
            f"warning: {where}: the labels {names} were read as {ascii(label)} (Unicode NFC, zero-width "
            "characters removed): one class",
            file=sys.stderr,
        )


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
    cased: defaultdict[str, list[str]] = defaultdict(list)
    for label in sorted(counts):
        cased[label.casefold()].append(label)
    for spellings in [*same.values(), *cased.values()]:
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
