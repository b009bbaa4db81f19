"""prepare: deterministic, leak-free splits; a train-only vocabulary; truncation, padding, lengths."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.data import arrays
from pipeline.data.text import PAD_ID, UNK_ID, Vocab, encode, tokenise
from pipeline.stages import download, prepare

OUT = Path("data/prepared")


def _prepared(params):
    download.run(params)
    prepare.run(params)
    return {s: arrays.load(OUT / f"{s}.npz", ("ids", "lengths", "labels")) for s in prepare.SPLITS}


def test_same_params_give_byte_identical_outputs(tiny_params):
    _prepared(tiny_params)
    first = {p.name: p.read_bytes() for p in sorted(OUT.iterdir())}
    prepare.run(tiny_params)
    second = {p.name: p.read_bytes() for p in sorted(OUT.iterdir())}
    assert first == second
    assert set(first) == {
        "train.npz",
        "val.npz",
        "test.npz",
        "train.jsonl",
        "val.jsonl",
        "test.jsonl",
        "vocab.json",
        "labels.json",
        "stats.json",
    }


def test_duplicates_are_removed_before_splitting(tiny_project, tiny_params):
    corpus = tiny_project / "corpus.jsonl"
    rows = corpus.read_text().splitlines()
    # Same text up to case and spacing: one document, however it is written.
    first = json.loads(rows[0])
    variant = {"text": "  " + first["text"].upper().replace(" ", "   "), "label": first["label"]}
    corpus.write_text("\n".join(rows + [rows[0], json.dumps(variant)]) + "\n")
    _prepared(tiny_params)
    stats = json.loads((OUT / "stats.json").read_text())
    assert stats["duplicates_removed"] == 2
    texts = [
        " ".join(tokenise(json.loads(line)["text"]))
        for s in prepare.SPLITS
        for line in (OUT / f"{s}.jsonl").read_text().splitlines()
    ]
    assert len(texts) == len(set(texts)) == len(rows)


def _rows(politics, sport, tech):
    by_label = {"politics": politics, "sport": sport, "tech": tech}
    return [{"text": text, "label": label} for label, texts in by_label.items() for text in texts]


@pytest.mark.parametrize(
    "rows, message",
    [
        # Punctuation only: no text has a token, so each is a duplicate of the first.
        (_rows(["!!!"] * 8, ["..."] * 8, ["? ?"] * 8), "no text holds a single token once normalised"),
        # Every sport text repeats a politics one: nothing of the class is left.
        (
            _rows([f"vote {k}" for k in range(8)], [f"vote {k}" for k in range(8)], [f"chip {k}" for k in range(8)]),
            "class 'sport': each of its documents repeats the text of an earlier one",
        ),
    ],
)
def test_a_class_lost_to_duplicates_is_named_for_what_happened(tiny_project, rows, message):
    (tiny_project / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    runner = CliRunner()
    assert runner.invoke(app, ["download"]).exit_code == 0
    result = runner.invoke(app, ["prepare"])
    assert result.exit_code == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not Path("data/prepared").exists()


def test_splits_are_stratified_and_sized(tiny_params):
    arrays = _prepared(tiny_params)
    stats = json.loads((OUT / "stats.json").read_text())
    sizes = {s: len(arrays[s]["labels"]) for s in prepare.SPLITS}
    assert sum(sizes.values()) == 48 and sizes["val"] == sizes["test"] == 6
    for s in prepare.SPLITS:
        counts = np.bincount(arrays[s]["labels"], minlength=3)
        assert counts.min() == counts.max(), s  # 16 per class: equal shares everywhere
        assert stats["splits"][s]["size"] == sizes[s]


def test_vocabulary_holds_no_word_seen_only_in_val_or_test(tiny_project, tiny_params):
    corpus = tiny_project / "corpus.jsonl"
    rows = [json.loads(r) for r in corpus.read_text().splitlines()]
    # Give every document a word of its own: only training documents may bring theirs in.
    for i, row in enumerate(rows):
        row["text"] += f" uniqueword{i}"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))
    _prepared(tiny_params)
    vocab = set(Vocab.load(OUT / "vocab.json").tokens)
    for split in prepare.SPLITS:
        for line in (OUT / f"{split}.jsonl").read_text().splitlines():
            own = tokenise(json.loads(line)["text"])[-1]
            assert (own in vocab) == (split == "train"), (split, own)
    stats = json.loads((OUT / "stats.json").read_text())
    assert stats["splits"]["val"]["oov_rate"] > 0 and stats["splits"]["train"]["oov_rate"] == 0


def test_vocabulary_reserves_pad_and_unk_and_respects_limits():
    docs = [["b", "a", "a", "c"], ["a", "b", "d"]]
    vocab = Vocab.build(docs, min_freq=2, max_vocab=10)
    assert vocab.tokens == ("<pad>", "<unk>", "a", "b")
    assert Vocab.build(docs, min_freq=1, max_vocab=3).tokens == ("<pad>", "<unk>", "a")
    assert vocab.ids(["a", "zzz"]) == [2, UNK_ID]


@pytest.mark.parametrize(("keep", "expected"), [("head", [2, 3, 4]), ("tail", [4, 5, 6])])
def test_truncation_keeps_the_chosen_end_and_pads_the_rest(keep, expected):
    vocab = Vocab(("<pad>", "<unk>", "a", "b", "c", "d", "e"))
    ids, lengths = encode([list("abcde"), ["b"], []], vocab, max_len=3, keep=keep)
    assert ids[0].tolist() == expected and lengths[0] == 3
    assert ids[1].tolist() == [3, PAD_ID, PAD_ID] and lengths[1] == 1
    # An empty document still has one real step, so the RNN always reads something.
    assert ids[2].tolist() == [UNK_ID, PAD_ID, PAD_ID] and lengths[2] == 1


def test_lengths_match_tokens_and_truncation_rate(tiny_params):
    arrays = _prepared(tiny_params)
    max_len = tiny_params.prepare.max_len
    stats = json.loads((OUT / "stats.json").read_text())
    for split in prepare.SPLITS:
        ids, lengths = arrays[split]["ids"], arrays[split]["lengths"]
        assert ids.shape[1] == max_len
        assert ((ids != PAD_ID).sum(1) == lengths).all()
        raw = [len(tokenise(json.loads(line)["text"])) for line in (OUT / f"{split}.jsonl").read_text().splitlines()]
        assert lengths.tolist() == [min(n, max_len) for n in raw]
        assert stats["splits"][split]["truncation_rate"] == pytest.approx(np.mean(np.array(raw) > max_len), abs=1e-6)


def test_tokeniser_normalises_case_unicode_and_apostrophes():
    assert tokenise("Don’t PANIC: ｆｕｌｌ-width, Zürich's 3.5%!") == [
        "don't",
        "panic",
        "full",
        "width",
        "zürich's",
        "3",
        "5",
    ]


def test_cli_missing_corpus_exits_2(tiny_project):
    result = CliRunner().invoke(app, ["prepare"])
    assert result.exit_code == 2
    assert "corpus not found; run `pipeline download` first" in result.output
    assert not Path("data/prepared").exists()


def test_cli_corrupt_corpus_line_exits_2_and_writes_nothing(tiny_project):
    Path("data/raw").mkdir(parents=True)
    Path("data/raw/corpus.jsonl").write_text('{"text": "a", "label": "x"}\n{oops\n')
    result = CliRunner().invoke(app, ["prepare"])
    assert result.exit_code == 2 and "corpus.jsonl: line 2: not valid JSON" in result.output
    assert not Path("data/prepared").exists()
