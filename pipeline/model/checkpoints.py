"""Checkpoints: saved atomically, loaded with `weights_only=True`, refused in one line when damaged or foreign.

A checkpoint is a dict of tensors and plain values (weights, config, labels, vocabulary,
encoding), so loading it never unpickles code. Every checkpoint loaded is validated (`validate`)
before any of it is used, so predict, export, publish and evaluate all refuse the same things:
labels that are not unique non-empty strings, a vocabulary that is not unique strings starting
with <pad>, <unk>, weights that are not finite float32 of the shapes the config gives, a config
or encoding field of the wrong type or out of range. Shapes are checked against the config
before any model is built, so a crafted config cannot make its reader allocate gigabytes.
"""

from __future__ import annotations

import hashlib
import io
import math
import pickle
import re
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any, get_type_hints

from pipeline.core.errors import UserError
from pipeline.core.files import write_bytes
from pipeline.data.text import PAD, UNK


def save_checkpoint(path: str | Path, checkpoint: dict[str, Any]) -> str:
    """Write the checkpoint; returns the sha256 of the bytes written (pipeline.core.stamps)."""
    # Serialise to memory first: torch.save of the same tensors gives the same bytes,
    # and the file appears only once complete.
    import torch  # imported here: download, prepare and compare start seconds faster without it

    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    data = buffer.getvalue()
    write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()


CHECKPOINT_KEYS = ("model", "config", "labels", "vocab_sha256", "encoding", "epoch", "best_val_loss")


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint dict with `weights_only=True`; anything else is refused as a UserError."""
    import torch

    path = Path(path)
    if path.is_dir():
        inside = sorted(path.glob("*.pt"))
        example = f", e.g. {inside[0]}" if inside else " (a .pt file)"
        raise UserError(f"{path}: is a folder; give the checkpoint file itself{example}")
    if not path.is_file():
        # Only the pipeline's own checkpoints are made by `dvc repro`.
        made_here = path.parts[:1] == ("models",)
        raise UserError(f"{path}: model checkpoint not found" + ("; run `dvc repro` to train it" if made_here else ""))
    if not zipfile.is_zipfile(path):
        raise UserError(f"{path}: not a readable checkpoint (not the zip archive that torch.save writes)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's message is a page of advice; keep the phrase that names the problem.
        found = re.search(r"WeightsUnpickler error:\s*(.+)", str(exc))
        reason = found.group(1).strip().split(" was not", 1)[0] if found else "not a plain-tensor checkpoint"
        if reason.startswith("Unsupported global"):
            raise UserError(f"{path}: refused, the checkpoint holds more than tensors ({reason})") from None
        raise UserError(f"{path}: not a readable checkpoint, its contents are damaged ({reason})") from None
    except Exception as exc:  # a damaged archive fails anywhere in torch's reader, with any type
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path}: not a readable checkpoint ({first.split('. ')[0][:160]})") from None
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in CHECKPOINT_KEYS):
        raise UserError(f"{path}: not a pipeline checkpoint (expected keys: {', '.join(CHECKPOINT_KEYS)})")
    validate(ckpt, path)
    return ckpt


# ---- validation ---------------------------------------------------------------------------

MAX_LEN = 100_000  # the longest truncation a checkpoint may declare: prepare.max_len's own bound
KEEP = ("head", "tail")
READOUTS = ("final", "mean", "max")
GATES = {"rnn": 1, "gru": 3, "lstm": 4}  # a cell's weight matrices stack this many gates of hidden_dim rows
RETRAIN = "run `dvc repro`"


def _shown(value: object) -> str:
    """A value for an error line: a crafted one must not make the line huge."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def validate(ckpt: dict[str, Any], path: Path) -> None:
    """Refuse, in one line naming the field, a checkpoint whose values a reader cannot trust."""
    _check_labels(ckpt["labels"], path)
    if "vocab" in ckpt:  # older checkpoints have none; served.py says so where it is needed
        _check_vocab(ckpt["vocab"], path)
    if not isinstance(ckpt["vocab_sha256"], str):
        raise UserError(f"{path}: vocab_sha256: must be a string, got {_shown(ckpt['vocab_sha256'])}")
    _check_encoding(ckpt["encoding"], path)
    if not _is_int(ckpt["epoch"]) or ckpt["epoch"] < 0:
        raise UserError(f"{path}: epoch: must be a whole number >= 0, got {_shown(ckpt['epoch'])}")
    loss = ckpt["best_val_loss"]
    if not isinstance(loss, (int, float)) or isinstance(loss, bool) or math.isnan(loss):
        raise UserError(f"{path}: best_val_loss: must be a number, got {_shown(loss)}")
    if "temperature" in ckpt:
        t = ckpt["temperature"]
        if not isinstance(t, (int, float)) or isinstance(t, bool) or not math.isfinite(t) or t <= 0:
            raise UserError(f"{path}: its temperature must be a positive number, got {_shown(t)}; {RETRAIN}")
    config = _check_config(ckpt["config"], path)
    if "vocab" in ckpt and len(ckpt["vocab"]) != config["vocab_size"]:
        raise UserError(
            f"{path}: vocab: has {len(ckpt['vocab'])} words but the model {config['vocab_size']}; {RETRAIN}"
        )
    if len(ckpt["labels"]) != config["num_classes"]:
        raise UserError(
            f"{path}: labels: {len(ckpt['labels'])} labels but the model has {config['num_classes']} classes; {RETRAIN}"
        )
    _check_weights(ckpt["model"], config, path)


def _unique_strings(values: object, path: Path, field: str, what: str) -> list[str]:
    if not isinstance(values, list):
        raise UserError(f"{path}: {field}: must be a list of {what}, got {type(values).__name__}")
    for value in values:
        if not isinstance(value, str):
            raise UserError(f"{path}: {field}: must hold {what} only, got {_shown(value)}")
    twice = next((v for v, n in Counter(values).items() if n > 1), None)
    if twice is not None:
        raise UserError(f"{path}: {field}: {_shown(twice)} appears twice")
    return values


def _check_labels(labels: object, path: Path) -> None:
    if any(not label.strip() for label in _unique_strings(labels, path, "labels", "strings")):
        raise UserError(f"{path}: labels: a label is empty")


def _check_vocab(tokens: object, path: Path) -> None:
    first = _unique_strings(tokens, path, "vocab", "strings")[:2]
    if first != [PAD, UNK]:
        raise UserError(f"{path}: vocab: must start with {PAD}, {UNK}, got {_shown(first)}")


def _check_encoding(encoding: object, path: Path) -> None:
    if not isinstance(encoding, dict):
        raise UserError(f"{path}: encoding: must be a mapping, got {type(encoding).__name__}")
    if "max_len" not in encoding or "keep" not in encoding:
        raise UserError(f"{path}: encoding: needs max_len and keep; {RETRAIN}")
    max_len = encoding["max_len"]
    if not _is_int(max_len) or not 1 <= max_len <= MAX_LEN:
        raise UserError(f"{path}: encoding.max_len: must be a whole number from 1 to {MAX_LEN}, got {_shown(max_len)}")
    if encoding["keep"] not in KEEP:
        raise UserError(f"{path}: encoding.keep: must be head or tail, got {_shown(encoding['keep'])}")


def _check_config(config: object, path: Path) -> dict[str, Any]:
    """The config with ModelConfig's defaults filled in, every field of its declared type."""
    from dataclasses import MISSING, fields

    from pipeline.model.network import ModelConfig

    if not isinstance(config, dict):
        raise UserError(f"{path}: config: must be a mapping, got {type(config).__name__}")
    types = get_type_hints(ModelConfig)
    unknown = sorted(str(k) for k in config if k not in types)
    if unknown:
        raise UserError(f"{path}: config: unknown field {_shown(unknown[0])}; saved by another version? {RETRAIN}")
    full: dict[str, Any] = {}
    for f in fields(ModelConfig):
        if f.name not in config and f.default is MISSING:
            raise UserError(f"{path}: config.{f.name}: missing; {RETRAIN}")
        value = config.get(f.name, f.default)
        kind = types[f.name]
        fits = (
            _is_int(value)
            if kind is int
            else (_is_int(value) or isinstance(value, float))
            if kind is float
            else isinstance(value, kind)
        )
        if not fits:
            raise UserError(f"{path}: config.{f.name}: must be {kind.__name__}, got {_shown(value)}")
        full[f.name] = value
    least = {"vocab_size": 2, "num_classes": 2, "embed_dim": 1, "hidden_dim": 1, "num_layers": 1}
    for name, low in least.items():
        if full[name] < low:
            raise UserError(f"{path}: config.{name}: must be at least {low}, got {full[name]}")
    for name in ("dropout", "word_dropout"):
        if not 0 <= full[name] < 1:  # NaN fails too
            raise UserError(f"{path}: config.{name}: must lie in [0, 1), got {full[name]}")
    if full["cell"] not in GATES:
        raise UserError(f"{path}: config.cell: must be one of {', '.join(GATES)}, got {_shown(full['cell'])}")
    if full["readout"] not in READOUTS:
        raise UserError(f"{path}: config.readout: must be one of {', '.join(READOUTS)}, got {_shown(full['readout'])}")
    return full


def expected_shapes(config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """The state dict's tensor shapes that RNNClassifier(ModelConfig(**config)) has, without building it."""
    embed, hidden, classes = config["embed_dim"], config["hidden_dim"], config["num_classes"]
    directions = ("", "_reverse") if config["bidirectional"] else ("",)
    rows = GATES[config["cell"]] * hidden
    shapes: dict[str, tuple[int, ...]] = {"embedding.weight": (config["vocab_size"], embed)}
    for layer in range(config["num_layers"]):
        width = embed if layer == 0 else hidden * len(directions)
        for suffix in directions:
            shapes[f"rnn.weight_ih_l{layer}{suffix}"] = (rows, width)
            shapes[f"rnn.weight_hh_l{layer}{suffix}"] = (rows, hidden)
            shapes[f"rnn.bias_ih_l{layer}{suffix}"] = (rows,)
            shapes[f"rnn.bias_hh_l{layer}{suffix}"] = (rows,)
    shapes["head.weight"] = (classes, hidden * len(directions))
    shapes["head.bias"] = (classes,)
    return shapes


def _check_weights(weights: object, config: dict[str, Any], path: Path) -> None:
    import torch

    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise UserError(f"{path}: model: must map names to tensors; {RETRAIN}")
    # Four tensors a layer and direction, two each for the embedding and the head: counted
    # first, so that a huge num_layers is refused before anything is laid out for it.
    count = 4 * config["num_layers"] * (2 if config["bidirectional"] else 1) + 3
    if len(weights) != count:
        raise UserError(f"{path}: model: holds {len(weights)} tensors, the config gives {count}; {RETRAIN}")
    expected = expected_shapes(config)
    missing = [name for name in expected if name not in weights]
    extra = sorted(str(name) for name in weights if name not in expected)
    if missing or extra:
        which = f"lacks {missing[0]!r}" if missing else f"holds {_shown(extra[0])}, which the config has no place for"
        raise UserError(f"{path}: model: {which}; the weights do not fit the config; {RETRAIN}")
    for name, shape in expected.items():
        tensor = weights[name]
        if tensor.dtype != torch.float32:
            raise UserError(f"{path}: model.{name}: must be float32, got {str(tensor.dtype).removeprefix('torch.')}")
        if tuple(tensor.shape) != shape:
            raise UserError(
                f"{path}: model.{name}: has shape {tuple(tensor.shape)}, the config gives {shape}; {RETRAIN}"
            )
        if not bool(torch.isfinite(tensor).all()):
            raise UserError(f"{path}: model.{name}: holds NaN or infinite weights; {RETRAIN}")
