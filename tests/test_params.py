"""params.yaml validation: every bad input is one readable line, exit code 2 and nothing written."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import re
import subprocess
import sys

import pytest
import yaml
from conftest import ROOT
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.core import params as P
from pipeline.core import safe_yaml

PARAMS_TEXT = (ROOT / "params.yaml").read_text(encoding="utf-8")
MODEL_KEYS = (
    "cell, embed_dim, hidden_dim, num_layers, bidirectional, dropout, word_dropout, readout, early_stopping, "
    "max_train_accuracy, weight_decay"
)


@pytest.fixture
def raw():
    return yaml.safe_load(PARAMS_TEXT)


def test_repository_params_are_valid(raw):
    params = P.parse(raw)
    assert params.birnn.bidirectional and not params.baseline.bidirectional
    assert params.compare.targets.min_val_accuracy == 0.85
    assert params.train.seeds == (42, 43, 44, 45, 46) and params.train.processes == 1
    assert P.MODELS[0] == P.LADDER[0] == "baseline" and P.LADDER[-1] == "birnn"
    assert [params.model(name) for name in P.MODELS] == [getattr(params, name) for name in P.MODELS]
    # Every model section of the dataclass is one of MODELS, in the same order.
    sections = [f.name for f in dataclasses.fields(P.Params) if f.type in ("ModelParams", P.ModelParams)]
    assert tuple(sections) == P.MODELS
    # Each rung of the ladder differs from the one before in exactly one setting.
    for before, after in zip(P.LADDER, P.LADDER[1:], strict=False):
        a, b = dataclasses.asdict(params.model(before)), dataclasses.asdict(params.model(after))
        assert len([k for k in a if a[k] != b[k]]) == 1, (before, after)
    for name, key in zip(P.COUNTERFACTUALS, ("bidirectional", "readout"), strict=True):
        a, b = dataclasses.asdict(params.birnn), dataclasses.asdict(params.model(name))
        assert [k for k in a if a[k] != b[k]] == [key]
    assert params.window.max_train_accuracy == params.compare.targets.max_train_accuracy
    assert (params.stacked.num_layers, params.stacked.hidden_dim, params.stacked.bidirectional) == (
        2,
        44,
        True,
    )


def test_params_are_frozen_and_introspectable_like_dataclasses(raw):
    params = P.parse(raw)
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.train.lr = 1.0  # type: ignore[misc]
    assert [f.name for f in dataclasses.fields(P.ModelParams)] == MODEL_KEYS.split(", ")
    # Tests and sweeps derive variants with dataclasses.replace, which validates again.
    assert dataclasses.replace(params.train, seeds=(7,)).seeds == (7,)
    with pytest.raises(ValueError):
        dataclasses.replace(params.train, lr=math.inf)


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
    _rejects(raw, "birnn.dropuot", 0.4, f"birnn.dropuot: unknown key (allowed: {MODEL_KEYS})")


def test_unknown_section_is_named(raw):
    sections = ", ".join(["download", "prepare", "train", *P.MODELS, "evaluate", "suspects", "compare"])
    _rejects(raw, "trian", {}, f"trian: unknown section (allowed: {sections})")


def test_missing_key_is_named(raw):
    _rejects(raw, "prepare.max_len", KeyError, "prepare.max_len: missing key (an integer in [1, 100000])")


def test_the_old_single_seed_is_an_unknown_key(raw):
    _rejects(raw, "train.seed", 42, "train.seed: unknown key (allowed: seeds, batch_size,")


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ("prepare.max_len", "long", "prepare.max_len: must be an integer in [1, 100000], got 'long'"),
        ("prepare.max_len", 3.5, "prepare.max_len: must be an integer in [1, 100000], got 3.5"),
        ("prepare.max_len", True, "prepare.max_len: must be an integer in [1, 100000], got True"),
        ("birnn.bidirectional", "yes", "birnn.bidirectional: must be true or false, got 'yes'"),
        ("birnn.bidirectional", 1, "birnn.bidirectional: must be true or false, got 1"),
        ("train.lr", True, "train.lr: must be a number in (0, 10], got True"),
        ("train.lr", "0.1", "train.lr: must be a number in (0, 10], got '0.1'"),
        ("birnn.cell", "transformer", "birnn.cell: must be one of 'rnn', 'gru', 'lstm', got 'transformer'"),
        (
            "train.batch_size",
            "all",
            "train.batch_size: must be an integer in [1, 1000000], or null for full batch",
        ),
        ("train.seeds", 42, "train.seeds: must be a list of 1 to 32 distinct items, each an integer"),
        ("train.seeds", [42, 42.0], "train.seeds[1]: must be an integer in [0, 2147483647], got 42.0"),
        ("download.text_field", 7, "download.text_field: must be a non-empty string, got 7"),
        ("evaluate.reference", [1, 2], "evaluate.reference: must be a mapping of keys to values, got [1, 2]"),
        ("stacked", None, "stacked: must be a mapping of keys to values, got None"),
    ],
)
def test_wrong_types_are_rejected(raw, path, value, expected):
    _rejects(raw, path, value, expected)


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ("prepare.max_len", 0, "prepare.max_len: must be an integer in [1, 100000], got 0"),
        ("birnn.dropout", 1.5, "birnn.dropout: must be a number in [0, 1), got 1.5"),
        (
            "prepare.val_fraction",
            0.5,
            "prepare.test_fraction: val_fraction + test_fraction must be below 0.9",
        ),
        ("prepare.test_fraction", 1.0, "prepare.test_fraction: must be a number in (0, 1), got 1.0"),
        ("train.patience", 0, "train.patience: must be an integer in [1, 100000], got 0"),
        ("train.processes", 65, "train.processes: must be an integer in [1, 64], got 65"),
        ("train.threads", 0, "train.threads: must be an integer in [1, 256], got 0"),
        ("train.seeds", [], "train.seeds: must be a list of 1 to 32 distinct items"),
        ("train.seeds", list(range(33)), "train.seeds: must be a list of 1 to 32 distinct items"),
        ("train.seeds", [3, 1, 3], "train.seeds: must be distinct, 3 appears more than once"),
        ("stacked.num_layers", 17, "stacked.num_layers: must be an integer in [1, 16], got 17"),
        (
            "compare.targets.min_val_accuracy",
            1.2,
            "compare.targets.min_val_accuracy: must be a number in [0, 1]",
        ),
    ],
)
def test_out_of_range_values_are_rejected(raw, path, value, expected):
    if path == "prepare.val_fraction":
        raw["prepare"]["test_fraction"] = 0.45
    _rejects(raw, path, value, expected)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            {"source": "url", "url": "http://127.0.0.1/x.csv", "sha256": None},
            "download.sha256: must be the 64-hex",
        ),
        (
            {"source": "url", "url": "ftp://x/y.csv", "sha256": "0" * 64},
            "download.url: must be an http(s):// URL when source is url, got 'ftp://x/y.csv'",
        ),
        ({"source": "csv", "path": None}, "download.path: must be a file path when source is csv"),
        ({"source": "jsonl", "path": ""}, "download.path: must be a file path when source is jsonl"),
    ],
)
def test_download_source_requires_its_settings(raw, overrides, expected):
    raw["download"].update(overrides)
    with pytest.raises(P.ParamsError, match="^" + re.escape(expected)):
        P.parse(raw)


def test_a_stage_requires_only_its_own_sections(raw):
    params = P.parse({"prepare": raw["prepare"]}, ("prepare",))
    assert params.prepare.max_len == raw["prepare"]["max_len"] and params.train is None
    with pytest.raises(P.ParamsError, match="train: missing section"):
        P.parse({"prepare": raw["prepare"]}, ("train",))


def test_yaml_1_2_exponent_floats_are_numbers(tmp_path):
    # DVC reads params.yaml as YAML 1.2, where 1e-3 is a number; so does the pipeline.
    path = tmp_path / "params.yaml"
    path.write_text(PARAMS_TEXT.replace("lr: 0.003", "lr: 1e-3"))
    assert P.load(path).train.lr == 0.001


# YAML 1.2, as DVC reads params.yaml: what `dvc params diff` shows is what the pipeline validates.
@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        # YAML 1.1 read 1:30 as sexagesimal 90; in YAML 1.2 it is the string DVC shows.
        (("max_epochs: 40", "max_epochs: 1:30"), "train.max_epochs: must be an integer"),
        # yes/no/on are booleans in YAML 1.1 only.
        (("allow_fallback: false", "allow_fallback: yes"), "train.allow_fallback: must be true or false"),
        (("bidirectional: true", "bidirectional: on"), "plus_bidirectional.bidirectional: must be true or false"),
    ],
)
def test_yaml_1_1_scalars_are_strings_and_refused_with_one_line(tmp_path, edit, expected):
    path = _bad_file(tmp_path, edit)
    with pytest.raises(P.ParamsError) as err:
        P.load(path)
    assert str(err.value).startswith(expected) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("scalar", "value"), [("1:30", "1:30"), ("1e-3", 0.001), ("yes", "yes"), ("no", "no"), ("on", "on")]
)
def test_scalars_read_as_yaml_1_2(scalar, value):
    assert safe_yaml.parse(f"key: {scalar}\n", P.MAX_DEPTH) == {"key": value}


def test_a_key_written_twice_is_refused_naming_the_key_and_line(tmp_path):
    text = PARAMS_TEXT.replace("  max_epochs: 40\n", "  max_epochs: 40\n  max_epochs: 2\n", 1)
    line = text.splitlines().index("  max_epochs: 2") + 1
    path = tmp_path / "params.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(P.ParamsError) as err:
        P.load(path)
    assert str(err.value) == f"{path}: duplicate key 'max_epochs' (line {line}, first at line {line - 1})"


def test_the_repository_params_read_as_pyyaml_reads_them():
    # The file holds nothing where YAML 1.1 and 1.2 differ: the same mapping, the same types.
    new = safe_yaml.read(ROOT / "params.yaml", "params file", P.MAX_FILE_BYTES, P.MAX_DEPTH)
    old = yaml.safe_load(PARAMS_TEXT)
    assert new == old
    assert json.dumps(new, sort_keys=True) == json.dumps(old, sort_keys=True)


LAUGHS = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(8)
)

# Each bad params file the hardening probe fed in, as an edit of the real params.yaml.
BAD_FILES = {
    "lr 1e6": (("lr: 0.003", "lr: 1e6"), "train.lr: must be a number in (0, 10], got 1000000.0"),
    "lr inf": (("lr: 0.003", "lr: .inf"), "train.lr: must be a finite number in (0, 10], got inf"),
    "lr nan": (("lr: 0.003", "lr: .nan"), "train.lr: must be a finite number in (0, 10], got nan"),
    "weight_decay inf": (
        ("weight_decay: 0.3", "weight_decay: .inf"),
        "train.weight_decay: must be a finite number in [0, 10], got inf",
    ),
    "grad_clip -inf": (("grad_clip: 1.0", "grad_clip: -.inf"), "train.grad_clip: must be a finite number"),
    "seed -1": (("  seed: 42", "  seed: -1"), "prepare.seed: must be an integer in [0, 2147483647], got -1"),
    "seeds 2**64": (
        ("seeds: [42, 43, 44, 45, 46]", "seeds: [18446744073709551616]"),
        "train.seeds[0]: must be an integer in [0, 2147483647], got 18446744073709551616",
    ),
    "max_len 1e9": (
        ("max_len: 100 ", "max_len: 1e9 "),
        "prepare.max_len: must be an integer in [1, 100000], got 1000000000.0",
    ),
    "max_len 10**9": (
        ("max_len: 100 ", "max_len: 1000000000 "),
        "prepare.max_len: must be an integer in [1, 100000], got 1000000000",
    ),
    "embed_dim 10**12": (
        ("embed_dim: 50", "embed_dim: 1000000000000"),
        "baseline.embed_dim: must be an integer in [1, 4096], got 1000000000000",
    ),
    "max_vocab huge": (
        ("max_vocab: 1000 ", "max_vocab: 100000000 "),
        "prepare.max_vocab: must be an integer in [3, 10000000]",
    ),
    "batch_size huge": (
        ("batch_size: 32 ", "batch_size: 10000000 "),
        "train.batch_size: must be an integer in [1, 1000000]",
    ),
    "max_epochs huge": (
        ("max_epochs: 40", "max_epochs: 1000000"),
        "train.max_epochs: must be an integer in [1, 100000]",
    ),
    "billion laughs": (
        (PARAMS_TEXT, LAUGHS),
        "bad.yaml: YAML aliases (*name) are not supported, write values out (line 2)",
    ),
    "nested 600 deep": (
        ("lr: 0.003", "lr: " + "[" * 600 + "]" * 600),
        "bad.yaml: nested more than 20 levels deep (line",
    ),
    "nested blocks 600 deep": (
        (PARAMS_TEXT, "a:\n" + "".join(" " * (i + 1) + "b:\n" for i in range(600))),
        "bad.yaml: nested more than 20 levels deep (line 20)",
    ),
    "bad date": (("lr: 0.003", "lr: 2001-13-01"), "bad.yaml: not valid YAML (month must be in 1..12)"),
    "5000-digit integer": (
        ("lr: 0.003", "lr: " + "9" * 5000),
        "bad.yaml: not valid YAML (Exceeds the limit (4300",
    ),
}


def _bad_file(directory, edit):
    old, new = edit
    text = PARAMS_TEXT.replace(old, new, 1)
    assert text != PARAMS_TEXT
    (directory / "bad.yaml").write_text(text, encoding="utf-8")
    return directory / "bad.yaml"


@pytest.mark.parametrize("case", BAD_FILES)
def test_bad_params_file_is_one_line(tmp_path, monkeypatch, case):
    edit, expected = BAD_FILES[case]
    monkeypatch.chdir(tmp_path)
    _bad_file(tmp_path, edit)
    with pytest.raises(P.ParamsError) as err:
        P.load("bad.yaml")
    assert str(err.value).startswith(expected)
    assert "\n" not in str(err.value) and len(str(err.value)) < 200


@pytest.mark.parametrize("case", ["lr inf", "seeds 2**64", "embed_dim 10**12", "billion laughs", "nested 600 deep"])
def test_cli_refuses_a_bad_params_file_with_exit_2_and_writes_nothing(tmp_path, monkeypatch, case):
    edit, expected = BAD_FILES[case]
    monkeypatch.chdir(tmp_path)
    bad = _bad_file(tmp_path, edit)
    before = bad.read_bytes()
    result = CliRunner().invoke(app, ["prepare", "--params", "bad.yaml"])
    assert result.exit_code == 2
    assert result.output.startswith(f"error: {expected}") and result.output.count("\n") == 1
    assert sorted(os.listdir(tmp_path)) == ["bad.yaml"] and bad.read_bytes() == before


def test_a_50_mb_params_file_is_refused_without_reading_it(tmp_path):
    big = tmp_path / "big.yaml"
    with big.open("wb") as file:
        file.truncate(50 * 2**20)  # sparse: costs no disk
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "prepare", "--params", str(big)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == f"error: {big}: params file is over 1,000,000 bytes; it holds settings, not data\n"
    assert sorted(os.listdir(tmp_path)) == ["big.yaml"]


@pytest.mark.parametrize("command", [["prepare"], ["download"], ["train", "birnn", "--seed", "42"], ["evaluate"]])
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
    [
        (None, "params.yaml: params file not found"),
        ("a: [1, 2", "params.yaml: not valid YAML at line 1"),
        ("- 1\n- 2\n", "params: the file must hold a mapping of sections, got [1, 2]"),
        (b"\xff\xfe", "params.yaml: cannot read params file (not UTF-8, byte 0)"),
        ("a: \x07", "params.yaml: not valid YAML (special characters are not allowed)"),
    ],
)
def test_cli_unreadable_params_file_exits_2(tmp_path, monkeypatch, content, expected):
    if isinstance(content, str):
        (tmp_path / "params.yaml").write_text(content)
    elif content is not None:
        (tmp_path / "params.yaml").write_bytes(content)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["prepare"])
    assert result.exit_code == 2
    assert result.output.startswith(f"error: {expected}") and result.output.count("\n") == 1


# Property tests: whatever the file holds, the loader answers with Params or one ParamsError line.


def _leaves(node, path=()):
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _leaves(value, (*path, key))
    elif isinstance(node, list):
        yield path
        for i, value in enumerate(node):
            yield from _leaves(value, (*path, i))
    else:
        yield path


RAW = yaml.safe_load(PARAMS_TEXT)
LEAVES = list(_leaves(RAW))
LISTS = [("train", "seeds")]  # the one list: its items are leaves too
HOLE = "HOLE-7f3a"
# YAML scalars that PyYAML resolves to something other than a plain string, or cannot read.
TRICKY = [
    *"~ null yes No on true 0 -0 007 0o17 0x1F 0b101 1_000 1:30 190:20:30 .inf -.Inf .NaN".split(),
    *"1e6 1E-3 1.5e+308 1e400 -1 3.5 2001-12-14 2001-12-14t21:59:43.10-05:00 2001-13-45".split(),
    *"[ { ' \" | > % @ ` *alias '' \"\" {a:1} [1,2] [[[[[[1]]]]]] \t \x85 \u2028".split(" "),
    *["!!binary aGk=", "!!set {a, b}", "!!float 1", "!!int '3'", "!!str 5", "!!python/name:os.system"],
    *["&anchor 1", "- a", "? a", str(2**64), str(2**31), "'" + "x" * 5000 + "'"],
]
SCALARS = st.one_of(
    st.sampled_from(TRICKY),
    st.integers().map(str),
    st.floats().map(repr),
    st.text(max_size=40).map(json.dumps),  # any Unicode, quoted
    st.text(max_size=40),
)
PROPERTY = settings(
    max_examples=150,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _assert_loads_or_one_line(path):
    try:
        P.load(path)
    except P.ParamsError as err:
        message = str(err)
        assert message and "\n" not in message and "\r" not in message and len(message) < 300, message


def _put(raw, path, value):
    node = raw
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value


@PROPERTY
@given(scalar=SCALARS)
def test_any_yaml_scalar_at_every_key_is_params_or_one_line(tmp_path, scalar):
    # The scalar in place of every value of the file at once...
    raw = copy.deepcopy(RAW)
    for path in LEAVES:
        if path not in LISTS:
            _put(raw, path, HOLE)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw).replace(HOLE, scalar), encoding="utf-8", errors="surrogatepass")
    _assert_loads_or_one_line(path)
    # ...and what it reads as, in place of each value in turn.
    try:
        value = safe_yaml.parse(f"key: {scalar}\n", P.MAX_DEPTH)["key"]
    except Exception:
        return  # not a value on its own; the whole file above was refused with one line
    for path in LEAVES:
        raw = copy.deepcopy(RAW)
        _put(raw, path, value)
        try:
            P.parse(raw)
        except P.ParamsError as err:
            assert "\n" not in str(err) and len(str(err)) < 300, str(err)


@PROPERTY
@given(text=st.one_of(st.text(), st.binary().map(lambda b: b.decode("latin-1"))))
def test_any_unicode_text_is_params_or_one_line(tmp_path, text):
    path = tmp_path / "params.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    _assert_loads_or_one_line(path)


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)


@PROPERTY
@given(path=st.sampled_from(LEAVES), value=JSONISH)
def test_any_value_at_any_key_parses_or_is_one_line(path, value):
    raw = copy.deepcopy(RAW)
    _put(raw, path, value)
    try:
        P.parse(raw)
    except P.ParamsError as err:
        assert "\n" not in str(err) and len(str(err)) < 300


def test_anchors_without_aliases_read_without_a_warning(recwarn):
    assert safe_yaml.parse("a: &x 1\nb: &x 2\n", P.MAX_DEPTH) == {"a": 1, "b": 2}
    assert not recwarn.list
