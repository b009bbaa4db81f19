"""export: a checkpoint -> a TorchScript model and a JSON sidecar that serve without this package.

Not a DVC stage. Reads models/<model>.pt or any checkpoint path and writes two files:

- <out>.pt: TorchScript, loaded with `torch.jit.load` alone. `forward(ids, lengths)` takes
  ids (B, T) int64 right-padded with 0 and lengths (B,) int64 of real tokens (1..T), and
  returns logits (B, C) float32; softmax gives the probabilities of the labels in order.
  The file also carries the sidecar as the extra file `classifier.json`.
- <out>.json: the sidecar: labels, vocabulary (a token's id is its position), encoding
  (max_len, keep, pad and unk ids) and the tokenizer, step by step, plus the sha256 of
  <out>.pt, so a reader can tell that the pair belongs together. The model file is written
  first: a reader who checks the hash never pairs a new model with an old sidecar.

The network is written again with standard ops only (`ScriptedClassifier`): the training path
runs the tanh recurrence through a custom autograd Function and a C++ extension, which
TorchScript cannot save. It reads padded batches the way the training path does: the
backward direction reads each text reversed in place, so in both directions the real steps
come first and no real state depends on padding. Its logits match the checkpoint's model to
float32 rounding for every cell, readout, direction and depth (tests/test_export.py). One
checkpoint exports to the same bytes every time (from one checkout: TorchScript's debug
information names the source file's path).
"""

from __future__ import annotations

import io as stdio
import json
from pathlib import Path

import torch
from torch import nn

from pipeline.core import files
from pipeline.core.errors import UserError
from pipeline.data import text
from pipeline.model.network import RNNClassifier
from pipeline.model.served import Classifier, checkpoint_path, load_classifier

EXPORTS = Path("exported")
SIDECAR = "classifier.json"  # the sidecar's name inside the TorchScript file
FORMAT = "pipeline-rnn-classifier/1"
GATES = {"rnn": 1, "gru": 3, "lstm": 4}  # weight rows per hidden unit, in torch's gate order


class Recurrence(nn.Module):
    """One layer of every direction of a tanh RNN, GRU or LSTM, over a padded time-major batch.

    The weights of the D directions are stacked, so each time step is one batched matrix
    product for all of them, with torch's gate order and equations (nn.RNN, nn.GRU, nn.LSTM).
    """

    def __init__(self, rnn: nn.RNNBase, layer: int, cell: str):
        super().__init__()
        suffixes = [f"_l{layer}", f"_l{layer}_reverse"][: 2 if rnn.bidirectional else 1]

        def stacked(name: str) -> nn.Parameter:
            return _frozen(torch.stack([getattr(rnn, name + s) for s in suffixes]))

        self.cell = cell
        self.w_ih = stacked("weight_ih")  # (D, G * H, in)
        self.w_hh = stacked("weight_hh")  # (D, G * H, H)
        self.b_ih = stacked("bias_ih")  # (D, G * H)
        self.b_hh = stacked("bias_hh")  # (D, G * H)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (D, T, B, in), each direction's own reading order -> states (D, T, B, H)."""
        directions, steps, batch, features = x.shape
        flat = x.reshape(directions, steps * batch, features)
        pre = torch.baddbmm(self.b_ih.unsqueeze(1), flat, self.w_ih.transpose(1, 2))  # (D, T * B, G * H)
        pre = pre.view(directions, steps, batch, self.w_ih.size(1))
        w_hh_t = self.w_hh.transpose(1, 2)
        hidden = self.w_hh.size(2)
        h = x.new_zeros(directions, batch, hidden)
        c = x.new_zeros(directions, batch, hidden)
        states: list[torch.Tensor] = []
        for t in range(steps):
            recurrent = torch.baddbmm(self.b_hh.unsqueeze(1), h, w_hh_t)  # (D, B, G * H)
            if self.cell == "rnn":
                h = torch.tanh(pre[:, t] + recurrent)
            elif self.cell == "gru":
                x_r, x_z, x_n = pre[:, t].chunk(3, dim=-1)
                h_r, h_z, h_n = recurrent.chunk(3, dim=-1)
                r = torch.sigmoid(x_r + h_r)
                z = torch.sigmoid(x_z + h_z)
                n = torch.tanh(x_n + r * h_n)
                h = (1 - z) * n + z * h
            else:
                i, f, g, o = (pre[:, t] + recurrent).chunk(4, dim=-1)
                c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                h = torch.sigmoid(o) * torch.tanh(c)
            states.append(h)
        return torch.stack(states, dim=1)


class ScriptedClassifier(nn.Module):
    """RNNClassifier's eval-mode forward in standard ops, for torch.jit.script."""

    def __init__(self, model: RNNClassifier):
        super().__init__()
        cfg = model.cfg
        self.readout = cfg.readout
        self.directions = model.num_directions
        # Plain tensors rather than nn.Embedding and nn.Linear: TorchScript writes those modules'
        # constants in Python's set order, which differs from run to run, and so would the file.
        self.embedding = _frozen(model.embedding.weight)  # (V, E)
        self.layers = nn.ModuleList([Recurrence(model.rnn, layer, cfg.cell) for layer in range(cfg.num_layers)])
        self.head_weight = _frozen(model.head.weight)  # (C, D * H)
        self.head_bias = _frozen(model.head.bias)  # (C,)
        self.eval()

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """ids (B, T) int64 right-padded, lengths (B,) int64 with 1 <= length <= T -> logits (B, C)."""
        if ids.dim() != 2 or lengths.dim() != 1 or lengths.size(0) != ids.size(0):
            raise ValueError("expected ids of shape (batch, steps) and lengths of shape (batch,)")
        lengths = lengths.to(ids.device)
        steps = ids.size(1)
        if bool((lengths < 1).any()) or bool((lengths > steps).any()):
            raise ValueError("every length must lie between 1 and the number of steps")
        if bool((ids < 0).any()) or bool((ids >= self.embedding.size(0)).any()):
            raise ValueError("ids must lie between 0 and the vocabulary size - 1")
        # (T, B): step t of a text read backwards is its token length - 1 - t; padding stays put.
        t = torch.arange(steps, device=ids.device).unsqueeze(1)
        n = lengths.unsqueeze(0)
        reverse = torch.where(t < n, n - 1 - t, t)
        x = self.embedding[ids.t()]  # (T, B, E)
        out = x.unsqueeze(0)
        for index, layer in enumerate(self.layers):
            if index > 0:
                # The next layer reads both directions in text order: (T, B, D * H).
                halves = [out[0]] if self.directions == 1 else [out[0], _reverse(out[1], reverse)]
                x = torch.cat(halves, dim=-1)
            inputs = [x] if self.directions == 1 else [x, _reverse(x, reverse)]
            out = layer(torch.stack(inputs))  # (D, T, B, H)
        # Both directions hold a text's final state at step length - 1.
        real = (t < n).unsqueeze(0).unsqueeze(-1)  # (1, T, B, 1)
        if self.readout == "final":
            last = (lengths - 1).view(1, 1, lengths.size(0), 1).expand(out.size(0), 1, out.size(2), out.size(3))
            pooled = out.gather(1, last).squeeze(1)  # (D, B, H)
        elif self.readout == "mean":
            pooled = out.masked_fill(~real, 0.0).sum(1) / lengths.view(1, -1, 1).to(out.dtype)
        else:
            pooled = out.masked_fill(~real, float("-inf")).amax(1)
        features = pooled.transpose(0, 1).reshape(ids.size(0), self.head_weight.size(1))  # (B, D * H)
        return torch.nn.functional.linear(features, self.head_weight, self.head_bias)


def _frozen(tensor: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(tensor.detach().clone(), requires_grad=False)


def _reverse(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Reverse each text of time-major x (T, B, F) in place of its real steps."""
    return x.gather(0, index.unsqueeze(-1).expand_as(x))


def script(model: RNNClassifier) -> torch.jit.ScriptModule:
    """The checkpoint's model as a TorchScript module on the CPU."""
    return torch.jit.script(ScriptedClassifier(model.cpu().eval()))


def tokenizer() -> dict[str, object]:
    """text.tokenise, spelled out for a reader in any language."""
    return {
        "steps": [
            "unicode normalization NFKC",
            "lower-case (Python str.lower)",
            "replace U+2019 and U+2018 by an apostrophe (U+0027)",
            "tokens: every match of `pattern`, left to right",
        ],
        "unicode_normalization": "NFKC",
        "lowercase": True,
        "replace": {"\u2019": "'", "\u2018": "'"},
        "pattern": text._TOKEN.pattern,
        "pattern_syntax": "Python re, str pattern (Unicode word characters)",
    }


def sidecar(clf: Classifier, source: Path) -> dict[str, object]:
    """What a server needs besides the weights: how to turn a text into ids, and what the logits mean."""
    return {
        "format": FORMAT,
        "checkpoint": {"path": str(source), "sha256": files.sha256_file(source)},
        "inputs": {
            "ids": "int64 (batch, steps): token ids, each text right-padded with pad_id",
            "lengths": "int64 (batch,): real tokens per text, 1 <= length <= steps",
        },
        "output": "float32 logits (batch, len(labels)); softmax over the last axis gives probabilities",
        "labels": list(clf.labels),
        "encoding": {
            "max_len": clf.max_len,
            "keep": clf.keep,
            "keep_means": "head keeps a text's first max_len tokens, tail its last max_len",
            "pad_id": text.PAD_ID,
            "unk_id": text.UNK_ID,
            "unknown_token": "a token not in vocab becomes unk_id",
            "empty_text": "a text without tokens is the single id unk_id",
        },
        "tokenizer": tokenizer(),
        "vocab": list(clf.vocab.tokens),
    }


def output_paths(model: str, out: Path | None) -> tuple[Path, Path]:
    """(<out>.pt, <out>.json); by default exported/<model name or checkpoint stem>.pt."""
    target = out if out is not None else EXPORTS / f"{checkpoint_path(model).stem}.pt"
    if target.suffix != ".pt":
        raise UserError(f"--out {target}: name the TorchScript file with a .pt suffix")
    if target.is_dir():
        raise UserError(f"--out {target}: is a folder; name the .pt file to write")
    return target, target.with_suffix(".json")


def run(model: str = "birnn", out: Path | None = None) -> None:
    """Export `model` (a name or a checkpoint path) to TorchScript + JSON sidecar."""
    source = checkpoint_path(model)
    target, side = output_paths(model, out)
    if source.resolve() == target.resolve():
        raise UserError(f"--out {target}: would overwrite the checkpoint it exports; choose another path")
    clf = load_classifier(source)
    scripted = script(clf.model)
    info = sidecar(clf, source)
    buffer = stdio.BytesIO()
    torch.jit.save(scripted, buffer, _extra_files={SIDECAR: json.dumps(info, ensure_ascii=False)})
    data = buffer.getvalue()
    files.write_bytes(target, data)
    # The file beside it also names the model file's hash, which the model file cannot hold.
    files.write_json(side, {"model_sha256": files.sha256_bytes(data), **info})
    print(f"{target}: TorchScript, {len(data):,} bytes; {side}: {len(clf.vocab):,} tokens, {len(clf.labels)} labels")
