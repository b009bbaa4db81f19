"""params.yaml loaded into frozen, validated pydantic dataclasses, one per section.

Every key is checked before any stage starts: unknown or missing keys, wrong types and
out-of-range values raise ParamsError naming the key path, so a typo in
`dvc exp run -S birnn.dropuot=0.4` fails at once instead of being ignored. Types are strict
(YAML `yes` is not a number, 3.5 is not an integer) and every number is finite and bounded,
so no setting reaches a stage as NaN, a negative seed or a terabyte-sized layer.
"""

from __future__ import annotations

import functools
import re
import reprlib
import textwrap
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import ConfigDict, Field, TypeAdapter, ValidationError, ValidationInfo, field_validator
from pydantic.dataclasses import dataclass

from pipeline.errors import UserError

MAX_FILE_BYTES = 1_000_000  # settings, not data: a bigger file is a mistake, and parsing it is slow
MAX_DEPTH = 20  # params nest 4 levels; PyYAML's composer recurses and overflows near 300


class ParamsError(UserError):
    """params.yaml is missing, malformed or holds a value the pipeline cannot use."""

    def __init__(self, message: str) -> None:
        # One line whatever a key or value holds: the CLI prints it as `error: ...`.
        super().__init__(" ".join("".join(c if c.isprintable() else " " for c in message).split()))


# Strict: no bool/str/float-to-int coercion. Sections themselves stay lax so that a mapping
# read from YAML validates into a section (strict mode would demand an instance).
_CONFIG = ConfigDict(extra="forbid", allow_inf_nan=False)


def _int(lo: int, hi: int, description: str | None = None) -> Any:
    return Field(strict=True, ge=lo, le=hi, description=description)


def _number(description: str | None = None, **bounds: float) -> Any:
    return Field(strict=True, description=description, **bounds)


def _text() -> Any:
    return Field(strict=True, min_length=1)


def _strict() -> Any:
    return Field(strict=True)


def _absent() -> Any:
    return Field(default=None)


# Seeds: non-negative and within what every RNG the pipeline seeds accepts (numpy, torch).
Seed = Annotated[int, Field(strict=True, ge=0, le=2**31 - 1)]


@dataclass(frozen=True, config=_CONFIG)
class DownloadParams:
    source: Literal["bbc-news", "csv", "jsonl", "url"] = Field()
    path: str | None = _strict()
    url: str | None = _strict()
    sha256: str | None = _strict()
    text_field: str = _text()
    label_field: str = _text()

    @field_validator("path", "url", "sha256")
    @classmethod
    def _needed_by_source(cls, value: str | None, info: ValidationInfo) -> str | None:
        # Fields validate in order, so a valid `source` is already in info.data.
        source, name = info.data.get("source"), info.field_name
        if name == "path" and source in ("csv", "jsonl") and not value:
            raise ValueError(f"must be a file path when source is {source}")
        if name == "url" and source == "url" and not (value or "").startswith(("http://", "https://")):
            raise ValueError(f"must be an http:// or https:// URL when source is url, got {_show(value)}")
        if name == "sha256" and source == "url" and not re.fullmatch(r"[0-9a-fA-F]{64}", value or ""):
            raise ValueError("must be the 64-hex-digit sha256 of the file at download.url")
        return value


@dataclass(frozen=True, config=_CONFIG)
class PrepareParams:
    seed: Seed = _strict()
    val_fraction: float = _number(gt=0, lt=1)
    test_fraction: float = _number(gt=0, lt=1)
    min_freq: int = _int(1, 1_000_000)
    max_vocab: int = _int(3, 10_000_000)  # <pad>, <unk> and at least one word
    max_len: int = _int(1, 100_000)
    keep: Literal["head", "tail"] = Field()

    @field_validator("test_fraction")
    @classmethod
    def _leaves_training_data(cls, value: float, info: ValidationInfo) -> float:
        total = info.data.get("val_fraction", 0) + value
        if total >= 0.9:
            raise ValueError(
                f"val_fraction + test_fraction must be below 0.9 so that training data remains, got {total:g}"
            )
        return value


@dataclass(frozen=True, config=_CONFIG)
class TrainParams:
    # Each model trains once per seed.
    seeds: tuple[Seed, ...] = Field(
        strict=True, min_length=1, max_length=32, json_schema_extra={"uniqueItems": True}
    )
    batch_size: int | None = _int(1, 1_000_000, "null for full batch")
    max_epochs: int = _int(1, 100_000)
    patience: int = _int(1, 100_000)
    optimizer: Literal["adam", "adamw"] = Field()
    lr: float = _number(gt=0, le=10)
    weight_decay: float = _number(ge=0, le=10)
    grad_clip: float | None = _number("null for no clipping", gt=0, le=1_000_000)
    device: Literal["auto", "cpu", "cuda"] = Field()
    processes: int = _int(1, 64)  # data-parallel processes under torchrun
    threads: int = _int(1, 256)

    @field_validator("seeds", mode="before")
    @classmethod
    def _list_to_tuple(cls, value: Any) -> Any:
        # YAML gives a list; a set (`!!set`) has no order, so it stays refused by the strict tuple.
        return tuple(value) if isinstance(value, list) else value

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        repeated = sorted({s for s in value if value.count(s) > 1})
        if repeated:
            raise ValueError(f"must be distinct, {repeated[0]} appears more than once")
        return value


@dataclass(frozen=True, config=_CONFIG)
class ModelParams:
    cell: Literal["rnn", "gru", "lstm"] = Field()
    embed_dim: int = _int(1, 4096)
    hidden_dim: int = _int(1, 4096)
    num_layers: int = _int(1, 16)
    bidirectional: bool = _strict()
    dropout: float = _number(ge=0, lt=1)
    word_dropout: float = _number(ge=0, lt=1)
    readout: Literal["final", "mean", "max"] = Field()
    # Training-time, per model: stop on validation loss after train.patience epochs without
    # improvement and keep the best epoch; false runs all train.max_epochs, like the seed's loop.
    early_stopping: bool = _strict()


@dataclass(frozen=True, config=_CONFIG)
class ReferenceParams:
    max_features: int = _int(1, 10_000_000)
    ngram_max: int = _int(1, 10)
    C: float = _number(gt=0, le=1_000_000)


@dataclass(frozen=True, config=_CONFIG)
class EvaluateParams:
    batch_size: int = _int(1, 1_000_000)
    reference: ReferenceParams = Field()


@dataclass(frozen=True, config=_CONFIG)
class Targets:
    min_val_accuracy: float = _number(ge=0, le=1)
    max_train_accuracy: float = _number(ge=0, le=1)
    max_parameter_ratio: float = _number(gt=0, le=1000)


@dataclass(frozen=True, config=_CONFIG)
class CompareParams:
    targets: Targets = Field()


@dataclass(frozen=True, config=_CONFIG)
class Params:
    # A section absent from the file stays None (parse() insists on the ones a stage reads);
    # written as `train:` with nothing under it, it is refused like any non-mapping.
    download: DownloadParams = _absent()
    prepare: PrepareParams = _absent()
    train: TrainParams = _absent()
    baseline: ModelParams = _absent()
    birnn: ModelParams = _absent()
    stacked: ModelParams = _absent()
    evaluate: EvaluateParams = _absent()
    compare: CompareParams = _absent()

    def model(self, name: str) -> ModelParams:
        return getattr(self, name)


MODELS = ("baseline", "birnn", "stacked")

_repr = reprlib.Repr()
_repr.maxlevel, _repr.maxstring, _repr.maxother, _repr.maxlong = 2, 40, 40, 40


def _show(value: Any) -> str:
    """A short repr: an echoed value never floods the terminal."""
    try:
        text = _repr.repr(list(value) if isinstance(value, tuple) else value)  # YAML has no tuples
    except Exception:  # e.g. an int past Python's 4300-digit str limit
        text = f"<{type(value).__name__}>"
    return text if len(text) <= 60 else text[:57] + "..."


@functools.cache
def _adapter() -> TypeAdapter[Params]:
    return TypeAdapter(Params)


@functools.cache
def _schema() -> dict[str, Any]:
    return _adapter().json_schema()


def _node(loc: tuple[Any, ...]) -> dict[str, Any]:
    """The JSON-schema node of the value at `loc`; `nullable` holds the field where null is allowed."""
    schema = node = _schema()
    for part in (*loc, None):
        if "anyOf" in node:
            node = {**next(b for b in node["anyOf"] if b.get("type") != "null"), "nullable": node}
        if "$ref" in node:
            node = schema["$defs"][node["$ref"].rsplit("/", 1)[-1]]
        if part is not None:
            node = node["items"] if isinstance(part, int) else node["properties"][part]
    return node


def _number_range(node: dict[str, Any]) -> str:
    def show(bound: float) -> str:
        return str(int(bound)) if float(bound).is_integer() else repr(bound)

    low = f"({show(node['exclusiveMinimum'])}" if "exclusiveMinimum" in node else f"[{show(node['minimum'])}"
    high = f"{show(node['exclusiveMaximum'])})" if "exclusiveMaximum" in node else f"{show(node['maximum'])}]"
    return f"{low}, {high}"


def _describe(node: dict[str, Any]) -> str:
    """What a value must be, in words, from its schema: `an integer in [1, 100000]`."""
    kind = node.get("type")
    if "enum" in node:
        what = "one of " + ", ".join(repr(v) for v in node["enum"])
    elif kind in ("integer", "number"):
        what = f"{'an integer' if kind == 'integer' else 'a number'} in {_number_range(node)}"
    elif kind == "array":
        distinct = "distinct " if node.get("uniqueItems") else ""
        items = _describe(node["items"])
        what = f"a list of {node['minItems']} to {node['maxItems']} {distinct}items, each {items}"
    elif kind == "string":
        what = "a non-empty string" if node.get("minLength") else "a string"
    else:
        what = "true or false" if kind == "boolean" else "a mapping of keys to values"
    if node.get("nullable"):
        what += ", or " + node["nullable"].get("description", "null")
    return what


def _name(part: Any) -> str:
    """A key as typed when it is a plain word; quoted otherwise, so the line stays readable."""
    return part if isinstance(part, str) and re.fullmatch(r"[\w-]{1,60}", part) else _show(part)


def _key(loc: tuple[Any, ...]) -> str:
    """`train.lr`, `train.seeds[0]`."""
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f"{'.' if path else ''}{_name(part)}"
    return path


_UNKNOWN = ("unexpected_keyword_argument", "extra_forbidden", "invalid_key")


def _message(error: Any) -> str:
    """One pydantic error as `<key.path>: <what is wrong>`."""
    loc, kind, key = tuple(error["loc"]), error["type"], _key(tuple(error["loc"]))
    if not loc:
        return f"params: the file must hold a mapping of sections, got {_show(error['input'])}"
    if kind in _UNKNOWN:
        # The last part is the key as written, whatever its type (YAML allows `1:` or `null:`).
        parent = _key(loc[:-1])
        key = f"{parent}.{_name(loc[-1])}" if parent else _name(loc[-1])
        allowed = ", ".join(_node(loc[:-1])["properties"])
        return f"{key}: unknown {'section' if len(loc) == 1 else 'key'} (allowed: {allowed})"
    if kind == "value_error":
        return f"{key}: {error['ctx']['error']}"
    node = _node(loc)
    if kind == "missing":
        return f"{key}: missing key ({_describe(node)})"
    what = _describe(node)
    if kind == "finite_number":
        what = what.replace("a number", "a finite number", 1)
    return f"{key}: must be {what}, got {_show(error['input'])}"


def parse(raw: Any, sections: tuple[str, ...] | None = None) -> Params:
    """Validate a params mapping. With `sections`, only those sections are required."""
    try:
        params = _adapter().validate_python(raw)
    except ValidationError as exc:
        # Every section present is checked, so a typo anywhere fails any command early.
        # A misspelt key is the likeliest mistake and explains the rest: name it first.
        errors = sorted(exc.errors(include_url=False), key=lambda e: e["type"] not in _UNKNOWN)
        raise ParamsError(_message(errors[0])) from None
    for name in sections or _schema()["properties"]:
        if getattr(params, name) is None:
            raise ParamsError(f"{name}: missing section")
    return params


class _Unsupported(Exception):
    def __init__(self, what: str, mark: Any) -> None:
        super().__init__(f"{what} (line {mark.line + 1})")


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader without aliases or deep nesting.

    An alias lets a few hundred bytes expand to gigabytes (the "billion laughs"), and the
    composer recurses once per level; params need neither.
    """

    depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            raise _Unsupported("YAML aliases (*name) are not supported; write the value out", event.start_mark)
        if self.depth >= MAX_DEPTH:
            raise _Unsupported(f"nested more than {MAX_DEPTH} levels deep", event.start_mark)
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


# YAML 1.2 floats without a dot (`1e-3`), as DVC's own YAML reader sees them; PyYAML's
# YAML 1.1 rules would read them as strings.
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def load(path: str | Path = "params.yaml", sections: tuple[str, ...] | None = None) -> Params:
    """Read and validate params.yaml; raise ParamsError with one readable line on any problem."""
    path = Path(path)
    try:
        with path.open("rb") as file:
            data = file.read(MAX_FILE_BYTES + 1)  # never more: the path may be /dev/zero
    except FileNotFoundError:
        raise ParamsError(f"{path}: params file not found") from None
    except OSError as exc:
        raise ParamsError(f"{path}: cannot read params file ({exc.strerror or exc})") from None
    if len(data) > MAX_FILE_BYTES:
        raise ParamsError(f"{path}: params file is over {MAX_FILE_BYTES:,} bytes; it holds settings, not data")
    try:
        raw = yaml.load(data.decode("utf-8"), Loader=_Loader)  # noqa: S506 - a SafeLoader
    except UnicodeDecodeError as exc:
        raise ParamsError(f"{path}: cannot read params file (not UTF-8 at byte {exc.start})") from None
    except _Unsupported as exc:
        raise ParamsError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or getattr(exc, "reason", None)
        why = f" ({textwrap.shorten(problem, 80)})" if problem else ""
        raise ParamsError(f"{path}: not valid YAML{where}{why}") from None
    except (ValueError, OverflowError) as exc:  # a scalar PyYAML cannot build, e.g. 2001-13-01
        raise ParamsError(f"{path}: not valid YAML ({textwrap.shorten(str(exc), 80)})") from None
    return parse(raw, sections)


__all__ = [
    "MODELS",
    "CompareParams",
    "DownloadParams",
    "EvaluateParams",
    "ModelParams",
    "Params",
    "ParamsError",
    "PrepareParams",
    "ReferenceParams",
    "Targets",
    "TrainParams",
    "load",
    "parse",
]
