"""export: an ONNX model and a JSON sidecar that classify like the checkpoint, without torch or this package.

The exported files are served from .venv-onnx (`make install` creates it), a virtual environment
with onnxruntime and numpy and neither torch nor `pipeline`: a client there runs the models on
batches of ids, and classifies texts the way a server would, reading the sidecar and tokenising
with `re` and `unicodedata` as it describes. One such process serves every test of this module.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from checkpoints import save_random_checkpoint
from conftest import ROOT
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.core import files
from pipeline.data import text
from pipeline.model.served import load_classifier
from pipeline.stages import export
from pipeline.stages.predict import probabilities

ONNX_PYTHON = ROOT / ".venv-onnx" / "bin" / "python"
# (cell, readout, bidirectional, layers): every pair of values of any two of the four occurs in
# some row. Each export takes seconds, so the 36 rows of the full product would take minutes.
COMBINATIONS = [
    ("rnn", "final", True, 1),
    ("rnn", "mean", False, 2),
    ("rnn", "max", True, 2),
    ("gru", "final", False, 2),
    ("gru", "mean", True, 1),
    ("gru", "max", True, 2),
    ("lstm", "final", True, 2),
    ("lstm", "mean", True, 2),
    ("lstm", "max", False, 1),
]
GOOD_ROWS = [0, 5]
TEMPERATURE = (
    2.5  # of the CLI-exported served checkpoint  # of the batch that breaks the inputs' rules in its other rows
)
MAX_LEN = 40
# (lengths, steps): every length 1..MAX_LEN in one batch, mixed lengths with padding, no padding
# at all, padding past the longest text, a single token.
BATCHES = [
    (random.Random(0).sample(range(1, MAX_LEN + 1), MAX_LEN), MAX_LEN),
    ([12, 1, 7, 3, 12, 5], 12),
    ([4, 4, 4], 4),
    ([2, 9, 1], 30),
    ([1], 1),
]
TEXTS = [
    "Match GOAL team!",
    "Don\u2019t PANIC: \uff46\uff55\uff4c\uff4c-width, Z\u00fcrich's 3.5%!",
    "!!! ... ???",  # no token at all: one <unk>
    "words the model never saw",
    "bank " * 20 + "chip phone",  # longer than max_len: the tail is kept
    "shares\u2028market \u2018goal\u2019",
]

# How a server in any language would read the sidecar's tokenizer; run here and in the client.
TOKENISE = """
def sidecar_tokenise(text, tok):
    text = unicodedata.normalize(tok["unicode_normalization"], text)
    if tok["lowercase"]:
        text = text.lower()
    for old, new in tok["replace"].items():
        text = text.replace(old, new)
    return re.findall(tok["pattern"], text)
"""

CLIENT = (
    """
import hashlib, importlib.util, json, re, sys, unicodedata
import numpy as np
import onnxruntime
"""
    + TOKENISE
    + """
def encode(texts, side):
    enc, index = side["encoding"], {t: i for i, t in enumerate(side["vocab"])}
    rows = []
    for text in texts:
        ids = [index.get(t, enc["unk_id"]) for t in sidecar_tokenise(text, side["tokenizer"])] or [enc["unk_id"]]
        rows.append(ids[: enc["max_len"]] if enc["keep"] == "head" else ids[-enc["max_len"] :])
    lengths = np.array([len(r) for r in rows], dtype=np.int64)
    ids = np.full((len(rows), lengths.max()), enc["pad_id"], dtype=np.int64)
    for k, r in enumerate(rows):
        ids[k, : len(r)] = r
    return ids, lengths

def session(model_file):
    return onnxruntime.InferenceSession(model_file, providers=["CPUExecutionProvider"])

job = json.load(open(sys.argv[1]))
for model_file, batches in job["logits"]:
    model = session(model_file)
    for ids_file, lengths_file, logits_file in batches:
        np.save(logits_file, model.run(["logits"], {"ids": np.load(ids_file), "lengths": np.load(lengths_file)})[0])
model_file, sidecar_file, output_file = job["texts"]
side = json.load(open(sidecar_file, encoding="utf-8"))
model = session(model_file)
ids, lengths = encode(job["input_texts"], side)
logits = model.run(["logits"], {"ids": ids, "lengths": lengths})[0].astype(np.float64)
exp = np.exp(logits - logits.max(-1, keepdims=True))
result = {
    "probabilities": (exp / exp.sum(-1, keepdims=True)).tolist(),
    "labels": side["labels"],
    "hash_matches": hashlib.sha256(open(model_file, "rb").read()).hexdigest() == side["model_sha256"],
    "metadata": json.loads(model.get_modelmeta().custom_metadata_map["classifier.json"]),
    "inputs": [[i.name, i.type, i.shape] for i in model.get_inputs()],
    "outputs": [[o.name, o.type, o.shape] for o in model.get_outputs()],
    "importable": {name: importlib.util.find_spec(name) is not None for name in ("torch", "pipeline")},
}
json.dump(result, open(output_file, "w"))
"""
)


def _batch(lengths: list[int], steps: int, vocab_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.full((len(lengths), steps), text.PAD_ID)
    for row, n in enumerate(lengths):
        ids[row, :n] = torch.randint(text.UNK_ID, vocab_size, (n,), generator=g)
    return ids, torch.tensor(lengths)


def _one_line_error(result, message: str) -> None:
    assert result.exit_code == 2, result.output
    assert result.stderr == f"error: {result.stderr.removeprefix('error: ')}"
    assert message in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.output


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> dict:
    """Export every combination and a CLI-exported model, then serve them all in one onnxruntime process."""
    if not ONNX_PYTHON.is_file():
        pytest.fail(f"{ONNX_PYTHON} is missing: `make install` creates it (onnxruntime, without torch)", pytrace=False)
    root = tmp_path_factory.mktemp("export")
    job: dict = {"logits": []}
    expected, got = {}, {}
    for k, (cell, readout, bidirectional, layers) in enumerate(COMBINATIONS):
        name = f"{cell}-{readout}-{'bi' if bidirectional else 'uni'}-{layers}"
        arch = dict(cell=cell, readout=readout, bidirectional=bidirectional, num_layers=layers, dropout=0.3)
        model = save_random_checkpoint(root / f"{name}.ckpt", seed=k, max_len=MAX_LEN, **arch)
        export.run(str(root / f"{name}.ckpt"), root / f"{name}.onnx")
        batches = []
        for b, (lengths, steps) in enumerate(BATCHES):
            ids, lengths_t = _batch(lengths, steps, model.cfg.vocab_size, seed=k * 10 + b)
            stem = root / f"{name}.{b}"
            np.save(f"{stem}.ids.npy", ids.numpy())
            np.save(f"{stem}.lengths.npy", lengths_t.numpy())
            batches.append([f"{stem}.ids.npy", f"{stem}.lengths.npy", f"{stem}.logits.npy"])
            with torch.no_grad():
                expected[name, b] = model(ids, lengths_t).numpy()
        job["logits"].append([str(root / f"{name}.onnx"), batches])

    # The CLI with its defaults, in a project folder: models/birnn.pt -> exported/birnn.{onnx,json}.
    project = root / "project"
    (project / "models").mkdir(parents=True)
    # A served checkpoint: publish has written its temperature into it.
    save_random_checkpoint(
        project / "models/birnn.pt", max_len=5, keep="tail", bidirectional=True, readout="max", temperature=TEMPERATURE
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(project)
        result = CliRunner().invoke(app, ["export"])
        clf = load_classifier(Path("models/birnn.pt"))
        predicted = probabilities(clf, TEXTS, workers=1)[0].tolist()
        unscaled = probabilities(dataclasses.replace(clf, temperature=1.0), TEXTS, workers=1)[0].tolist()
    assert result.exit_code == 0, result.output
    exported = project / "exported"
    # Rows that break the inputs' rules beside good ones: lengths 0 and past the steps, ids -1 and past the vocabulary.
    vocab = clf.model.cfg.vocab_size
    ids = torch.tensor([[2, 3, 4], [2, 3, 4], [2, 3, 4], [2, -1, 4], [2, 3, vocab], [5, 6, 0]])
    lengths_t = torch.tensor([3, 0, 4, 3, 3, 2])
    np.save(root / "bad.ids.npy", ids.numpy())
    np.save(root / "bad.lengths.npy", lengths_t.numpy())
    job["logits"].append(
        [str(exported / "birnn.onnx"), [[str(root / f"bad.{a}.npy") for a in ("ids", "lengths", "logits")]]]
    )
    with torch.no_grad():  # the served model's logits are divided by its temperature
        expected["birnn", 0] = clf.model(ids[GOOD_ROWS], lengths_t[GOOD_ROWS]).numpy() / TEMPERATURE
    job["texts"] = [str(exported / "birnn.onnx"), str(exported / "birnn.json"), str(root / "texts.json")]
    job["input_texts"] = TEXTS

    (root / "job.json").write_text(json.dumps(job))
    (root / "client.py").write_text(CLIENT)
    # -I: neither PYTHONPATH nor the current folder is on the client's path.
    subprocess.run([str(ONNX_PYTHON), "-I", str(root / "client.py"), str(root / "job.json")], cwd=root, check=True)
    for model_file, batches in job["logits"]:
        for b, (_, _, logits_file) in enumerate(batches):
            got[Path(model_file).stem, b] = np.load(logits_file)
    return {
        "expected": expected,
        "got": got,
        "texts": json.loads((root / "texts.json").read_text()),
        "predicted": predicted,
        "unscaled": unscaled,
        "project": project,
        "exported": exported,
        "checkpoint": project / "models/birnn.pt",
        "cli_output": result.stdout,
    }


@pytest.mark.parametrize(("cell", "readout", "bidirectional", "layers"), COMBINATIONS)
def test_the_onnx_model_gives_the_checkpoints_logits_for_texts_of_any_length(
    served, cell, readout, bidirectional, layers
):
    name = f"{cell}-{readout}-{'bi' if bidirectional else 'uni'}-{layers}"
    for b in range(len(BATCHES)):
        expected, got = served["expected"][name, b], served["got"][name, b]
        assert got.shape == expected.shape and got.dtype == np.float32
        assert np.abs(got - expected).max() <= 1e-5, (b, np.abs(got - expected).max())


def test_a_row_that_breaks_the_inputs_rules_gets_nan_logits_and_spares_its_batch(served):
    got = served["got"]["birnn", 0]
    bad = [row for row in range(len(got)) if row not in GOOD_ROWS]
    assert np.isnan(got[bad]).all()
    assert np.abs(got[GOOD_ROWS] - served["expected"]["birnn", 0]).max() <= 1e-5


def test_the_client_has_neither_torch_nor_the_package(served):
    assert served["texts"]["importable"] == {"torch": False, "pipeline": False}


def test_the_onnx_model_reads_any_batch_size_and_length(served):
    texts = served["texts"]
    assert texts["inputs"] == [["ids", "tensor(int64)", ["batch", "steps"]], ["lengths", "tensor(int64)", ["batch"]]]
    assert texts["outputs"] == [["logits", "tensor(float)", ["batch", 3]]]


def test_a_client_without_torch_or_the_package_classifies_texts_like_predict(served):
    texts = served["texts"]
    assert texts["hash_matches"]
    assert texts["labels"] == ["money", "sport", "tech"]
    assert len(texts["probabilities"]) == len(TEXTS)
    for got, expected in zip(texts["probabilities"], served["predicted"], strict=True):
        assert got == pytest.approx(expected, abs=1e-5)
    # The temperature is in the graph: without it the probabilities would be others.
    for got, unscaled in zip(texts["probabilities"], served["unscaled"], strict=True):
        assert got != pytest.approx(unscaled, abs=1e-3)


def test_the_sidecar_holds_vocabulary_labels_encoding_and_tokenizer(served):
    side = json.loads((served["exported"] / "birnn.json").read_text(encoding="utf-8"))
    ckpt = torch.load(served["checkpoint"], weights_only=True)
    assert side["vocab"] == ckpt["vocab"] and side["labels"] == ckpt["labels"]
    assert side["encoding"]["max_len"] == 5 and side["encoding"]["keep"] == "tail"
    assert (side["encoding"]["pad_id"], side["encoding"]["unk_id"]) == (0, 1)
    assert side["temperature"] == TEMPERATURE == ckpt["temperature"]
    assert side["model_sha256"] == hashlib.sha256((served["exported"] / "birnn.onnx").read_bytes()).hexdigest()
    assert side["checkpoint"]["sha256"] == files.sha256_file(served["checkpoint"])
    # The model file carries the same sidecar, less the hash of itself.
    assert served["texts"]["metadata"] == {k: v for k, v in side.items() if k != "model_sha256"}
    assert served["cli_output"].startswith("exported/birnn.onnx: ONNX")


def test_the_same_checkpoint_exports_to_the_same_bytes_in_any_process(served):
    # Another process, with other string hashing, and which has traced nothing before.
    command = [sys.executable, "-m", "pipeline", "export", "--out", "again/birnn.onnx"]
    env = {**os.environ, "PYTHONHASHSEED": "1", "PYTHONPATH": str(ROOT)}
    subprocess.run(command, cwd=served["project"], env=env, check=True, capture_output=True)
    for name in ("birnn.onnx", "birnn.json"):
        assert (served["project"] / "again" / name).read_bytes() == (served["exported"] / name).read_bytes()


_namespace: dict = {}
exec("import re, unicodedata\n" + TOKENISE, _namespace)


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_the_sidecars_tokenizer_is_the_pipelines(sample):
    assert _namespace["sidecar_tokenise"](sample, export.tokenizer()) == text.tokenise(sample)


def _old_checkpoint(path: Path) -> str:
    save_random_checkpoint(path)
    ckpt = torch.load(path, weights_only=True)
    del ckpt["vocab"]
    torch.save(ckpt, path)
    return str(path)


BAD = {
    "missing file": (lambda: ["--model", "nope.pt"], "nope.pt: model checkpoint not found"),
    "model not trained": (lambda: [], "models/birnn.pt: model checkpoint not found"),
    "not a checkpoint": (lambda: ["--model", _write("junk.pt", b"hi")], "junk.pt: not a readable checkpoint"),
    "empty file": (lambda: ["--model", _write("empty.pt", b"")], "empty.pt: not a readable checkpoint"),
    "no vocabulary": (lambda: ["--model", _old_checkpoint(Path("old.pt"))], "old.pt: holds no vocabulary"),
    "out not .onnx": (lambda: ["--model", _good(), "--out", "m.pt"], "name the ONNX file with a .onnx suffix"),
    "out a folder": (lambda: ["--model", _good(), "--out", _folder("dir.onnx")], "dir.onnx: is a folder"),
    "out the checkpoint": (
        lambda: ["--model", _good("good.onnx"), "--out", "good.onnx"],
        "would overwrite the checkpoint",
    ),
}


def _write(name: str, data: bytes) -> str:
    Path(name).write_bytes(data)
    return name


def _good(name: str = "good.pt") -> str:
    save_random_checkpoint(Path(name))
    return name


def _folder(name: str) -> str:
    Path(name).mkdir()
    return name


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_a_bad_checkpoint_or_output_is_one_line_exit_2_and_writes_nothing(tmp_path, monkeypatch, case):
    monkeypatch.chdir(tmp_path)
    make_args, message = BAD[case]
    args = make_args()
    before = sorted(p.name for p in tmp_path.iterdir())
    result = CliRunner().invoke(app, ["export", *args])
    _one_line_error(result, message)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
