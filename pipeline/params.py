"""params.yaml loaded into frozen, validated dataclasses, one per section.

Every key is checked before any stage starts: unknown or missing keys, wrong types and
out-of-range values raise ParamsError naming the key path, so a typo in
`dvc exp run -S birnn.dropuot=0.4` fails at once instead of being ignored.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from pipeline.errors import UserError


class ParamsError(UserError):
    """params.yaml is missing, malformed or holds a value the pipeline cannot use."""


def _check(ok: bool, key: str, allowed: str) -> None:
    if not ok:
        raise ParamsError(f"{key}: must be {allowed}")


@dataclass(frozen=True)
class DownloadParams:
    source: Literal["bbc-news", "csv", "jsonl", "url"]
    path: str | None
    url: str | None
    sha256: str | None
    text_field: str
    label_field: str

    def validate(self, key: str) -> None:
        if self.source in ("csv", "jsonl"):
            _check(bool(self.path), f"{key}.path", f"a file path when source is {self.source}")
        if self.source == "url":
            _check(bool(self.url), f"{key}.url", "an http(s) URL when source is url")
            _check(
                str(self.url).startswith(("http://", "https://")),
                f"{key}.url",
                "an http:// or https:// URL",
            )
            sha = (self.sha256 or "").lower()
            _check(
                len(sha) == 64 and all(c in "0123456789abcdef" for c in sha),
                f"{key}.sha256",
                "the 64-hex-digit sha256 of the file at download.url",
            )
        _check(bool(self.text_field), f"{key}.text_field", "a non-empty field name")
        _check(bool(self.label_field), f"{key}.label_field", "a non-empty field name")


@dataclass(frozen=True)
class PrepareParams:
    seed: int
    val_fraction: float
    test_fraction: float
    min_freq: int
    max_vocab: int
    max_len: int
    keep: Literal["head", "tail"]

    def validate(self, key: str) -> None:
        _check(0 < self.val_fraction < 1, f"{key}.val_fraction", "between 0 and 1 (exclusive)")
        _check(0 < self.test_fraction < 1, f"{key}.test_fraction", "between 0 and 1 (exclusive)")
        _check(
            self.val_fraction + self.test_fraction < 0.9,
            f"{key}.val_fraction + {key}.test_fraction",
            "below 0.9 so that training data remains",
        )
        _check(self.min_freq >= 1, f"{key}.min_freq", "an integer >= 1")
        _check(self.max_vocab >= 3, f"{key}.max_vocab", "an integer >= 3 (<pad>, <unk> and a word)")
        _check(self.max_len >= 1, f"{key}.max_len", "an integer >= 1")


@dataclass(frozen=True)
class TrainParams:
    seed: int
    batch_size: int | None
    max_epochs: int
    patience: int
    optimizer: Literal["adam", "adamw"]
    lr: float
    weight_decay: float
    grad_clip: float | None
    device: Literal["auto", "cpu", "cuda"]
    threads: int

    def validate(self, key: str) -> None:
        if self.batch_size is not None:
            _check(self.batch_size >= 1, f"{key}.batch_size", "an integer >= 1, or null for full batch")
        _check(self.max_epochs >= 1, f"{key}.max_epochs", "an integer >= 1")
        _check(self.patience >= 1, f"{key}.patience", "an integer >= 1")
        _check(self.lr > 0, f"{key}.lr", "a number > 0")
        _check(self.weight_decay >= 0, f"{key}.weight_decay", "a number >= 0")
        if self.grad_clip is not None:
            _check(self.grad_clip > 0, f"{key}.grad_clip", "a number > 0, or null for no clipping")
        _check(self.threads >= 1, f"{key}.threads", "an integer >= 1")


@dataclass(frozen=True)
class ModelParams:
    cell: Literal["rnn", "gru", "lstm"]
    embed_dim: int
    hidden_dim: int
    num_layers: int
    bidirectional: bool
    dropout: float
    word_dropout: float
    readout: Literal["final", "mean", "max"]
    # Training-time, per model: stop on validation loss after train.patience epochs without
    # improvement and keep the best epoch; false runs all train.max_epochs, like the seed's loop.
    early_stopping: bool

    def validate(self, key: str) -> None:
        _check(self.embed_dim >= 1, f"{key}.embed_dim", "an integer >= 1")
        _check(self.hidden_dim >= 1, f"{key}.hidden_dim", "an integer >= 1")
        _check(self.num_layers >= 1, f"{key}.num_layers", "an integer >= 1")
        _check(0 <= self.dropout < 1, f"{key}.dropout", "in [0, 1)")
        _check(0 <= self.word_dropout < 1, f"{key}.word_dropout", "in [0, 1)")


@dataclass(frozen=True)
class ReferenceParams:
    max_features: int
    ngram_max: int
    C: float

    def validate(self, key: str) -> None:
        _check(self.max_features >= 1, f"{key}.max_features", "an integer >= 1")
        _check(self.ngram_max >= 1, f"{key}.ngram_max", "an integer >= 1")
        _check(self.C > 0, f"{key}.C", "a number > 0")


@dataclass(frozen=True)
class EvaluateParams:
    batch_size: int
    reference: ReferenceParams

    def validate(self, key: str) -> None:
        _check(self.batch_size >= 1, f"{key}.batch_size", "an integer >= 1")


@dataclass(frozen=True)
class Targets:
    min_val_accuracy: float
    max_train_accuracy: float
    max_parameter_ratio: float

    def validate(self, key: str) -> None:
        _check(0 <= self.min_val_accuracy <= 1, f"{key}.min_val_accuracy", "in [0, 1]")
        _check(0 <= self.max_train_accuracy <= 1, f"{key}.max_train_accuracy", "in [0, 1]")
        _check(self.max_parameter_ratio > 0, f"{key}.max_parameter_ratio", "a number > 0")


@dataclass(frozen=True)
class CompareParams:
    targets: Targets


@dataclass(frozen=True)
class Params:
    download: DownloadParams
    prepare: PrepareParams
    train: TrainParams
    baseline: ModelParams
    birnn: ModelParams
    evaluate: EvaluateParams
    compare: CompareParams

    def model(self, name: str) -> ModelParams:
        return getattr(self, name)


MODELS = ("baseline", "birnn")


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        names = [_type_name(a) for a in args if a is not type(None)]
        return " or ".join(names) + (" or null" if type(None) in args else "")
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}[tp]


def _convert(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key)
            except ParamsError:
                pass
        raise ParamsError(f"{key}: must be {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value in typing.get_args(tp) and isinstance(value, str):
            return value
        raise ParamsError(f"{key}: must be {_type_name(tp)}, got {value!r}")
    # bool is an int subclass in Python; YAML `yes`/`true` must not pass as a number.
    if tp is bool and isinstance(value, bool):
        return value
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is str and isinstance(value, str):
        return value
    raise ParamsError(f"{key}: must be {_type_name(tp)}, got {value!r}")


def _build(cls: type, raw: Any, key: str) -> Any:
    if not isinstance(raw, dict):
        raise ParamsError(f"{key}: must be a mapping of keys to values, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(raw) - set(names), key=str)
    if unknown:
        raise ParamsError(
            f"{key}.{unknown[0]}: unknown key (allowed: {', '.join(names)})"
        )
    missing = [n for n in names if n not in raw]
    if missing:
        raise ParamsError(f"{key}.{missing[0]}: missing key ({_type_name(hints[missing[0]])})")
    obj = cls(**{n: _convert(raw[n], hints[n], f"{key}.{n}") for n in names})
    if hasattr(obj, "validate"):
        obj.validate(key)
    return obj


def parse(raw: Any, sections: tuple[str, ...] | None = None) -> Params:
    """Validate a params mapping. With `sections`, only those sections are required."""
    if not isinstance(raw, dict):
        raise ParamsError("params: the file must hold a mapping of sections")
    hints = typing.get_type_hints(Params)
    names = [f.name for f in dataclasses.fields(Params)]
    unknown = sorted(set(raw) - set(names), key=str)
    if unknown:
        raise ParamsError(f"{unknown[0]}: unknown section (allowed: {', '.join(names)})")
    wanted = names if sections is None else sections
    values: dict[str, Any] = {n: None for n in names}
    for name in names:
        # Every section present is checked, so a typo anywhere fails any command early;
        # only the caller's own sections are required.
        if name in raw:
            values[name] = _build(hints[name], raw[name], name)
        elif name in wanted:
            raise ParamsError(f"{name}: missing section")
    return Params(**values)


def load(path: str | Path = "params.yaml", sections: tuple[str, ...] | None = None) -> Params:
    """Read and validate params.yaml; raise ParamsError with one readable line on any problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ParamsError(f"{path}: params file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ParamsError(f"{path}: cannot read params file ({exc})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ParamsError(f"{path}: not valid YAML{where}") from None
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
