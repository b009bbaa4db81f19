"""Silent data problems made loud: broken CSV rows, labels that are text, corpora too small to
split, single-class corpora, tiny classes, and line separators through the whole pipeline.

A refusal is exit code 2, one line naming the problem, and every output file byte-identical.
"""

from __future__ import annotations

import contextlib
import csv
import io as stdio
import json
import math
from pathlib import Path

import pytest
import yaml
from conftest import make_corpus, tiny_params_dict
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.core import files
from pipeline.core import params as params_module
from pipeline.core.params import MODELS
from pipeline.data import arrays
from pipeline.stages import download, evaluate, prepare, train


def _write_csv(rows, path="corpus.csv", header=("text", "label")) -> None:
    with open(path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)


def _write_jsonl(rows, path="corpus.jsonl") -> None:
    Path(path).write_text("".join(json.dumps({"text": t, "label": line}) + "\n" for t, line in rows))


def _cli(stage: str, **download):
    raw = tiny_params_dict()
    raw["download"].update(download)
    Path("params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return CliRunner().invoke(app, [stage])


def _outputs() -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(Path("data").rglob("*")) if p.is_file()}


def _refused(result, *expected: str) -> None:
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: "), result.stderr
    for text in expected:
        assert text in result.stderr, result.stderr


@pytest.fixture
def good(tiny_project):
    """data/raw and data/prepared from the tiny corpus; returns the files as they are now."""
    assert _cli("download").exit_code == 0
    assert _cli("prepare").exit_code == 0
    return _outputs()


def _docs(n_per_class=16):
    return [(d["text"], d["label"]) for d in make_corpus(n_per_class)]


def test_a_stray_quote_in_a_csv_is_reported_with_its_line(good):
    rows = _docs()
    _write_csv(rows)
    lines = Path("corpus.csv").read_text().splitlines(keepends=True)
    # A quote opened and never closed: the parser runs on into the next rows.
    lines[5] = '"' + lines[5]
    Path("corpus.csv").write_text("".join(lines))
    _refused(_cli("download", source="csv", path="corpus.csv"), "corpus.csv: line ", "stray quote")
    assert _outputs() == good


def test_an_unquoted_comma_that_shifts_columns_is_reported(good):
    Path("corpus.csv").write_text(
        "text,label\nShares rose, figures show.,money\n" + "".join(f"{t},{line}\n" for t, line in _docs())
    )
    _refused(_cli("download", source="csv", path="corpus.csv"), "line 2: 3 fields where the header has 2")
    assert _outputs() == good


def test_a_label_that_reads_like_a_sentence_is_refused(good):
    _write_csv(_docs()[:10] + [("Shares rose", "figures show.")] + _docs()[10:])
    _refused(
        _cli("download", source="csv", path="corpus.csv"), "line 12: the label 'figures show.' reads like a sentence"
    )
    assert _outputs() == good


def test_a_label_column_of_ids_is_refused(good):
    rows = [(t, line, str(i)) for i, (t, line) in enumerate(_docs())]
    _write_csv(rows, header=("text", "topic", "label"))
    _refused(
        _cli("download", source="csv", path="corpus.csv"), "48 distinct labels for 48 documents", "download.label_field"
    )
    assert _outputs() == good


def test_many_labels_of_one_document_are_refused(good):
    rows = _docs(40) + [(f"text number {i}", f"word{i}") for i in range(25)]
    _write_jsonl(rows)
    _refused(_cli("download"), "25 of the 28 labels have a single document ('word0'")
    assert _outputs() == good


def test_numbers_and_booleans_spelt_apart_are_pointed_out(tiny_project):
    rows = [(t, line) for t, line in _docs()]
    lines = [json.dumps({"text": t, "label": {"sport": 1, "tech": 1.0, "money": True}[line]}) for t, line in rows]
    Path("corpus.jsonl").write_text("\n".join(lines) + "\n")
    result = _cli("download")
    assert result.exit_code == 0, result.output
    warning = "warning: corpus.jsonl: the labels '1', '1.0', 'True' are separate classes"
    assert warning in result.stderr
    assert json.loads(Path("data/raw/manifest.json").read_text())["labels"] == ["1", "1.0", "True"]


def test_a_single_class_corpus_is_refused_at_prepare(good):
    _write_jsonl([(t, "sport") for t, _ in _docs()])
    assert _cli("download").exit_code == 0
    raw = _outputs()
    _refused(_cli("prepare"), "every document has the label 'sport'", "at least two classes")
    assert _outputs() == raw


@pytest.mark.parametrize(
    "rows, split",
    [
        ([("the same text", "a"), ("other words", "b")] * 30, "val"),  # only duplicates
        ([("one", "a"), ("two", "a"), ("three", "b"), ("four", "b")], "val"),  # tiny
    ],
)
def test_corpora_too_small_to_split_are_refused_not_nan(good, rows, split):
    _write_jsonl(rows)
    assert _cli("download").exit_code == 0
    raw = _outputs()
    _refused(_cli("prepare"), f"leave the {split} split empty")
    assert _outputs() == raw


def test_tiny_classes_are_kept_counted_and_warned_about(tiny_project):
    _write_jsonl(_docs() + [("a rare word", "rare"), ("another rare one", "rare"), ("a lone text", "lone")])
    assert _cli("download").exit_code == 0
    result = _cli("prepare")
    assert result.exit_code == 0, result.output
    assert (
        "warning: 2 class(es) too small to reach val or test, so trained on but never "
        "scored: 'lone' (1 document), 'rare' (2 documents)"
    ) in result.stderr
    stats = json.loads(Path("data/prepared/stats.json").read_text())
    assert stats["splits"]["train"]["class_counts"]["rare"] == 2
    assert stats["splits"]["val"]["class_counts"]["rare"] == 0
    numbers = [v for s in stats["splits"].values() for v in (s["oov_rate"], s["truncation_rate"])]
    assert all(math.isfinite(v) for v in numbers)


def test_prepare_names_a_class_by_its_label(good):
    _write_jsonl(_docs() + [("a rare word", "rare"), ("another rare one", "rare")])
    assert _cli("download").exit_code == 0
    raw = yaml.safe_load(Path("params.yaml").read_text())
    raw["prepare"].update(val_fraction=0.4, test_fraction=0.4)
    Path("params.yaml").write_text(yaml.safe_dump(raw))
    before = _outputs()
    result = CliRunner().invoke(app, ["prepare"])
    _refused(result, "class 'rare' has 2 documents")
    assert _outputs() == before


def test_line_separators_pass_the_whole_pipeline(tiny_project):
    rows = _docs()
    seps = ["\u2028", "\u2029", "\x85"]
    rows = [(t.replace(" ", seps[i % 3], 1), line) for i, (t, line) in enumerate(rows)]
    _write_jsonl(rows)
    raw = tiny_params_dict()
    raw["train"]["seeds"] = raw["train"]["seeds"][:1]
    params = params_module.parse(raw)
    with contextlib.redirect_stdout(stdio.StringIO()):
        download.run(params)
        prepare.run(params)
        for name in MODELS:
            train.run(params, name, params.train.seeds[0])
        evaluate.run(params)
    texts = []
    for split in prepare.SPLITS:
        path = Path(f"data/prepared/{split}.jsonl")
        # One document per line for any reader, even one that splits at U+2028.
        assert len(path.read_text(encoding="utf-8").splitlines()) == len(
            arrays.load(f"data/prepared/{split}.npz", ("labels",))["labels"]
        )
        texts += [row["text"] for _, row in files.read_jsonl(path, "split", "pipeline prepare")]
    assert sorted(texts) == sorted(t for t, _ in rows)
    scored = {p.stem for p in Path("metrics/predictions").iterdir()}
    assert {*MODELS, "reference"} <= scored
