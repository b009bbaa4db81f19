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
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    TypeAdapter,
    ValidationError,
    field_validator,
)
from pydantic.dataclasses import dataclass
from pydantic_core.core_schema import ValidationInfo

from pipeline.core import safe_yaml
from pipeline.core.errors import UserError
from pipeline.core.layout import COUNTERFACTUALS, LADDER, MODEL_NAMES  # noqa: F401 (the stages read them here)

MODELS = MODEL_NAMES  # the model sections, in the order of the report

MAX_FILE_BYTES = 1_000_000  # settings, not data; PyYAML needs about 4 s per MB
MAX_DEPTH = 20  # params nest 4 levels; PyYAML's composer recurses and overflows near 300


class ParamsError(UserError):
    """params.yaml is missing, malformed or holds a value the pipeline cannot use."""

    def __init__(self, message: str) -> None:
        # One line whatever a key or value holds: the CLI prints it as `error: ...`.
        printable = "".join(c if c.isprintable() else " " for c in message)
        super().__init__(" ".join(printable.split()))


# Scalars are Strict* (no bool/str/float-to-int coercion); strict mode for the whole config
# would also demand section instances where YAML gives mappings.
_CONFIG = ConfigDict(extra="forbid", allow_inf_nan=False)
# Within what every RNG the pipeline seeds accepts (numpy, torch).
Seed = Annotated[StrictInt, Field(ge=0, le=2**31 - 1)]
# A section the caller did not ask for; parse() refuses a missing one that it did ask for.
_ABSENT: Any = None


@dataclass(frozen=True, config=_CONFIG)
class DownloadParams:
    source: Literal["bbc-news", "csv", "jsonl", "url"] = Field()
    path: StrictStr | None = Field()
    url: StrictStr | None = Field()
    sha256: StrictStr | None = Field()
    text_field: StrictStr = Field(min_length=1)
    label_field: StrictStr = Field(min_length=1)

    @field_validator("path", "url", "sha256")
    @classmethod
    def _needed_by_source(cls, value: str | None, info: ValidationInfo) -> str | None:
        # Fields validate in order, so a valid `source` is already in info.data.
        source, name = info.data.get("source"), info.field_name
        if name == "path" and source in ("csv", "jsonl") and not value:
            raise ValueError(f"must be a file path when source is {source}")
        if name == "url" and source == "url" and not re.match(r"https?://", value or ""):
            raise ValueError(f"must be an http(s):// URL when source is url, got {_show(value)}")
        if name == "sha256" and source == "url" and not re.fullmatch(r"[0-9a-fA-F]{64}", value or ""):
            raise ValueError("must be the 64-hex-digit sha256 of the file at download.url")
        return value


@dataclass(frozen=True, config=_CONFIG)
class PrepareParams:
    seed: Seed = Field()
    val_fraction: StrictFloat = Field(gt=0, lt=1)
    test_fraction: StrictFloat = Field(gt=0, lt=1)
    min_freq: StrictInt = Field(ge=1, le=1_000_000)
    max_vocab: StrictInt = Field(ge=3, le=10_000_000)  # <pad>, <unk> and at least one word
    max_len: StrictInt = Field(ge=1, le=100_000)
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
    seeds: tuple[Seed, ...] = Field(strict=True, min_length=1, max_length=32, json_schema_extra={"uniqueItems": True})
    batch_size: StrictInt | None = Field(ge=1, le=1_000_000, description="null for full batch")
    max_epochs: StrictInt = Field(ge=1, le=100_000)
    patience: StrictInt = Field(ge=1, le=100_000)
    optimizer: Literal["adam", "adamw"] = Field()
    lr: StrictFloat = Field(gt=0, le=10)
    weight_decay: StrictFloat = Field(ge=0, le=10)
    grad_clip: StrictFloat | None = Field(gt=0, le=1_000_000, description="null for no clipping")
    device: Literal["auto", "cpu", "cuda"] = Field()
    processes: StrictInt = Field(ge=1, le=64)  # data-parallel processes under torchrun
    threads: StrictInt = Field(ge=1, le=256)
    # Train with the PyTorch loop where the C++ recurrence cannot be built or loaded (slower,
    # and other dropout masks); false stops the stage with one line instead.
    allow_fallback: StrictBool = Field()

    @field_validator("seeds", mode="wrap")
    @classmethod
    def _distinct(cls, value: Any, handler: Any) -> tuple[int, ...]:
        # YAML gives a list; a set (`!!set`) has no order, so the strict tuple still refuses it.
        seeds: tuple[int, ...] = handler(tuple(value) if isinstance(value, list) else value)
        repeated = sorted({s for s in seeds if seeds.count(s) > 1})
        if repeated:
            raise ValueError(f"must be distinct, {repeated[0]} appears more than once")
        return seeds


@dataclass(frozen=True, config=_CONFIG)
class ModelParams:
    cell: Literal["rnn", "gru", "lstm"] = Field()
    embed_dim: StrictInt = Field(ge=1, le=4096)
    hidden_dim: StrictInt = Field(ge=1, le=4096)
    num_layers: StrictInt = Field(ge=1, le=16)
    bidirectional: StrictBool = Field()
    dropout: StrictFloat = Field(ge=0, lt=1)
    word_dropout: StrictFloat = Field(ge=0, lt=1)
    readout: Literal["final", "mean", "max"] = Field()
    # Training-time, per model: stop on validation loss after train.patience epochs without
    # improvement and keep the best epoch; false runs all train.max_epochs, like the starter experiment's loop.
    early_stopping: StrictBool = Field()
    # Optional, for the model that must meet the starter experiment's training ceiling: early
    # stopping keeps the lowest validation loss among the epochs whose eval-mode training
    # accuracy is below this, and stops once none has improved for train.patience epochs.
    max_train_accuracy: StrictFloat | None = Field(default=None, gt=0, le=1, description="null for no ceiling")
    # Optional: this model's AdamW weight decay; null takes train.weight_decay.
    weight_decay: StrictFloat | None = Field(default=None, ge=0, le=10, description="null for train.weight_decay")


@dataclass(frozen=True, config=_CONFIG)
class ReferenceParams:
    max_features: StrictInt = Field(ge=1, le=10_000_000)
    ngram_max: StrictInt = Field(ge=1, le=10)
    C: StrictFloat = Field(gt=0, le=1_000_000)


@dataclass(frozen=True, config=_CONFIG)
class FastTextParams:
    # fastText's supervised settings, named like its own (wordNgrams, minCount), snake-cased.
    dim: StrictInt = Field(ge=1, le=1024)
    epoch: StrictInt = Field(ge=1, le=10_000)
    lr: StrictFloat = Field(gt=0, le=10)
    word_ngrams: StrictInt = Field(ge=1, le=10)
    min_count: StrictInt = Field(ge=1, le=1_000_000)
    bucket: StrictInt = Field(ge=1, le=10_000_000)  # hashed rows for the word n-grams
    seed: Seed = Field()


@dataclass(frozen=True, config=_CONFIG)
class EvaluateParams:
    batch_size: StrictInt = Field(ge=1, le=1_000_000)
    reference: ReferenceParams = Field()
    fasttext: FastTextParams = Field()


@dataclass(frozen=True, config=_CONFIG)
class SuspectsParams:
    # Out-of-fold probabilities of the TF-IDF reference (evaluate.reference) on the training
    # split, `folds` folds stratified by label and shuffled with `seed`, fed to cleanlab.
    folds: StrictInt = Field(ge=2, le=100)
    seed: Seed = Field()


@dataclass(frozen=True, config=_CONFIG)
class Targets:
    min_val_accuracy: StrictFloat = Field(ge=0, le=1)
    max_train_accuracy: StrictFloat = Field(ge=0, le=1)
    max_parameter_ratio: StrictFloat = Field(gt=0, le=1000)


@dataclass(frozen=True, config=_CONFIG)
class CompareParams:
    targets: Targets = Field()


@dataclass(frozen=True, config=_CONFIG)
class Params:
    # Written as `train:` with nothing under it, a section is refused like any non-mapping.
    download: DownloadParams = _ABSENT
    prepare: PrepareParams = _ABSENT
    train: TrainParams = _ABSENT
    # The models, in the order of the report: the ablation ladder from the starter experiment's
    # Before (baseline) to its After (birnn), one change a rung; the After's two counterfactuals;
    # the stacked BiRNN; and the BiRNN held under the training ceiling.
    baseline: ModelParams = _ABSENT
    plus_bidirectional: ModelParams = _ABSENT
    plus_dropout: ModelParams = _ABSENT
    plus_word_dropout: ModelParams = _ABSENT
    plus_max_readout: ModelParams = _ABSENT
    birnn: ModelParams = _ABSENT
    birnn_unidirectional: ModelParams = _ABSENT
    birnn_final_readout: ModelParams = _ABSENT
    stacked: ModelParams = _ABSENT
    window: ModelParams = _ABSENT
    evaluate: EvaluateParams = _ABSENT
    suspects: SuspectsParams = _ABSENT
    compare: CompareParams = _ABSENT

    def model(self, name: str) -> ModelParams:
        section: ModelParams = getattr(self, name)
        return section


_repr = reprlib.Repr()
_repr.maxlevel, _repr.maxstring, _repr.maxother, _repr.maxlong = 2, 40, 40, 40


def _show(value: Any) -> str:
    """A short repr: an echoed value never floods the terminal."""
    try:
        text = _repr.repr(list(value) if isinstance(value, tuple) else value)  # YAML has no tuples
    except Exception:  # e.g. an int past Python's 4300-digit str limit
        text = f"<{type(value).__name__}>"
    return text if len(text) <= 60 else text[:57] + "..."


_ADAPTER = TypeAdapter(Params)


@functools.cache
def _schema() -> dict[str, Any]:
    return _ADAPTER.json_schema()


def _node(loc: tuple[Any, ...]) -> dict[str, Any]:
    """The JSON schema of the value at `loc`; "nullable" holds the field if null is allowed."""
    schema = node = _schema()
    for part in (*loc, None):
        if "anyOf" in node:
            node = {**next(b for b in node["anyOf"] if b.get("type") != "null"), "nullable": node}
        if "$ref" in node:
            node = schema["$defs"][node["$ref"].rsplit("/", 1)[-1]]
        if part is not None:
            node = node["items"] if isinstance(part, int) else node["properties"][part]
    return node


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)


def _interval(node: dict[str, Any]) -> str:
    """`[0, 1)` from the schema's minimum / exclusiveMaximum and the like."""
    low = node["minimum"] if "minimum" in node else node["exclusiveMinimum"]
    high = node["maximum"] if "maximum" in node else node["exclusiveMaximum"]
    opening, closing = "(["["minimum" in node], ")]"["maximum" in node]
    return f"{opening}{_num(low)}, {_num(high)}{closing}"


def _describe(node: dict[str, Any]) -> str:
    """What a value must be, in words, from its schema: `an integer in [1, 100000]`."""
    kind = node.get("type")
    if "enum" in node:
        what = "one of " + ", ".join(repr(v) for v in node["enum"])
    elif kind in ("integer", "number"):
        what = f"{'an integer' if kind == 'integer' else 'a number'} in {_interval(node)}"
    elif kind == "array":
        items, distinct = _describe(node["items"]), "distinct " if node.get("uniqueItems") else ""
        what = f"a list of {node['minItems']} to {node['maxItems']} {distinct}items, each {items}"
    elif kind == "string":
        what = "a non-empty string" if node.get("minLength") else "a string"
    else:
        what = "true or false" if kind == "boolean" else "a mapping of keys to values"
    if node.get("nullable"):
        what += ", or " + node["nullable"].get("description", "null")
    return what


def _key(loc: tuple[Any, ...]) -> str:
    """`train.lr`, `train.seeds[0]`; a key that is not a plain word is quoted."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            plain = isinstance(part, str) and re.fullmatch(r"[\w-]{1,60}", part)
            path += ("." if path else "") + (part if plain else _show(part))
    return path


_UNKNOWN = ("unexpected_keyword_argument", "extra_forbidden", "invalid_key")


def _message(error: Any) -> str:
    """One pydantic error as `<key.path>: <what is wrong>`."""
    loc, kind = tuple(error["loc"]), error["type"]
    if not loc:
        return f"params: the file must hold a mapping of sections, got {_show(error['input'])}"
    if kind in _UNKNOWN:
        # The last part is the key as written, whatever YAML made of it (`1:`, `null:`).
        parent, name = _key(loc[:-1]), _key((str(loc[-1]),))
        allowed = ", ".join(_node(loc[:-1])["properties"])
        where = f"{parent}.{name}: unknown key" if parent else f"{name}: unknown section"
        return f"{where} (allowed: {allowed})"
    if kind == "value_error":
        return f"{_key(loc)}: {error['ctx']['error']}"
    what = _describe(_node(loc))
    if kind == "missing":
        return f"{_key(loc)}: missing key ({what})"
    if kind == "finite_number":
        what = what.replace("a number", "a finite number", 1)
    return f"{_key(loc)}: must be {what}, got {_show(error['input'])}"


def parse(raw: Any, sections: tuple[str, ...] | None = None) -> Params:
    """Validate a params mapping. With `sections`, only those sections are required."""
    try:
        params = _ADAPTER.validate_python(raw)
    except ValidationError as exc:
        # Every section present is checked, so a typo anywhere fails any command early.
        # A misspelt key is the likeliest mistake and explains the rest: name it first.
        errors = sorted(exc.errors(include_url=False), key=lambda e: e["type"] not in _UNKNOWN)
        raise ParamsError(_message(errors[0])) from None
    for name in sections or _schema()["properties"]:
        if getattr(params, name) is None:
            raise ParamsError(f"{name}: missing section")
    return params


def still_as_read(path: str | Path, read: Params, sections: tuple[str, ...]) -> Callable[[], None]:
    """A check that `path` still holds the `sections` that `read` came from, for a stage to run
    before it publishes. Two `dvc exp run` in one workspace write their -S values into the same
    params.yaml while the other's stages run, and DVC records the file as it is when a stage
    ends: outputs of the old values would be filed under the new ones."""
    path = Path(path)
    seen: list[tuple[int, int, int]] = []  # (inode, size, mtime) of the file last found unchanged

    def check() -> None:
        try:
            stat = path.stat()
            key = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
            if key in seen:
                return
            changed = [s for s in sections if getattr(load(path, sections), s) != getattr(read, s)]
        except (OSError, ParamsError) as exc:
            problem = str(exc)
        else:
            if not changed:
                seen[:] = [key]
                return
            problem = f"{', '.join(changed)} changed"
        raise ParamsError(
            f"{path}: {problem} while this stage ran (another `dvc exp run` in this workspace?); "
            "its previous outputs are kept. Run experiments one at a time, or queue them: dvc exp run --queue"
        )

    return check


def load(path: str | Path = "params.yaml", sections: tuple[str, ...] | None = None) -> Params:
    """Read and validate params.yaml; raise ParamsError with one readable line on any problem."""
    path = Path(path)
    try:
        raw = safe_yaml.read(path, "params file", MAX_FILE_BYTES, MAX_DEPTH)
    except safe_yaml.Refused as exc:
        raise ParamsError(str(exc)) from None
    return parse(raw, sections)
