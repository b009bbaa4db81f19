"""export: a TorchScript model and a JSON sidecar that classify like the checkpoint, without this package.

The exported files are loaded in a separate Python process in which `import pipeline` fails: it
reads the sidecar, tokenises with `re` and `unicodedata` as the sidecar describes, and runs the
model with `torch.jit.load` alone. One such process serves every test of this module.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

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

COMBINATIONS = list(itertools.product(["rnn", "gru", "lstm"], ["final", "mean", "max"], [False, True], [1, 2]))
# (lengths, steps): mixed lengths with padding, no padding at all, padding past the longest text, one token.
BATCHES = [([12, 1, 7, 3, 12, 5], 12), ([4, 4, 4], 4), ([2, 9, 1], 30), ([1], 1)]
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
import hashlib, json, re, sys, unicodedata
sys.modules["pipeline"] = None  # `import pipeline` fails from here on: serving must not need it
import torch
"""
    + TOKENISE
    + """
def encode(texts, side):
    enc, index = side["encoding"], {t: i for i, t in enumerate(side["vocab"])}
    rows = []
    for text in texts:
        ids = [index.get(t, enc["unk_id"]) for t in sidecar_tokenise(text, side["tokenizer"])] or [enc["unk_id"]]
        rows.append(ids[: enc["max_len"]] if enc["keep"] == "head" else ids[-enc["max_len"] :])
    lengths = torch.tensor([len(r) for r in rows])
    ids = torch.full((len(rows), int(lengths.max())), enc["pad_id"])
    for k, r in enumerate(rows):
        ids[k, : len(r)] = torch.tensor(r)
    return ids, lengths

job = json.load(open(sys.argv[1]))
with torch.inference_mode():
    for model_file, inputs_file, output_file in job["logits"]:
        model = torch.jit.load(model_file)
        torch.save([model(ids, lengths) for ids, lengths in torch.load(inputs_file)], output_file)
    model_file, sidecar_file, output_file = job["texts"]
    side = json.load(open(sidecar_file, encoding="utf-8"))
    extra = {"classifier.json": ""}
    model = torch.jit.load(model_file, _extra_files=extra)
    ids, lengths = encode(job["input_texts"], side)
    result = {
        "probabilities": model(ids, lengths).double().softmax(-1).tolist(),
        "labels": side["labels"],
        "hash_matches": hashlib.sha256(open(model_file, "rb").read()).hexdigest() == side["model_sha256"],
        "extra_file": json.loads(extra["classifier.json"]),
        "pipeline_imported": sys.modules["pipeline"] is not None,
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
    """Export every combination and a CLI-exported model, then serve them all in one clean process."""
    root = tmp_path_factory.mktemp("export")
    job: dict = {"logits": []}
    expected = {}
    for k, (cell, readout, bidirectional, layers) in enumerate(COMBINATIONS):
        name = f"{cell}-{readout}-{'bi' if bidirectional else 'uni'}-{layers}"
        arch = dict(cell=cell, readout=readout, bidirectional=bidirectional, num_layers=layers, dropout=0.3)
        model = save_random_checkpoint(root / f"{name}.ckpt", seed=k, **arch)
        export.run(str(root / f"{name}.ckpt"), root / f"{name}.pt")
        batches = [
            _batch(lengths, steps, model.cfg.vocab_size, seed=k * 10 + b) for b, (lengths, steps) in enumerate(BATCHES)
        ]
        torch.save(batches, root / f"{name}.inputs")
        with torch.no_grad():
            expected[name] = [model(ids, lengths) for ids, lengths in batches]
        job["logits"].append([str(root / f"{name}.pt"), str(root / f"{name}.inputs"), str(root / f"{name}.out")])

    # The CLI with its defaults, in a project folder: models/birnn.pt -> exported/birnn.{pt,json}.
    project = root / "project"
    (project / "models").mkdir(parents=True)
    save_random_checkpoint(project / "models/birnn.pt", max_len=5, keep="tail", bidirectional=True, readout="max")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(project)
        result = CliRunner().invoke(app, ["export"])
        clf = load_classifier(Path("models/birnn.pt"))
        predicted = probabilities(clf, TEXTS, workers=1)[0].tolist()
    assert result.exit_code == 0, result.output
    exported = project / "exported"
    job["texts"] = [str(exported / "birnn.pt"), str(exported / "birnn.json"), str(root / "texts.json")]
    job["input_texts"] = TEXTS

    (root / "job.json").write_text(json.dumps(job))
    (root / "client.py").write_text(CLIENT)
    # -I: neither PYTHONPATH nor the current folder is on the client's path.
    subprocess.run([sys.executable, "-I", str(root / "client.py"), str(root / "job.json")], cwd=root, check=True)
    got = {Path(model_file).stem: torch.load(out) for model_file, _, out in job["logits"]}
    return {
        "expected": expected,
        "got": got,
        "texts": json.loads((root / "texts.json").read_text()),
        "predicted": predicted,
        "exported": exported,
        "checkpoint": project / "models/birnn.pt",
        "cli_output": result.stdout,
    }


@pytest.mark.parametrize(("cell", "readout", "bidirectional", "layers"), COMBINATIONS)
def test_the_exported_model_gives_the_checkpoints_logits(served, cell, readout, bidirectional, layers):
    name = f"{cell}-{readout}-{'bi' if bidirectional else 'uni'}-{layers}"
    for expected, got in zip(served["expected"][name], served["got"][name], strict=True):
        assert got.shape == expected.shape
        assert torch.allclose(got, expected, rtol=0, atol=1e-5), (got - expected).abs().max().item()


def test_a_client_without_the_package_classifies_texts_like_predict(served):
    texts = served["texts"]
    assert not texts["pipeline_imported"]
    assert texts["hash_matches"]
    assert texts["labels"] == ["money", "sport", "tech"]
    assert len(texts["probabilities"]) == len(TEXTS)
    for got, expected in zip(texts["probabilities"], served["predicted"], strict=True):
        assert got == pytest.approx(expected, abs=1e-5)


def test_the_sidecar_holds_vocabulary_labels_encoding_and_tokenizer(served):
    side = json.loads((served["exported"] / "birnn.json").read_text(encoding="utf-8"))
    ckpt = torch.load(served["checkpoint"], weights_only=True)
    assert side["vocab"] == ckpt["vocab"] and side["labels"] == ckpt["labels"]
    assert side["encoding"]["max_len"] == 5 and side["encoding"]["keep"] == "tail"
    assert (side["encoding"]["pad_id"], side["encoding"]["unk_id"]) == (0, 1)
    assert side["model_sha256"] == hashlib.sha256((served["exported"] / "birnn.pt").read_bytes()).hexdigest()
    assert side["checkpoint"]["sha256"] == files.sha256_file(served["checkpoint"])
    # The model file carries the same sidecar, less the hash of itself.
    assert served["texts"]["extra_file"] == {k: v for k, v in side.items() if k != "model_sha256"}
    assert served["cli_output"].startswith("exported/birnn.pt: TorchScript")


_namespace: dict = {}
exec("import re, unicodedata\n" + TOKENISE, _namespace)


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_the_sidecars_tokenizer_is_the_pipelines(sample):
    assert _namespace["sidecar_tokenise"](sample, export.tokenizer()) == text.tokenise(sample)


def test_bad_inputs_to_the_exported_model_are_refused(tmp_path):
    model = save_random_checkpoint(tmp_path / "m.ckpt")
    scripted = export.script(model)
    ids = torch.full((2, 3), 2)
    with pytest.raises(torch.jit.Error, match="every length must lie between 1"):
        scripted(ids, torch.tensor([0, 3]))
    with pytest.raises(torch.jit.Error, match="every length must lie between 1"):
        scripted(ids, torch.tensor([4, 3]))
    with pytest.raises(torch.jit.Error, match="ids must lie between 0"):
        scripted(torch.full((2, 3), model.cfg.vocab_size), torch.tensor([3, 3]))
    with pytest.raises(torch.jit.Error, match="expected ids of shape"):
        scripted(ids, torch.tensor([3]))


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
    "out not .pt": (lambda: ["--model", _good(), "--out", "m.json"], "name the TorchScript file with a .pt suffix"),
    "out a folder": (lambda: ["--model", _good(), "--out", _folder("dir.pt")], "dir.pt: is a folder"),
    "out the checkpoint": (lambda: ["--model", _good(), "--out", "good.pt"], "would overwrite the checkpoint"),
}


def _write(name: str, data: bytes) -> str:
    Path(name).write_bytes(data)
    return name


def _good() -> str:
    save_random_checkpoint(Path("good.pt"))
    return "good.pt"


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


def test_the_same_checkpoint_exports_to_the_same_bytes_in_any_process(tmp_path):
    save_random_checkpoint(tmp_path / "m.ckpt", cell="lstm", bidirectional=True, num_layers=2)
    outputs = []
    for seed in ("1", "2"):  # Python's string hashing differs between the two processes
        out = tmp_path / f"run{seed}" / "m.pt"
        command = [sys.executable, "-m", "pipeline", "export", "--model", "m.ckpt", "--out", str(out)]
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(ROOT)}
        subprocess.run(command, cwd=tmp_path, env=env, check=True, capture_output=True)
        outputs.append((out.read_bytes(), out.with_suffix(".json").read_bytes()))
    assert outputs[0] == outputs[1]
