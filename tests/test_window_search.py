"""sweeps/window_search.py without DVC: which configurations it runs, and what it concludes from their scores."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from pipeline.core import params as params_module
from pipeline.model.network import ModelConfig, RNNClassifier, count_parameters

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def search():
    spec = importlib.util.spec_from_file_location("window_search", ROOT / "sweeps" / "window_search.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def params():
    return params_module.load(ROOT / "params.yaml")


@pytest.fixture(scope="module")
def configs(search, params):
    return search.configurations(params)


def test_configurations_start_with_the_defaults_and_keep_the_size_rule(search, params, configs):
    assert configs == search.configurations(params), "the sample must not change between calls"
    assert len(configs) >= 24
    assert len({tuple(c[k] for k in search.KEYS) for c in configs}) == len(configs), "a configuration repeats"
    first = configs[0]
    assert (first["birnn.dropout"], first["birnn.word_dropout"], first["birnn.hidden_dim"]) == (
        params.birnn.dropout,
        params.birnn.word_dropout,
        params.birnn.hidden_dim,
    )
    assert (first["train.weight_decay"], first["prepare.max_vocab"], first["prepare.max_len"]) == (
        params.train.weight_decay,
        params.prepare.max_vocab,
        params.prepare.max_len,
    )
    for key in search.KEYS:
        assert len({c[key] for c in configs}) >= 3, f"{key} is not searched"
    limit = params.compare.targets.max_parameter_ratio
    for c in configs:
        assert c["ratio"] <= limit
        # Counted independently: the BiRNN and baseline as the train stage builds them.
        birnn = ModelConfig.from_params(params.birnn, vocab_size=c["prepare.max_vocab"], num_classes=5)
        birnn = ModelConfig(**{**birnn.__dict__, "hidden_dim": c["birnn.hidden_dim"]})
        base = ModelConfig.from_params(params.baseline, vocab_size=c["prepare.max_vocab"], num_classes=5)
        assert c["parameters"] == count_parameters(RNNClassifier(birnn))
        assert c["baseline_parameters"] == count_parameters(RNNClassifier(base))


def test_a_width_over_the_size_rule_is_never_run(search, params, configs):
    # At 1000 words a BiRNN of width 96 has 1.37x the baseline's parameters; at 2000 words, 1.20x.
    assert not any(c["birnn.hidden_dim"] == 96 and c["prepare.max_vocab"] <= 1000 for c in configs)
    birnn, baseline = sys.modules["window_space"].parameters(params, 96, 1000)  # imported by window_search
    assert birnn / baseline > 1.25


def test_floats_stay_floats_on_the_command_line(search):
    assert search.setting("train.weight_decay", 1.0) == "train.weight_decay=1.0"
    assert search.setting("birnn.hidden_dim", 64) == "birnn.hidden_dim=64"


def row(name: str, val: float, train: float, ratio: float = 1.1) -> dict:
    return {
        "name": name,
        "val_accuracy": {"mean": val, "sd": 0.01},
        "train_accuracy": {"mean": train, "sd": 0.01},
        "meets_both": val >= 0.85 and train < 0.92 and ratio <= 1.25,
    }


def test_a_configuration_in_the_window_within_two_points_is_proposed(search):
    rows = [row("best", 0.93, 0.97), row("close", 0.915, 0.91), row("closer_but_over", 0.925, 0.95)]
    decision = search.decide(rows)
    assert decision["best"] == "best"
    assert decision["proposed_default"] == "close"


def test_a_configuration_in_the_window_but_far_below_the_best_is_not_proposed(search):
    rows = [row("best", 0.93, 0.97), row("far", 0.905, 0.90), row("low", 0.80, 0.85)]
    decision = search.decide(rows)
    assert decision["proposed_default"] is None
    assert decision["best_meeting"] == "far"
    assert decision["meeting_both"] == ["far"]


def test_the_table_shows_every_configuration_in_the_window_even_below_the_top(search):
    rows = [dict(row(f"win-{i:02d}", 0.95 - i / 100, 0.99), meets_both=False) for i in range(14)]
    rows.append(row("win-99", 0.851, 0.90))
    for r in rows:
        r.update({k: 0 for k in search.KEYS}, ratio=1.1, gap={"mean": 0.04, "sd": 0}, seeds_val_met=3)
        r.update(seeds_train_met=0, seeds_at_epoch_limit=0, per_seed={"42": {"best_epoch": 9}})
    rows[-1]["seeds_at_epoch_limit"] = 2
    result = {
        "configurations": rows,
        "seeds": [42, 43, 44],
        "targets": {"min_val_accuracy": 0.85, "max_train_accuracy": 0.92, "max_parameter_ratio": 1.25},
        "commit": "0" * 40,
        "sample_seed": 1,
        "wall_seconds": 1.0,
        "experiments_run": len(rows),
        "jobs": 2,
        "train_seconds": 1.0,
        "max_epochs": 40,
        "patience": 5,
        "decision": search.decide(rows),
    }
    text = search.render(result, top=12)
    assert "| win-11 |" in text and "| win-12 |" not in text
    assert "| win-99 ✓ |" in text
    assert "The ceiling costs accuracy" in text
    assert "1 of the 1 configurations in the window have runs that the epoch limit" in text
