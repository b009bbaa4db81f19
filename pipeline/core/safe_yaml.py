"""A bounded YAML reader for settings: PyYAML's safe loader without aliases, deep nesting or huge files.

An alias lets a few hundred bytes expand to gigabytes (the "billion laughs"), PyYAML's
composer recurses once per level of nesting, and a settings file never needs either.
Problems are one-line `Refused` errors that name the file.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path
from typing import Any

import yaml


class Refused(Exception):
    """YAML that cannot be read, or that settings never need and that could exhaust memory or stack."""


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader without aliases and with bounded nesting."""

    depth = 0
    max_depth = 20

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        line = event.start_mark.line + 1
        if isinstance(event, yaml.AliasEvent):
            raise Refused(f"YAML aliases (*name) are not supported, write values out (line {line})")
        if self.depth >= self.max_depth:
            raise Refused(f"nested more than {self.max_depth} levels deep (line {line})")
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


# YAML 1.2 floats without a dot (`1e-3`), as DVC reads them; PyYAML's YAML 1.1 says string.
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


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


def read(path: Path, what: str, max_bytes: int, max_depth: int) -> Any:
    """The YAML document at `path`; Refused with one line naming the file on any problem."""
    loader = type("_Bounded", (_Loader,), {"max_depth": max_depth})
    text = _text(path, what, max_bytes)
    try:
        return yaml.load(text, Loader=loader)  # a SafeLoader
    except Refused as exc:
        raise Refused(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or getattr(exc, "reason", None)
        why = f" ({textwrap.shorten(problem, 80)})" if problem else ""
        raise Refused(f"{path}: not valid YAML{where}{why}") from None
    except (ValueError, OverflowError) as exc:  # a scalar PyYAML cannot build, e.g. 2001-13-01
        raise Refused(f"{path}: not valid YAML ({textwrap.shorten(str(exc), 80)})") from None
