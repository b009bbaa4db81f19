"""sweeps/window_search.py: which configurations it runs, how it checks an experiment's summaries
against the md5 real DVC records, and what it concludes from their scores."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest
import yaml
from dvc_repo import DVC, repo_env, runner

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
        "omp_num_threads": 1,
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
    assert "2 queue workers with OMP_NUM_THREADS=1" in text


def test_the_workers_share_the_cores_out_and_no_more(search, monkeypatch):
    # Two cores: two workers train one run each, or one worker's stage trains two side by side.
    monkeypatch.setattr(search, "cores", lambda: 2)
    assert (search.worker_threads(2), search.worker_threads(1), search.worker_threads(3)) == (1, 2, 1)
    monkeypatch.setattr(search, "cores", lambda: 16)
    assert search.worker_threads(2) == 8


# A pipeline shaped like this project's where it matters to run_summaries: a prepare stage, and
# train@birnn whose params are the train and birnn sections and which writes one summary per seed
# of train.seeds into metrics/train/birnn/, a `cache: false` out. A second stage writes a folder
# whose paths sort unlike their names (nested, "-" < "." < "/") and a file with CRLF line endings.
STAGES = """\
import json
import sys
from pathlib import Path

import yaml

p = yaml.safe_load(Path("params.yaml").read_text())
if sys.argv[1] == "prepare":
    Path("prepared.txt").write_text(json.dumps(p["prepare"]))
elif sys.argv[1] == "nested":
    Path("nested/a").mkdir(parents=True, exist_ok=True)
    Path("nested/a/b.txt").write_text("b")
    Path("nested/a.txt").write_bytes(b"line one\\r\\nline two\\r\\n")
    Path("nested/a-b.txt").write_text("caf\\u00e9", encoding="utf-8")
else:
    out = Path("metrics/train", sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    for seed in p["train"]["seeds"]:
        figures = {"best_epoch": 3, "epochs_run": 5, "train_accuracy": 0.9, "val_accuracy": 0.86 + seed / 1000}
        figures.update(best_val_loss=0.4, train_seconds=1.5, selection="lowest val loss")
        summary = {"model": sys.argv[2], "seed": seed, "trainable_parameters": 1234, **figures}
        (out / f"seed{seed}.json").write_text(json.dumps(summary, indent=2) + "\\n")
"""
DVC_YAML = {
    "stages": {
        "prepare": {
            "cmd": "python stages.py prepare",
            "deps": ["stages.py"],
            "params": ["prepare"],
            "outs": ["prepared.txt"],
        },
        "nested": {"cmd": "python stages.py nested", "deps": ["stages.py"], "outs": [{"nested": {"cache": False}}]},
        "train": {
            "matrix": {"model": ["birnn"]},
            "cmd": "python stages.py train ${item.model}",
            "deps": ["stages.py", "prepared.txt"],
            "params": ["train", "${item.model}"],
            "outs": [{"metrics/train/${item.model}": {"cache": False}}],
        },
    }
}
PARAMS = {
    "prepare": {"max_vocab": 1000, "max_len": 100},
    "train": {"seeds": [7, 10], "weight_decay": 0.3, "threads": 2},  # seed10.json sorts before seed7.json
    "birnn": {"dropout": 0.5, "word_dropout": 0.5, "hidden_dim": 64},
}


@pytest.mark.e2e
def test_the_summaries_are_checked_against_the_folder_md5_dvc_records(search, tmp_path):
    if shutil.which("git") is None:
        pytest.skip("dvc needs git, which is not installed")
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "stages.py").write_text(STAGES)
    (repo / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML, sort_keys=False))
    (repo / "params.yaml").write_text(yaml.safe_dump(PARAMS, sort_keys=False))
    sh = runner(repo, repo_env(repo))
    sh("git", "init", "-q")
    sh(DVC, "init", "-q")
    sh(DVC, "repro")
    sh("git", "add", "-A")
    sh("git", "commit", "-qm", "repro")

    # The recomputation, from the files as committed, is what DVC wrote into dvc.lock.
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    for stage, folder in (("nested", "nested"), ("train@birnn", "metrics/train/birnn")):
        (out,) = lock[stage]["outs"]
        contents = search.committed("HEAD", folder, repo)
        assert out["md5"].endswith(".dir") and out["nfiles"] == len(contents)
        assert search.folder_md5(contents) == out["md5"], stage
    assert set(search.committed("HEAD", "nested", repo)) == {"a/b.txt", "a.txt", "a-b.txt"}

    config = dict(zip(search.KEYS, (0.5, 0.5, 64, 0.3, 1000, 100), strict=True), parameters=1234)
    runs = search.run_summaries("t", "HEAD", config, (7, 10), repo)
    assert list(runs) == ["7", "10"]
    assert runs["10"]["val_accuracy"] == pytest.approx(0.87) and set(runs["7"]) == set(search.RUN_FIELDS)

    # Refused: other params than the run's, other seeds, another size.
    with pytest.raises(SystemExit, match="not the output of a run with this configuration"):
        search.run_summaries("t", "HEAD", {**config, "birnn.hidden_dim": 80}, (7, 10), repo)
    with pytest.raises(SystemExit, match="not the output of a run with this configuration"):
        search.run_summaries("t", "HEAD", config, (7,), repo)
    with pytest.raises(SystemExit, match="another seed or size"):
        search.run_summaries("t", "HEAD", {**config, "parameters": 99}, (7, 10), repo)

    # Refused: a summary edited and committed after the run, though its params still match.
    summary = repo / "metrics" / "train" / "birnn" / "seed7.json"
    summary.write_text(summary.read_text().replace('"val_accuracy": 0.867', '"val_accuracy": 0.95'))
    sh("git", "commit", "-qam", "a better seed 7")
    with pytest.raises(SystemExit, match="not the output of a run with this configuration"):
        search.run_summaries("t", "HEAD", config, (7, 10), repo)
