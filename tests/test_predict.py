"""predict: labels new text with prepare's tokenizer and the checkpoint's own vocabulary, and
scales its probabilities by the served checkpoint's temperature.

One tiny BiRNN run is trained per module (a few seconds), published with a temperature of 2 (the
tiny validation split has no error, where evaluate's fit keeps 1) as models/birnn.pt and copied
into each test's project, so a test that tampers with the model or the vocabulary leaves the
others alone.
"""

from __future__ import annotations

import contextlib
import io as stdio
import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import make_corpus, tiny_params_dict
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.core import files, layout
from pipeline.core import params as params_module
from pipeline.data.splits import load_split
from pipeline.data.text import Vocab, tokenise
from pipeline.model.network import predict_logits
from pipeline.stages import download, prepare, publish, train
from pipeline.stages import predict as predict_module
from pipeline.stages.predict import load_classifier, probabilities

MODEL = Path("models/birnn.pt")
RUN = Path("models/birnn/seed7.pt")  # the run's own checkpoint: no temperature
VOCAB = Path("data/prepared/vocab.json")
TRAIN_TEXTS = Path("data/prepared/train.jsonl")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """data/prepared and models/birnn.pt (seed 7's run) for the tiny corpus, trained until it fits it."""
    root = tmp_path_factory.mktemp("trained")
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in make_corpus()))
    raw = tiny_params_dict()
    raw["train"].update(max_epochs=30, patience=30, lr=0.01)
    raw["birnn"].update(embed_dim=16, hidden_dim=16, dropout=0.2)
    params = params_module.parse(raw)
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(stdio.StringIO()):
        mp.chdir(root)
        download.run(params)
        prepare.run(params)
        seed = params.train.seeds[0]
        train.run(params, "birnn", seed)
        # evaluate's calibration file for the served seed, as it writes it.
        run = layout.run_checkpoint("birnn", seed)
        calibrated = {"served_seed": seed, "checkpoint_sha256": files.sha256_file(run), "temperature": 2.0, "bins": []}
        files.write_json(layout.calibration_file("birnn"), calibrated)
        publish.run(params, "birnn")
    return root


@pytest.fixture
def project(tiny_project, trained) -> Path:
    for folder in ("data/prepared", "models", "metrics"):
        shutil.copytree(trained / folder, tiny_project / folder)
    return tiny_project


def _cli(*args: str, stdin: str | bytes | None = None):
    return CliRunner().invoke(app, ["predict", *args], input=stdin)


def _json(*args: str, stdin: str | None = None) -> list[dict]:
    result = _cli("--json", *args, stdin=stdin)
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


def _probs(rows: list[dict]) -> list[dict[str, float]]:
    return [{t["label"]: t["probability"] for t in row["top_k"]} for row in rows]


def _train_docs() -> list[dict]:
    return [json.loads(line) for line in TRAIN_TEXTS.read_text(encoding="utf-8").splitlines()]


def test_training_documents_get_their_labels(project):
    docs = _train_docs()
    rows = _json(*(d["text"] for d in docs))
    assert [r["label"] for r in rows] == [d["label"] for d in docs]
    # The readable table says the same.
    result = _cli(docs[0]["text"])
    assert result.exit_code == 0
    assert docs[0]["label"] in result.stdout


def test_piped_output_is_tab_separated_lines(project):
    result = _cli("goal  match\tscore", "bank market", "--top-k", "2")
    assert result.exit_code == 0, result.output
    lines = [line.split("\t") for line in result.stdout.splitlines()]
    assert lines[0] == ["#", "text", "label", "probability", "next most likely"]
    assert [row[:2] for row in lines[1:]] == [["1", "goal match score"], ["2", "bank market"]]
    assert lines[1][2] == "sport" and float(lines[1][3]) > 0.2


def test_the_table_shows_texts_as_written(project, capsys):
    # Brackets in a text are not rich markup: "[/x]" would otherwise crash the table.
    clf = load_classifier(MODEL, VOCAB)
    texts = ["goal [/x] match", "[bold]market[/bold]"]
    predict_module._print_table(list(predict_module.predict(clf, texts, 2)), texts, 2)
    out = capsys.readouterr().out
    assert "goal [/x] match" in out and "[bold]market[/bold]" in out
    assert "next most likely" in out


def test_probabilities_match_the_prepared_arrays(project):
    # Texts read back from a file go through prepare's tokenise -> encode path: the model sees
    # exactly the ids that prepare wrote, so predict agrees with training's own forward pass.
    clf = load_classifier(MODEL, VOCAB)
    split = load_split("train")
    expected = (predict_logits(clf.model, split.ids, split.lengths, 64).double() / clf.temperature).softmax(-1)
    rows = _json("--file", str(TRAIN_TEXTS), "--top-k", "3")
    got = torch.tensor([[p[name] for name in clf.labels] for p in _probs(rows)]).double()
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


def test_json_lines_hold_sorted_top_k(project):
    texts = ["the match goal team", "bank market shares profit", "chip computer phone"]
    rows = _json("--top-k", "2", *texts)
    assert [r["index"] for r in rows] == [1, 2, 3]
    for row in rows:
        probs = [t["probability"] for t in row["top_k"]]
        assert len(probs) == 2
        assert probs == sorted(probs, reverse=True)
        assert sum(probs) <= 1.0
        assert (row["label"], row["probability"]) == (row["top_k"][0]["label"], probs[0])
    everything = _json("--top-k", "3", texts[0])[0]["top_k"]
    assert sum(t["probability"] for t in everything) == pytest.approx(1.0, abs=1e-9)
    assert {t["label"] for t in everything} == {"money", "sport", "tech"}


def test_a_text_gets_the_same_probabilities_alone_or_in_a_batch(project):
    docs = [d["text"] for d in _train_docs()]
    # Lengths from one word to past max_len (24 tokens), so batches mix very different lengths.
    texts = ["goal", docs[0], " ".join(docs[:4]), "market " * 40, docs[1]]
    together = _probs(_json("--top-k", "3", *texts))
    reversed_order = _probs(_json("--top-k", "3", *reversed(texts)))[::-1]
    alone = [_probs(_json("--top-k", "3", t))[0] for t in texts]
    for batch, rev, single in zip(together, reversed_order, alone, strict=True):
        for label in single:
            assert batch[label] == pytest.approx(single[label], abs=1e-6)
            assert rev[label] == pytest.approx(single[label], abs=1e-6)


def test_long_texts_are_truncated_like_training(project):
    # prepare.max_len is 24 with keep=head: words after the 24th must not change the answer.
    head = " ".join(tokenise(" ".join(d["text"] for d in _train_docs()[:5]))[:24])
    tail_a, tail_b = "bank market shares " * 20, "goal team coach " * 20
    rows = _probs(_json("--top-k", "3", head, f"{head} {tail_a}", f"{head}, {tail_b}"))
    for other in rows[1:]:
        assert other == pytest.approx(rows[0], abs=1e-6)
    short = _probs(_json("--top-k", "3", head.rsplit(" ", 1)[0]))[0]
    assert short != pytest.approx(rows[0], abs=1e-6)  # the 24th word still counts


def test_batches_run_in_parallel_come_back_in_input_order(project):
    clf = load_classifier(MODEL, VOCAB)
    docs = [d["text"] for d in _train_docs()]
    texts = docs + [" ".join(docs[i : i + 3]) for i in range(0, len(docs), 3)]
    one_batch, _ = probabilities(clf, texts, batch_size=len(texts), workers=1)
    many_batches, _ = probabilities(clf, texts, batch_size=3, workers=4)
    torch.testing.assert_close(many_batches, one_batch, atol=1e-6, rtol=0)


@pytest.mark.parametrize("suffix", [".txt", ".csv", ".jsonl", "stdin"])
def test_files_and_stdin_give_the_same_predictions_as_arguments(project, suffix):
    texts = ["the match, a goal!", "Bank shares\u2028and profit", "chip \u201cdata\u201d app"]
    if suffix == ".csv":
        content = "id,body\n" + "".join(f'{i},"{t}"\n' for i, t in enumerate(texts))
        args = ["--file", "in.csv", "--text-field", "body"]
    elif suffix == ".jsonl":
        content = "".join(json.dumps({"text": t}) + "\n" for t in texts)
        args = ["--file", "in.jsonl"]
    else:
        content = "\r\n".join(texts) + "\r\n"
        args = ["--file", "-" if suffix == "stdin" else "in.txt"]
    if suffix != "stdin":
        Path(args[1]).write_text(content, encoding="utf-8-sig")
    stdin = content if suffix == "stdin" else None
    assert _json(*args, stdin=stdin) == _json(*texts)


def test_a_text_of_unknown_words_still_gets_a_label_and_a_note(project):
    result = _cli("--json", "zyxx qwvv", "the match goal team")
    assert result.exit_code == 0
    assert len(result.stdout.splitlines()) == 2
    assert "#1" in result.stderr and "#2" not in result.stderr
    assert "note:" in _cli("?!").stderr  # no word at all: one <unk>, like prepare
    assert _cli("the match goal team").stderr == ""


def _write(name: str, data: str | bytes) -> str:
    path = Path(name)
    path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    return name


BAD_INPUTS = {
    "empty text": (lambda: ["good text", ""], "text 2"),
    "whitespace text": (lambda: [" \t\n "], "empty"),
    "blank line in a file": (lambda: ["--file", _write("in.txt", "goal\n \nmarket\n")], "in.txt:2"),
    "missing model": (lambda: ["--model", "baseline", "goal"], "dvc repro"),
    "missing model path": (lambda: ["--model", "nowhere.pt", "goal"], "not found"),
    "missing file": (lambda: ["--file", "nowhere.txt"], "not found"),
    "folder as file": (lambda: ["--file", "models"], "folder"),
    "not UTF-8": (lambda: ["--file", _write("in.txt", b"caf\xe9 market\n")], "UTF-8"),
    "csv without the field": (lambda: ["--file", _write("in.csv", "body\ngoal\n")], "'text'"),
    "jsonl without the field": (lambda: ["--file", _write("in.jsonl", '{"body": "a"}')], "'text'"),
    "jsonl not json": (
        lambda: ["--file", _write("in.jsonl", '{"text": "a"}\n{oo')],
        "in.jsonl: line 2: not valid JSON",
    ),
    "no texts": (list, "no texts"),
    "empty file": (lambda: ["--file", _write("in.txt", "")], "no texts"),
    "csv header only": (lambda: ["--file", _write("in.csv", "text\n")], "no texts"),
    "empty stdin": (lambda: ["--file", "-"], "no texts"),
    "texts and a file": (lambda: ["--file", _write("in.txt", "goal\n"), "market"], "not both"),
    "top-k zero": (lambda: ["--top-k", "0", "goal"], "--top-k"),
    "top-k above classes": (lambda: ["--top-k", "4", "goal"], "between 1 and 3"),
    "missing vocabulary": (lambda: ["--vocab", "nowhere.json", "goal"], "nowhere.json"),
}
# The inputs whose first text is good: its prediction is printed before the error line.
FIRST_TEXT_PRINTED = {"blank line in a file": "goal", "jsonl not json": "a"}


@pytest.mark.parametrize("case", BAD_INPUTS, ids=list(BAD_INPUTS))
def test_bad_input_is_one_line_and_exit_code_2(project, case):
    make_args, expected = BAD_INPUTS[case]
    result = _cli(*make_args(), stdin="")
    assert result.exit_code == 2, result.output
    printed = [line.split("\t")[:2] for line in result.stdout.splitlines()[1:]]
    assert printed == ([["1", FIRST_TEXT_PRINTED[case]]] if case in FIRST_TEXT_PRINTED else [])
    assert len(result.stderr.strip().splitlines()) == 1
    assert expected in result.stderr
    assert "Traceback" not in result.output


def _one_line_refusal(result, expected: str) -> None:
    assert result.exit_code == 2, result.output
    assert len(result.stderr.strip().splitlines()) == 1
    assert expected in result.stderr and "Traceback" not in result.output


class Payload:
    """Unpickling this would run code: it creates the file `marker`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def test_a_checkpoint_holding_python_objects_is_refused_unrun(project):
    ckpt = torch.load(MODEL, weights_only=True)
    marker = project / "code-ran"
    torch.save({**ckpt, "labels": Payload(marker)}, "models/pickled.pt")
    _one_line_refusal(_cli("--model", "models/pickled.pt", "goal"), "refused")
    assert not marker.exists()


def _save_variant(path: str, **changes) -> str:
    """A copy of the trained checkpoint with some entries replaced (None removes the entry)."""
    ckpt = torch.load(MODEL, weights_only=True)
    ckpt.update(changes)
    torch.save({k: v for k, v in ckpt.items() if v is not None}, path)
    return path


TEXTS = ["the match goal team", "bank market shares profit", "chip computer phone", "zyxx said"]


def test_a_checkpoint_alone_in_an_empty_folder_is_all_predict_needs(project, tmp_path, monkeypatch):
    expected = _json("--top-k", "3", *TEXTS)
    empty = tmp_path / "elsewhere"
    (empty / "path" / "to").mkdir(parents=True)
    shutil.copy2(MODEL, empty / "path" / "to" / "x.pt")
    monkeypatch.chdir(empty)  # no params.yaml, no data/prepared, no models/
    assert _json("--model", "path/to/x.pt", "--top-k", "3", *TEXTS) == expected
    assert _json("--model", str(empty / "path" / "to" / "x.pt"), "--top-k", "3", *TEXTS) == expected
    assert sorted(str(p.relative_to(empty)) for p in empty.rglob("*")) == ["path", "path/to", "path/to/x.pt"]


def test_the_vocabulary_comes_from_the_checkpoint_not_data_prepared(project):
    expected = _json("--top-k", "3", *TEXTS)
    VOCAB.write_text(json.dumps({"tokens": ["<pad>", "<unk>", "newword"]}), encoding="utf-8")
    assert _json("--top-k", "3", *TEXTS) == expected  # without --vocab the prepared file is not read
    VOCAB.unlink()
    assert _json("--top-k", "3", *TEXTS) == expected

    # Swap two words in the checkpoint's own vocabulary: "goal" now reads as "bank" did, and back.
    tokens = list(torch.load(MODEL, weights_only=True)["vocab"])
    a, b = tokens.index("goal"), tokens.index("bank")
    tokens[a], tokens[b] = tokens[b], tokens[a]
    swapped = Vocab(tuple(tokens))
    _save_variant("swapped.pt", vocab=tokens, vocab_sha256=swapped.sha256())
    texts = ["goal goal the", "bank bank the"]
    original = _probs(_json("--top-k", "3", *texts))
    swapped_probs = _probs(_json("--model", "swapped.pt", "--top-k", "3", *texts))
    assert swapped_probs[0] == pytest.approx(original[1], abs=1e-9)
    assert swapped_probs[1] == pytest.approx(original[0], abs=1e-9)
    assert original[0] != pytest.approx(original[1], abs=1e-3)  # the swap is visible


def test_vocab_option_accepts_the_training_vocabulary_and_refuses_another(project):
    expected = _json("--top-k", "3", *TEXTS)
    assert _json("--vocab", str(VOCAB), "--top-k", "3", *TEXTS) == expected
    shutil.copy2(VOCAB, "same.json")
    assert _json("--vocab", "same.json", "--top-k", "3", *TEXTS) == expected

    vocab = json.loads(VOCAB.read_text(encoding="utf-8"))
    Path("other.json").write_text(json.dumps({"tokens": [*vocab["tokens"], "newword"]}), encoding="utf-8")
    _one_line_refusal(
        _cli("--vocab", "other.json", "goal"), "models/birnn.pt: was trained with another vocabulary than other.json"
    )
    # A prepared vocabulary that changed after training is refused when it is named.
    shutil.copy2("other.json", VOCAB)
    _one_line_refusal(_cli("--vocab", str(VOCAB), "goal"), "another vocabulary")


@pytest.mark.parametrize("with_vocab_option", [False, True])
def test_an_old_checkpoint_without_a_vocabulary_is_one_line_and_exit_2(project, with_vocab_option):
    _save_variant("models/old.pt", vocab=None)
    args = ["--vocab", str(VOCAB)] if with_vocab_option else []
    result = _cli("--model", "models/old.pt", *args, "goal")
    _one_line_refusal(result, "models/old.pt: holds no vocabulary")
    assert result.stderr.startswith("error: ") and "dvc repro" in result.stderr
    assert result.stdout == ""


BAD_VOCABULARIES = {
    "not a list": ("goal match", "must be a list of strings, got str"),
    "no <pad>, <unk> first": (["goal", "match", "bank"], "must start with <pad>, <unk>"),
    "a token that is not a string": (["<pad>", "<unk>", 3], "must hold strings only, got 3"),
    "a token twice": (["<pad>", "<unk>", "goal", "goal"], "'goal' appears twice"),
}


@pytest.mark.parametrize("case", BAD_VOCABULARIES, ids=list(BAD_VOCABULARIES))
def test_a_malformed_vocabulary_in_the_checkpoint_is_refused(project, case):
    tokens, problem = BAD_VOCABULARIES[case]
    _save_variant("models/bad.pt", vocab=tokens)
    _one_line_refusal(_cli("--model", "models/bad.pt", "goal"), f"models/bad.pt: vocab: {problem}")


def test_a_vocabulary_that_does_not_fit_the_embedding_is_refused(project):
    # One word more than the embedding has rows: the new word's id would index past the table.
    tokens = [*torch.load(MODEL, weights_only=True)["vocab"], "zebra"]
    _save_variant("models/longer.pt", vocab=tokens, vocab_sha256=Vocab(tuple(tokens)).sha256())
    result = _cli("--model", "models/longer.pt", "zebra goal")
    _one_line_refusal(result, "models/longer.pt")
    assert result.stdout == ""


def test_deeply_nested_json_input_is_one_line(project):
    _write("in.jsonl", '{"text": "goal"}\n' + '{"text": ' + "[" * 50_000 + "]" * 50_000 + "}\n")
    result = _cli("--file", "in.jsonl")
    _one_line_refusal(result, "in.jsonl: line 2: JSON nested too deeply")
    assert [row.split("\t")[:2] for row in result.stdout.splitlines()[1:]] == [["1", "goal"]]


def test_input_is_read_and_printed_a_chunk_at_a_time(project, monkeypatch):
    # Texts are read as they are classified, a chunk of two at a time; the bad sixth line ends
    # the third chunk early, and the fifth text, read before it, is printed before the error.
    monkeypatch.setattr(predict_module, "CHUNK", 2)
    _write("in.txt", "goal team\nbank market\nchip data\nmatch win\nprofit tax\n\nlast one\n")
    result = _cli("--file", "in.txt")
    _one_line_refusal(result, "in.txt:6: the text is empty")
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert [row[:2] for row in rows] == [
        ["#", "text"],
        ["1", "goal team"],
        ["2", "bank market"],
        ["3", "chip data"],
        ["4", "match win"],
        ["5", "profit tax"],
    ]


def test_indices_and_notes_run_across_chunks(project, monkeypatch):
    monkeypatch.setattr(predict_module, "CHUNK", 3)
    texts = ["goal", "zzqq", "bank", "market", "xxyy", "chip", "wwvv"]
    rows = _json("--file", "-", stdin="\n".join(texts) + "\n")
    assert [r["index"] for r in rows] == list(range(1, 8))
    assert rows == _json(*texts)
    result = _cli("--file", "-", stdin="\n".join(texts) + "\n")
    assert "note: 3 text(s) (#2, #5, #7)" in result.stderr


def test_the_served_checkpoint_carries_its_runs_temperature_and_predict_applies_it(project):
    served, run = torch.load(MODEL, weights_only=True), torch.load(RUN, weights_only=True)
    calibrated = json.loads(layout.calibration_file("birnn").read_text())
    assert served["temperature"] == calibrated["temperature"] != 1.0 and "temperature" not in run
    assert {k for k in served if k != "temperature"} == set(run)  # otherwise the run's checkpoint, as trained
    for key in ("model",):
        assert all(torch.equal(served[key][name], run[key][name]) for name in run[key])

    texts = [d["text"] for d in _train_docs()] + TEXTS
    scaled = _json("--top-k", "3", *texts)
    raw = _json("--model", str(RUN), "--top-k", "3", *texts)
    # One scalar divides the logits: the labels stay, the probabilities move.
    assert [r["label"] for r in scaled] == [r["label"] for r in raw]
    assert [r["probability"] for r in scaled] != pytest.approx([r["probability"] for r in raw], abs=1e-3)
    clf = load_classifier(RUN)
    ids, lengths = split_ids(clf, texts)
    logits = predict_logits(clf.model, ids, lengths, 64).double()
    expected = (logits / calibrated["temperature"]).softmax(-1)
    got = torch.tensor([[p[name] for name in clf.labels] for p in _probs(scaled)]).double()
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


def split_ids(clf, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    from pipeline.data.text import encode

    ids, lengths = encode([tokenise(t) for t in texts], clf.vocab, clf.max_len, clf.keep)
    return torch.from_numpy(ids), torch.from_numpy(lengths)


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("nan"), "2", True])
def test_a_checkpoint_with_a_bad_temperature_is_refused(project, temperature):
    _save_variant("hot.pt", temperature=temperature)
    _one_line_refusal(_cli("--model", "hot.pt", "goal"), "hot.pt: its temperature must be a positive number")


def test_publish_refuses_a_temperature_fitted_on_another_checkpoint(project):
    path = layout.calibration_file("birnn")
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "checkpoint_sha256": "0" * 64}))
    before = MODEL.read_bytes()
    result = CliRunner().invoke(app, ["publish", "birnn"])
    _one_line_refusal(result, "metrics/calibration/birnn.json: fitted on another checkpoint than models/birnn/seed7.pt")
    assert MODEL.read_bytes() == before
