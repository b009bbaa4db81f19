"""A bounded YAML reader for settings: ruamel.yaml's safe loader (YAML 1.2, as DVC reads params.yaml).

Without aliases, deep nesting, duplicate keys or huge files: an alias lets a few hundred bytes
expand to gigabytes (the "billion laughs"), the composer recurses once per level of nesting,
and a settings file never needs either. A key written twice is refused, as DVC refuses it.
Problems are one-line `Refused` errors that name the file.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.composer import Composer
from ruamel.yaml.error import YAMLError
from ruamel.yaml.events import AliasEvent
from ruamel.yaml.nodes import ScalarNode


class Refused(Exception):
    """YAML that cannot be read, or that settings never need and that could exhaust memory or stack."""


class _Composer(Composer):
    """ruamel.yaml's composer without aliases, and with each key of a mapping written once."""

    def __init__(self, loader: Any = None) -> None:
        super().__init__(loader)
        self.warn_double_anchors = False  # an anchor without an alias is harmless: no warning on stderr

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.parser.peek_event()
        if isinstance(event, AliasEvent):
            line = event.start_mark.line + 1
            raise Refused(f"YAML aliases (*name) are not supported, write values out (line {line})")
        return super().compose_node(parent, index)

    def compose_mapping_node(self, anchor: Any) -> Any:
        node = super().compose_mapping_node(anchor)
        first: dict[tuple[str, str], int] = {}
        for key, _ in node.value:
            if not isinstance(key, ScalarNode):
                continue  # a complex key: the constructor refuses it
            line = key.start_mark.line + 1
            name = (str(key.tag), key.value)
            if name in first:
                shown = textwrap.shorten(key.value, 40, placeholder="...")
                raise Refused(f"duplicate key {shown!r} (line {line}, first at line {first[name]})")
            first[name] = line
        return node


def _parser(max_depth: int) -> YAML:
    yaml = YAML(typ="safe", pure=True)
    yaml.Composer = _Composer
    yaml.max_depth = max_depth
    return yaml


def _text(path: Path, what: str, max_bytes: int) -> str:
    try:
        with path.open("rb") as file:
            data = file.read(max_bytes + 1)  # never more: the path may be /dev/zero
    except FileNotFoundError:
        raise Refused(f"{path}: {what} not found") from None
    except OSError as exc:
        raise Refused(f"{path}: cannot read {what} ({exc.strerror or exc})") from None
    if len(data) > max_bytes:
        raise Refused(f"{path}: {what} is over {max_bytes:,} bytes; it holds settings, not data")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Refused(f"{path}: cannot read {what} (not UTF-8, byte {exc.start})") from None


def parse(text: str, max_depth: int) -> Any:
    """The YAML document in `text`; Refused with one line (without a file name) on any problem."""
    try:
        return _parser(max_depth).load(text)
    except Refused:
        raise
    except YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or getattr(exc, "reason", None)
        if mark and problem and problem.startswith("maximum depth"):
            raise Refused(f"nested more than {max_depth} levels deep (line {mark.line + 1})") from None
        where = f" at line {mark.line + 1}" if mark else ""
        why = f" ({textwrap.shorten(problem, 80)})" if problem else ""
        raise Refused(f"not valid YAML{where}{why}") from None
    except (ValueError, OverflowError) as exc:  # a scalar that cannot be built, e.g. 2001-13-01
        raise Refused(f"not valid YAML ({textwrap.shorten(str(exc), 80)})") from None


def read(path: Path, what: str, max_bytes: int, max_depth: int) -> Any:
    """The YAML document at `path`; Refused with one line naming the file on any problem."""
    text = _text(path, what, max_bytes)
    try:
        return parse(text, max_depth)
    except Refused as exc:
        raise Refused(f"{path}: {exc}") from None
