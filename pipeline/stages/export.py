"""export: a checkpoint -> an ONNX model and a JSON sidecar that serve without this package or torch.

Not a DVC stage. Reads models/<model>.pt or any checkpoint path and writes two files:

- <out>.onnx: an ONNX model for any ONNX runtime (onnxruntime, for one). Its inputs are `ids`
  (batch, steps) int64, right-padded with 0, and `lengths` (batch,) int64, the real tokens of
  each text (1..steps); its output `logits` (batch, classes) float32, already divided by the
  checkpoint's temperature (publish's, fitted on the validation split; 1 if it has none), so
  their softmax gives the probabilities of the labels in order that `pipeline predict` gives.
  Batch and steps are free. A row whose length or ids break these rules gets NaN logits, since
  a graph cannot raise. The model's metadata holds
  the sidecar too, under `classifier.json`.
- <out>.json: the sidecar: labels, vocabulary (a token's id is its position), encoding
  (max_len, keep, pad and unk ids) and the tokenizer, step by step, plus the sha256 of
  <out>.onnx, so a reader can tell that the pair belongs together. The two are published as one
  generation, the model file first: a reader who checks the hash never pairs a new model with an
  old sidecar, and a write that fails keeps the old pair.

The graph holds the checkpoint's own weights in torch's own modules, no equations written
here: the embedding and the head, and for every layer and direction the cell module of that
direction's weights in the nn.RNN/GRU/LSTM (nn.RNNCell, GRUCell, LSTMCell), stepped over the
text by torch's `scan`. Not the whole nn.RNN: torch.export unrolls the tanh RNN over the
example's steps, and (pytorch/pytorch#191855) gives nn.GRU/nn.LSTM outputs the example's
length too, so the graph would only read texts of that length; `scan` becomes an ONNX Scan
over any number of steps. The backward direction reads each text reversed in place, so in
both directions the real steps come first and no real state depends on padding. Its logits
match the checkpoint's model to float32 rounding for every cell, readout, direction and depth
(tests/test_export.py, in onnxruntime). One checkpoint exports to the same bytes in any process
and from any checkout: the nodes' records of the trace are left out.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import onnx
import torch
from torch import nn
from torch._higher_order_ops.scan import scan

from pipeline.core import files
from pipeline.core.errors import UserError
from pipeline.data import text
from pipeline.model.network import RNNClassifier
from pipeline.model.served import Classifier, checkpoint_path, load_classifier

EXPORTS = Path("exported")
SIDECAR = "classifier.json"  # the sidecar's key in the ONNX model's metadata
FORMAT = "pipeline-rnn-classifier/3"  # 3: the logits are divided by the temperature
CELLS = {"rnn": nn.RNNCell, "gru": nn.GRUCell, "lstm": nn.LSTMCell}


def _cell(rnn: nn.RNNBase, cell: str, layer: int, suffix: str) -> nn.RNNCellBase:
    """The cell module of one layer and direction of `rnn`, holding that direction's weights."""
    names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
    weights = {name: getattr(rnn, f"{name}_l{layer}{suffix}").detach() for name in names}
    with torch.device("meta"):  # no initialisation to throw away, and torch's random state stays as it was
        module = CELLS[cell](weights["weight_ih"].size(1), rnn.hidden_size)
    module.load_state_dict(weights, assign=True)
    return module


def _states(cell: nn.Module, x: torch.Tensor, hidden: int) -> torch.Tensor:
    """The cell's hidden state after every step of x (B, T, F) -> (B, T, H), from zero."""
    h = x.new_zeros(x.size(0), hidden)
    carry = (h, torch.zeros_like(h)) if isinstance(cell, nn.LSTMCell) else h  # an LSTM carries (h, c)

    def step(carry, x_t):
        carry = cell(x_t, carry)
        h = carry[0] if isinstance(carry, tuple) else carry
        return carry, h.clone()  # scan's outputs must not alias its carry

    return scan(step, carry, x, dim=1)[1]


def _reverse(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Reverse each text of x (B, T, F) in place of its real steps; index (B, T) from ServedClassifier."""
    return x.gather(1, index.unsqueeze(-1).expand_as(x))


class ServedClassifier(nn.Module):
    """RNNClassifier's eval-mode forward, built from its modules, for torch.onnx.export."""

    def __init__(self, model: RNNClassifier, temperature: float = 1.0):
        super().__init__()
        cfg = model.cfg
        self.temperature = float(temperature)
        self.readout = cfg.readout
        self.hidden_dim = cfg.hidden_dim
        self.embedding = model.embedding
        layers = range(cfg.num_layers)
        self.forward_cells = nn.ModuleList(_cell(model.rnn, cfg.cell, layer, "") for layer in layers)
        backward = (_cell(model.rnn, cfg.cell, layer, "_reverse") for layer in layers)
        self.backward_cells = nn.ModuleList(backward if cfg.bidirectional else [])
        self.head = model.head
        self.eval().requires_grad_(False)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """ids (B, T) int64 right-padded, lengths (B,) int64 with 1 <= length <= T -> logits (B, C)."""
        # A graph cannot raise: a row with a length outside 1..T or an id outside the vocabulary
        # gets NaN logits instead, and the other rows of its batch are read as usual.
        vocab = self.embedding.num_embeddings
        valid = (lengths >= 1) & (lengths <= ids.size(1)) & ((ids >= 0) & (ids < vocab)).all(1)
        ids, lengths = ids.clamp(0, vocab - 1), lengths.clamp(1, ids.size(1))
        steps = torch.arange(ids.size(1), device=ids.device)
        n = lengths.unsqueeze(1)
        real = steps < n  # (B, T)
        # Step t of a text read backwards is its token n - 1 - t; padding stays put.
        backwards = torch.where(real, n - 1 - steps, steps)
        x = self.embedding(ids)  # (B, T, E)
        for layer, cell in enumerate(self.forward_cells):
            states = [_states(cell, x, self.hidden_dim)]  # each direction in its own reading order: (B, T, H)
            if self.backward_cells:
                states.append(_states(self.backward_cells[layer], _reverse(x, backwards), self.hidden_dim))
                # The next layer reads both directions in text order: (B, T, 2 * H).
                x = torch.cat([states[0], _reverse(states[1], backwards)], dim=-1)
            else:
                x = states[0]
        out = torch.stack(states)  # (D, B, T, H)
        if self.readout == "final":
            # Both directions hold a text's final state at step length - 1.
            last = (lengths - 1).view(1, -1, 1, 1).expand(out.size(0), -1, 1, out.size(3))
            pooled = out.gather(2, last).squeeze(2)  # (D, B, H)
        elif self.readout == "mean":
            pooled = out.masked_fill(~real[None, :, :, None], 0.0).sum(2) / lengths.view(1, -1, 1).to(out.dtype)
        else:
            pooled = out.masked_fill(~real[None, :, :, None], float("-inf")).amax(2)
        logits = self.head(pooled.transpose(0, 1).flatten(1)) / self.temperature  # (B, D * H) -> (B, C)
        return logits.masked_fill(~valid.unsqueeze(1), float("nan"))


def to_onnx(model: RNNClassifier, metadata: dict[str, str], temperature: float = 1.0) -> bytes:
    """The checkpoint's model, its logits divided by `temperature`, as one ONNX file that reads
    batches of any size and length."""
    served = ServedClassifier(model.cpu().eval(), temperature)
    # Example inputs of distinct sizes, none 0 or 1, which torch.export would fix as constants.
    example = (torch.tensor([[2, 3, 0], [2, 3, 4]]), torch.tensor([2, 3]))
    batch = torch.export.Dim("batch")
    dynamic = {"ids": {0: batch, 1: torch.export.Dim("steps")}, "lengths": {0: batch}}
    # The exporter's notes (a missing torchvision, deprecations inside torch) are not the user's to act on.
    registry = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registry.level
    registry.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                served,
                example,
                dynamo=True,
                input_names=["ids", "lengths"],
                output_names=["logits"],
                dynamic_shapes=dynamic,
                verbose=False,
            )
    finally:
        registry.setLevel(level)
    assert program is not None
    proto = program.model_proto
    # torch.export falls back to the example's sizes where it cannot keep a size free: refuse that model.
    free = [[d.dim_param for d in i.type.tensor_type.shape.dim] for i in proto.graph.input]
    if not all(all(free_dims) for free_dims in free):
        raise RuntimeError(f"the ONNX graph fixed a size of its inputs: {free}")
    _drop_debug_info(proto.graph)
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value)
    return proto.SerializeToString()


def _drop_debug_info(graph: onnx.GraphProto) -> None:
    """Remove what each node records of its tracing (stack traces, FX names).

    Serving needs none of it, and it names this checkout's paths and a counter of the
    functions traced so far, so one checkpoint would export to different bytes.
    """
    for node in graph.node:
        del node.metadata_props[:]
        for attribute in node.attribute:
            for subgraph in [attribute.g, *attribute.graphs]:
                _drop_debug_info(subgraph)


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
            "ids": "int64 (batch, steps): token ids (0 <= id < len(vocab)), each text right-padded with pad_id",
            "lengths": "int64 (batch,): real tokens per text, 1 <= length <= steps",
        },
        "outputs": {
            "logits": "float32 (batch, len(labels)), already divided by `temperature`; softmax over the "
            "last axis gives the calibrated probabilities; NaN in a row whose length or ids break the rules above",
        },
        "temperature": clf.temperature,
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
    """(<out>.onnx, <out>.json); by default exported/<model name or checkpoint stem>.onnx."""
    target = out if out is not None else EXPORTS / f"{checkpoint_path(model).stem}.onnx"
    if target.suffix != ".onnx":
        raise UserError(f"--out {target}: name the ONNX file with a .onnx suffix")
    if target.is_dir():
        raise UserError(f"--out {target}: is a folder; name the .onnx file to write")
    return target, target.with_suffix(".json")


def run(model: str = "birnn", out: Path | None = None) -> None:
    """Export `model` (a name or a checkpoint path) to ONNX + JSON sidecar."""
    source = checkpoint_path(model)
    target, side = output_paths(model, out)
    if source.resolve() == target.resolve():
        raise UserError(f"--out {target}: would overwrite the checkpoint it exports; choose another path")
    clf = load_classifier(source)
    info = sidecar(clf, source)
    data = to_onnx(clf.model, {SIDECAR: json.dumps(info, ensure_ascii=False)}, clf.temperature)
    # One generation: both files replace the old pair, or (a read-only folder, a full disk: a
    # StorageError naming the file) neither does and no temp file is left.
    with files.generation() as outputs:
        files.write_bytes(outputs.file(target), data)
        # The sidecar also names the model file's hash, which the model file cannot hold.
        files.write_json(outputs.file(side), {"model_sha256": files.sha256_bytes(data), **info})
    print(f"{target}: ONNX, {len(data):,} bytes; {side}: {len(clf.vocab):,} tokens, {len(clf.labels)} labels")
