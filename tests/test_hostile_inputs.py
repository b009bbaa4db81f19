"""Hostile inputs through the real CLI: each is one line `error: ...` on stderr, exit code 2, no
traceback and nothing written, or, where the input is usable, a warning that names what was done.

Checkpoints whose fields have the wrong type, range or shape (predict, export, evaluate); files
that cannot be written (a read-only folder, a full disk, a path under /proc) and a reader that
closes the pipe early; a byte that is not UTF-8 deep in predict's input; integers longer than
Python's digit limit in JSON lines; labels that look the same; --params naming a folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from checkpoints import save_random_checkpoint
from conftest import ROOT
from test_download import _cli as _download
from test_download import work  # noqa: F401  # a fixture
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.core.errors import UserError
from pipeline.data.text import PAD, UNK, Vocab
from pipeline.model.checkpoints import MAX_LEN
from pipeline.stages import evaluate

TEXTS = ["the match goal team", "bank market shares", "chip phone"]


def _one_line(result, message: str) -> None:
    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines() == [result.stderr.strip()] and result.stderr.startswith("error: ")
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.output


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _subprocess(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        timeout=300,
        **kwargs,
    )


# ---- checkpoints: every field validated, the same for predict, export and evaluate --------


def _tamper(path: Path, change) -> None:
    ckpt = torch.load(path, weights_only=True)
    change(ckpt)
    torch.save(ckpt, path)


def _set(key: str, value: object):
    return lambda ckpt: ckpt.__setitem__(key, value)


def _config(key: str, value: object):
    return lambda ckpt: ckpt["config"].__setitem__(key, value)


def _max_len(value: object):
    return lambda ckpt: ckpt["encoding"].__setitem__("max_len", value)


def _weight(name: str, change):
    return lambda ckpt: ckpt["model"].__setitem__(name, change(ckpt["model"][name]))


def _nan(t: torch.Tensor) -> torch.Tensor:
    t = t.clone()
    t.view(-1)[0] = float("nan")
    return t


def _inf(t: torch.Tensor) -> torch.Tensor:
    t = t.clone()
    t.view(-1)[-1] = float("inf")
    return t


def _repeated_token(ckpt: dict) -> None:
    tokens = list(ckpt["vocab"])
    tokens[3] = tokens[2]  # "match" twice; the length, and so the embedding's rows, unchanged
    ckpt["vocab"] = tokens
    ckpt["vocab_sha256"] = Vocab(tuple(tokens)).sha256()


def _another_vocabulary(ckpt: dict) -> None:
    ckpt["vocab"] = [*ckpt["vocab"][:-1], "zebra"]  # its vocab_sha256 left as it was


BAD_CHECKPOINTS = {
    "a label twice": (_set("labels", ["money", "sport", "sport"]), "labels: 'sport' appears twice"),
    "labels as a string": (_set("labels", "abc"), "labels: must be a list of strings, got str"),
    "labels as a dict": (_set("labels", {"a": 0, "b": 1, "c": 2}), "labels: must be a list of strings, got dict"),
    "an empty label": (_set("labels", ["money", "", "tech"]), "labels: a label is empty"),
    "a label not a string": (_set("labels", ["money", 3, "tech"]), "labels: must hold strings only, got 3"),
    "labels fewer than classes": (_set("labels", ["money", "sport"]), "labels: 2 labels but the model has 3"),
    "a NaN weight": (_weight("head.weight", _nan), "model.head.weight: holds NaN or infinite weights"),
    "an infinite weight": (_weight("embedding.weight", _inf), "model.embedding.weight: holds NaN or infinite"),
    "int64 weights": (_weight("head.bias", lambda t: t.long()), "model.head.bias: must be float32, got int64"),
    "float16 weights": (
        _weight("rnn.weight_hh_l0", lambda t: t.half()),
        "model.rnn.weight_hh_l0: must be float32, got float16",
    ),
    "a weight of another shape": (
        _weight("head.weight", lambda t: torch.zeros(3, 7)),
        "model.head.weight: has shape (3, 7), the config gives (3, 5)",
    ),
    "a weight missing": (lambda ckpt: ckpt["model"].pop("head.bias"), "model: holds 6 tensors, the config gives 7"),
    "max_len a bool": (_max_len(True), f"encoding.max_len: must be a whole number from 1 to {MAX_LEN}, got True"),
    "max_len 10**12": (_max_len(10**12), "encoding.max_len: must be a whole number from 1 to"),
    "max_len 1e300": (_max_len(1e300), "encoding.max_len: must be a whole number from 1 to 100000, got 1e+300"),
    "max_len 2e8": (_max_len(200_000_000), "encoding.max_len: must be a whole number from 1 to 100000, got 200000000"),
    "max_len zero": (_max_len(0), "encoding.max_len: must be a whole number from 1 to 100000, got 0"),
    "keep unknown": (lambda ckpt: ckpt["encoding"].__setitem__("keep", "middle"), "encoding.keep: must be head"),
    "bidirectional 'yes'": (_config("bidirectional", "yes"), "config.bidirectional: must be bool, got 'yes'"),
    "hidden_dim a float": (_config("hidden_dim", 5.0), "config.hidden_dim: must be int, got 5.0"),
    "num_layers a bool": (_config("num_layers", True), "config.num_layers: must be int, got True"),
    "num_layers huge": (_config("num_layers", 10**12), "model: holds 7 tensors, the config gives"),
    "embed_dim huge": (_config("embed_dim", 10**12), "model.embedding.weight: has shape (16, 6)"),
    "dropout NaN": (_config("dropout", float("nan")), "config.dropout: must lie in [0, 1)"),
    "an unknown cell": (_config("cell", "transformer"), "config.cell: must be one of rnn, gru, lstm"),
    "an unknown config field": (_config("heads", 8), "config: unknown field 'heads'"),
    "vocab_size against the vocabulary": (_config("vocab_size", 17), "vocab: has 16 words but the model 17"),
    "a repeated token": (_repeated_token, "vocab: 'match' appears twice"),
    "a vocabulary without <pad>, <unk>": (_set("vocab", ["a", "b", *"cdefghijklmnop"]), "vocab: must start with"),
    "a vocabulary not its vocab_sha256": (_another_vocabulary, "vocab: does not match its vocab_sha256"),
    "epoch a string": (_set("epoch", "1"), "epoch: must be a whole number >= 0, got '1'"),
}


@pytest.fixture
def bad_checkpoint(tmp_path, monkeypatch, request) -> tuple[Path, str]:
    monkeypatch.chdir(tmp_path)
    change, message = BAD_CHECKPOINTS[request.param]
    path = tmp_path / "x.pt"
    save_random_checkpoint(path)
    _tamper(path, change)
    return path, message


@pytest.mark.parametrize("bad_checkpoint", BAD_CHECKPOINTS, ids=list(BAD_CHECKPOINTS), indirect=True)
def test_predict_refuses_a_checkpoint_with_a_bad_field_in_one_line(bad_checkpoint):
    path, message = bad_checkpoint
    result = CliRunner().invoke(app, ["predict", "--model", str(path), *TEXTS])
    _one_line(result, f"{path}: {message}")
    assert result.stdout == ""


@pytest.mark.parametrize("bad_checkpoint", BAD_CHECKPOINTS, ids=list(BAD_CHECKPOINTS), indirect=True)
def test_export_refuses_a_checkpoint_with_a_bad_field_and_writes_nothing(bad_checkpoint, tmp_path):
    path, message = bad_checkpoint
    before = _tree(tmp_path)
    result = CliRunner().invoke(app, ["export", "--model", str(path), "--out", str(tmp_path / "out" / "x.onnx")])
    _one_line(result, f"{path}: {message}")
    assert _tree(tmp_path) == before and not (tmp_path / "out").exists()


def test_evaluate_loads_checkpoints_through_the_same_validation(tmp_path):
    path = tmp_path / "seed1.pt"
    save_random_checkpoint(path)
    _tamper(path, _set("labels", ["money", "sport", "sport"]))
    ckpt = torch.load(path, weights_only=True)
    with pytest.raises(UserError, match="seed1.pt: labels: 'sport' appears twice"):
        evaluate.load_model(path, ckpt["labels"], ckpt["vocab_sha256"], ckpt["encoding"])


@pytest.mark.parametrize(
    "architecture",
    [{}, {"cell": "gru", "bidirectional": True}, {"cell": "lstm", "num_layers": 2, "bidirectional": True}],
    ids=["rnn", "bigru", "stacked bilstm"],
)
def test_checkpoints_saved_the_way_train_saves_them_pass(tmp_path, architecture):
    path = tmp_path / "x.pt"
    save_random_checkpoint(path, **architecture)
    result = CliRunner().invoke(app, ["predict", "--json", "--model", str(path), *TEXTS])
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == len(TEXTS)


def test_the_largest_max_len_allowed_is_accepted(tmp_path):
    path = tmp_path / "x.pt"
    save_random_checkpoint(path, max_len=MAX_LEN)
    result = CliRunner().invoke(app, ["predict", "--json", "--model", str(path), "goal"])
    assert result.exit_code == 0, result.output


# ---- files that cannot be written, and a reader that stops reading -----------------------


@pytest.fixture
def model(tmp_path) -> Path:
    path = tmp_path / "model.pt"
    save_random_checkpoint(path, tokens=(PAD, UNK, *(f"w{i}" for i in range(40))))
    return path


def test_predict_to_a_full_disk_is_one_line_and_exit_2(model, tmp_path):
    texts = tmp_path / "in.txt"
    texts.write_text("w1 w2 w3\n" * 50_000)  # more than stdout's buffer holds
    with open("/dev/full", "w") as full:
        result = subprocess.run(
            [sys.executable, "-m", "pipeline", "predict", "--model", str(model), "--file", str(texts)],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
            timeout=300,
        )
    assert result.returncode == 2
    assert result.stderr == "error: stdout: cannot write the predictions (No space left on device)\n"


def test_predict_into_a_pipe_closed_after_the_first_line_ends_quietly(model, tmp_path):
    texts = tmp_path / "in.txt"
    texts.write_text("w1 w2 w3\n" * 50_000)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "predict", "--model", str(model), "--file", str(texts)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline() == b"#\ttext\tlabel\tprobability\n"
    proc.stdout.close()  # as `| head -1` does
    stderr = proc.stderr.read()
    assert proc.wait(timeout=300) == 0
    assert stderr == b""


def _unwritable(tmp_path: Path) -> Path:
    """A folder no file can be created in: read-only where chmod binds, else under /proc (root)."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o500)
    if os.access(folder, os.W_OK):  # root writes anyway; nobody creates files under /proc
        return Path("/proc/pipeline-export")
    return folder


def test_export_into_an_unwritable_folder_is_one_line_and_leaves_nothing(model, tmp_path):
    folder = _unwritable(tmp_path)
    before = _tree(tmp_path)
    result = CliRunner().invoke(app, ["export", "--model", str(model), "--out", str(folder / "x.onnx")])
    _one_line(result, f"{folder / 'x.onnx'}: cannot be written (")
    assert _tree(tmp_path) == before
    assert not Path("/proc/pipeline-export").exists()


def test_export_under_proc_is_one_line(model, tmp_path):
    result = CliRunner().invoke(app, ["export", "--model", str(model), "--out", "/proc/x.onnx"])
    _one_line(result, "/proc/x.onnx: cannot be written (No such file or directory)")


def test_a_stage_output_that_cannot_be_written_names_the_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["plots-template", "--output", "/proc/pipeline-plots/page.html"])
    _one_line(result, "error: /proc/pipeline-plots/page.html: cannot be written (No such file or directory)")


# ---- predict's input: a bad byte deep in the file ---------------------------------------


def test_a_byte_that_is_not_utf8_after_20000_lines_names_its_line_after_printing_them_all(model, tmp_path):
    texts = tmp_path / "in.txt"
    texts.write_bytes(b"w1 w2\n" * 20_000 + b"caf\xe9 w3\n" + b"w4\n" * 10)
    result = _subprocess("predict", "--json", "--model", str(model), "--file", str(texts))
    assert result.returncode == 2
    assert [json.loads(line)["index"] for line in result.stdout.splitlines()] == list(range(1, 20_001))
    assert result.stderr == f"error: {texts}: line 20001: not UTF-8; save the file as UTF-8\n"


@pytest.mark.parametrize("suffix", [".txt", ".csv", ".jsonl"])
def test_a_byte_that_is_not_utf8_on_line_2_names_line_2(model, tmp_path, suffix):
    texts = tmp_path / f"in{suffix}"
    first, bad = {".txt": (b"", b"w1\ncaf\xe9\n"), ".csv": (b"text\n", b"w1\ncaf\xe9\n")}.get(
        suffix, (b"", b'{"text": "w1"}\n{"text": "caf\xe9"}\n')
    )
    texts.write_bytes(first + bad)
    result = CliRunner().invoke(app, ["predict", "--json", "--model", str(model), "--file", str(texts)])
    line = 3 if suffix == ".csv" else 2
    _one_line(result, f"{texts}: line {line}: not UTF-8")
    assert [json.loads(row)["index"] for row in result.stdout.splitlines()] == [1]


# ---- integers beyond Python's digit limit ---------------------------------------------


HUGE = "9" * 5001


def test_predict_jsonl_with_a_5001_digit_integer_names_its_line(model, tmp_path):
    texts = tmp_path / "in.jsonl"
    texts.write_text(f'{{"text": "w1"}}\n{{"text": "w2"}}\n{{"text": "w3", "n": {HUGE}}}\n')
    result = CliRunner().invoke(app, ["predict", "--json", "--model", str(model), "--file", str(texts)])
    _one_line(result, f"{texts}: line 3: a number with more than 4300 digits")
    assert [json.loads(row)["index"] for row in result.stdout.splitlines()] == [1, 2]


def test_download_jsonl_with_a_5001_digit_label_names_its_line(work):  # noqa: F811
    Path("in.jsonl").write_text(f'{{"text": "a", "label": "x"}}\n{{}}\n{{"text": "b", "label": {HUGE}}}\n')
    result = _download(source="jsonl", path="in.jsonl")
    _one_line(result, "in.jsonl: line 3: a number with more than 4300 digits")
    assert not Path("data").exists()


# ---- labels that look the same -------------------------------------------------------


def _corpus_with(labels: list[object]) -> None:
    rows = [{"text": f"text number {i}", "label": label} for i, label in enumerate(labels * 4)]
    Path("in.jsonl").write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def _manifest() -> dict:
    return json.loads(Path("data/raw/manifest.json").read_text())


def test_nfc_and_nfd_spellings_are_one_class_with_a_warning(work):  # noqa: F811
    _corpus_with(["caf\u00e9", "cafe\u0301", "sport"])
    result = _download(source="jsonl", path="in.jsonl")
    assert result.exit_code == 0, result.output
    assert _manifest()["class_counts"] == {"caf\u00e9": 8, "sport": 4}
    assert "warning: in.jsonl: the labels 'cafe\\u0301' were read as 'caf\\xe9'" in result.stderr


def test_a_zero_width_space_in_a_label_is_removed_with_a_warning(work):  # noqa: F811
    _corpus_with(["sport", "sport\u200b", "\u200btech", "money"])
    result = _download(source="jsonl", path="in.jsonl")
    assert result.exit_code == 0, result.output
    assert _manifest()["class_counts"] == {"money": 4, "sport": 8, "tech": 4}
    assert "the labels 'sport\\u200b' were read as 'sport'" in result.stderr
    assert "the labels '\\u200btech' were read as 'tech'" in result.stderr


def test_labels_that_differ_only_by_case_stay_apart_and_are_named(work):  # noqa: F811
    _corpus_with(["Sport", "sport", "tech"])
    result = _download(source="jsonl", path="in.jsonl")
    assert result.exit_code == 0, result.output
    assert _manifest()["class_counts"] == {"Sport": 4, "sport": 4, "tech": 4}
    assert "warning: in.jsonl: the labels 'Sport', 'sport' are separate classes" in result.stderr
    assert "tech" not in result.stderr


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_a_json_label_that_is_not_a_number_is_refused_naming_its_line(work, constant):  # noqa: F811
    Path("in.jsonl").write_text(
        '{"text": "a", "label": "x"}\n{"text": "b", "label": "y"}\n' + f'{{"text": "c", "label": {constant}}}\n'
    )
    result = _download(source="jsonl", path="in.jsonl")
    _one_line(result, "in.jsonl: line 3: the label is ")
    assert not Path("data").exists()


# ---- the command line itself ---------------------------------------------------------


def test_params_naming_a_folder_is_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("conf").mkdir()
    result = CliRunner().invoke(app, ["download", "--params", "conf"])
    _one_line(result, "error: --params conf: is a folder; name the params file, e.g. conf/params.yaml")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["conf"]
