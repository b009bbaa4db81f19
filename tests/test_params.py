"""params.yaml validation: every bad-input class is one readable line and exit code 2."""

from __future__ import annotations

import copy

import pytest
import yaml
from typer.testing import CliRunner

from pipeline import params as P
from pipeline.cli import app

from conftest import ROOT


@pytest.fixture
def raw():
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def test_repository_params_are_valid(raw):
    params = P.parse(raw)
    assert params.birnn.bidirectional and not params.baseline.bidirectional
    assert params.compare.targets.min_val_accuracy == 0.85


def _rejects(raw, path, value, expected):
    bad = copy.deepcopy(raw)
    *parents, last = path.split(".")
    node = bad
    for key in parents:
        node = node[key]
    if value is KeyError:
        del node[last]
    else:
        node[last] = value
    with pytest.raises(P.ParamsError) as err:
        P.parse(bad)
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_key_is_named(raw):
    _rejects(raw, "birnn.dropuot", 0.4, "birnn.dropuot: unknown key")


def test_unknown_section_is_named(raw):
    _rejects(raw, "trian", {}, "trian: unknown section")


def test_missing_key_is_named(raw):
    _rejects(raw, "prepare.max_len", KeyError, "prepare.max_len: missing key")


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ("prepare.max_len", "long", "prepare.max_len: must be an integer"),
        ("prepare.max_len", 3.5, "prepare.max_len: must be an integer"),
        ("birnn.bidirectional", "yes", "birnn.bidirectional: must be true or false"),
        ("train.lr", True, "train.lr: must be a number"),
        ("birnn.cell", "transformer", "birnn.cell: must be one of 'rnn', 'gru', 'lstm'"),
        ("train.batch_size", "all", "train.batch_size: must be an integer or null"),
    ],
)
def test_wrong_types_are_rejected(raw, path, value, expected):
    _rejects(raw, path, value, expected)


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ("prepare.max_len", 0, "prepare.max_len: must be an integer >= 1"),
        ("birnn.dropout", 1.5, "birnn.dropout: must be in [0, 1)"),
        ("prepare.val_fraction", 0.5, "must be below 0.9 so that training data remains"),
        ("prepare.test_fraction", 1.0, "prepare.test_fraction: must be between 0 and 1"),
        ("train.patience", 0, "train.patience: must be an integer >= 1"),
        ("compare.targets", {"min_val_accuracy": 1.2, "max_train_accuracy": 0.9, "max_parameter_ratio": 1.25}, "min_val_accuracy"),
    ],
)
def test_out_of_range_values_are_rejected(raw, path, value, expected):
    if path == "prepare.val_fraction":
        raw["prepare"]["test_fraction"] = 0.45
    _rejects(raw, path, value, expected)


def test_url_source_requires_a_checksum(raw):
    raw["download"].update(source="url", url="http://127.0.0.1/x.csv", sha256=None)
    with pytest.raises(P.ParamsError, match="download.sha256"):
        P.parse(raw)


def test_a_stage_requires_only_its_own_sections(raw):
    params = P.parse({"prepare": raw["prepare"]}, ("prepare",))
    assert params.prepare.max_len == raw["prepare"]["max_len"] and params.train is None
    with pytest.raises(P.ParamsError, match="train: missing section"):
        P.parse({"prepare": raw["prepare"]}, ("train",))


@pytest.mark.parametrize("command", [["prepare"], ["download"], ["train", "birnn"], ["evaluate"]])
def test_cli_misspelt_key_exits_2_with_one_line(tmp_path, monkeypatch, raw, command):
    raw["prepare"]["max_lenn"] = raw["prepare"].pop("max_len")
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, [*command, "--params", "bad.yaml"])
    assert result.exit_code == 2
    assert result.output.strip() == (
        "error: prepare.max_lenn: unknown key (allowed: seed, val_fraction, test_fraction, "
        "min_freq, max_vocab, max_len, keep)"
    )
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize(
    ("content", "expected"),
    [(None, "params file not found"), ("a: [1, 2", "not valid YAML"), ("- 1\n- 2\n", "must hold a mapping")],
)
def test_cli_unreadable_params_file_exits_2(tmp_path, monkeypatch, content, expected):
    if content is not None:
        (tmp_path / "params.yaml").write_text(content)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["prepare"])
    assert result.exit_code == 2
    assert expected in result.output and "Traceback" not in result.output
