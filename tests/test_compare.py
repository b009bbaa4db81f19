"""compare stage on hand-made evaluate/train outputs: spreads across seeds, targets, tests, report, bad inputs."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.core.params import MODELS
from pipeline.stages import compare

LABELS = ("money", "sport", "tech")
SEEDS = (7, 8, 9)
SPLITS = ("train", "val", "test")
# Accuracy per split, one value per seed of SEEDS (the references have the one seed "0").
ACCURACY = {
    "baseline": {"train": [0.95, 0.97, 0.96], "val": [0.78, 0.80, 0.76], "test": [0.77, 0.79, 0.81]},
    "birnn": {"train": [0.93, 0.89, 0.91], "val": [0.84, 0.88, 0.86], "test": [0.85, 0.87, 0.86]},
    "stacked": {"train": [0.90, 0.91, 0.89], "val": [0.86, 0.85, 0.87], "test": [0.86, 0.88, 0.84]},
    # The ladder between baseline and birnn, the counterfactuals and the window model.
    "plus_bidirectional": {"train": [0.99, 0.99, 0.98], "val": [0.80, 0.82, 0.78], "test": [0.80, 0.80, 0.80]},
    "plus_dropout": {"train": [0.97, 0.96, 0.98], "val": [0.81, 0.84, 0.80], "test": [0.81, 0.82, 0.80]},
    "plus_word_dropout": {"train": [0.95, 0.94, 0.96], "val": [0.82, 0.85, 0.83], "test": [0.82, 0.84, 0.83]},
    "plus_max_readout": {"train": [0.94, 0.92, 0.93], "val": [0.83, 0.86, 0.85], "test": [0.84, 0.86, 0.85]},
    "birnn_unidirectional": {"train": [0.90, 0.88, 0.89], "val": [0.82, 0.83, 0.84], "test": [0.83, 0.83, 0.83]},
    "birnn_final_readout": {"train": [0.92, 0.90, 0.91], "val": [0.80, 0.84, 0.82], "test": [0.81, 0.82, 0.83]},
    "window": {"train": [0.91, 0.90, 0.91], "val": [0.88, 0.89, 0.87], "test": [0.88, 0.88, 0.87]},
    "reference": {"train": [0.99], "val": [0.95], "test": [0.96]},
    "reference_tokens": {"train": [0.98], "val": [0.93], "test": [0.92]},
    "fasttext": {"train": [0.99], "val": [0.94], "test": [0.94]},
}
SIZES = {
    "baseline": 1000,
    "birnn": 1250,
    "stacked": 1220,
    "plus_bidirectional": 1250,
    "plus_dropout": 1250,
    "plus_word_dropout": 1250,
    "plus_max_readout": 1250,
    "birnn_unidirectional": 1000,
    "birnn_final_readout": 1250,
    "window": 1250,
    "reference": 9000,
    "reference_tokens": 4000,
    "fasttext": 50000,
}
# (best epoch, epochs run) per seed.
EPOCHS = {
    "baseline": [(9, 9), (9, 9), (9, 9)],
    "birnn": [(4, 9), (5, 10), (6, 11)],
    "stacked": [(3, 8), (4, 9), (5, 10)],
    **{
        name: [(9, 9), (9, 9), (9, 9)]
        for name in ("plus_bidirectional", "plus_dropout", "plus_word_dropout", "plus_max_readout")
    },
    "birnn_unidirectional": [(5, 10), (5, 10), (5, 10)],
    "birnn_final_readout": [(5, 10), (5, 10), (5, 10)],
    "window": [(3, 8), (4, 9), (4, 9)],
}


def _write(path: str | Path, obj) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(obj), encoding="utf-8")


def _set_seeds(seeds) -> None:
    path = Path("params.yaml")
    raw = yaml.safe_load(path.read_text())
    raw["train"]["seeds"] = list(seeds)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))


TEMPERATURE = 1.5


def _split_scores(accuracy: float) -> dict:
    """What evaluate writes for one split: loss = 1 - accuracy, macro-F1 = accuracy - 0.01, ECE =
    (1 - accuracy) / 4, and the per-class scores and confusion matrix, which compare.json must leave out."""
    return {
        "accuracy": accuracy,
        "loss": round(1 - accuracy, 6),
        "macro_f1": round(accuracy - 0.01, 6),
        "ece": round((1 - accuracy) / 4, 6),
        "per_class": {label: {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2} for label in LABELS},
        "confusion_matrix": [[2, 0, 0], [0, 2, 0], [0, 0, 2]],
    }


def _curve(path: Path, metric: str, values: list[float]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"step\t{metric}\n" + "".join(f"{e}\t{v}\n" for e, v in enumerate(values, 1)), encoding="utf-8")


def _checkpoint_sha(name: str, seed) -> str:
    return f"sha-of-{name}-{seed}"


def _calibrated(splits: dict, i: int) -> dict:
    """After temperature scaling: loss 0.9 x and ECE half of the raw ones."""
    return {
        "temperature": TEMPERATURE,
        **{
            s: {"loss": round(0.9 * (1 - splits[s][i]), 6), "ece": round((1 - splits[s][i]) / 8, 6)}
            for s in ("val", "test")
        },
    }


BINS = [
    {"scaling": "before", "lower": 0.8, "upper": 0.866667, "confidence": 0.84, "accuracy": 0.7, "count": 3},
    {"scaling": "after", "lower": 0.733333, "upper": 0.8, "confidence": 0.75, "accuracy": 0.7, "count": 3},
]
SUSPECTS = {
    "folds": 5,
    "seed": 42,
    "articles": 40,
    "searched": True,
    "folds_used": 5,
    "out_of_fold_accuracy": 0.95,
    "count": 1,
    "suspects": [
        {
            "line": 4,
            "given": "tech",
            "suggested": "sport",
            "given_probability": 0.05,
            "suggested_probability": 0.9,
            "text": "Goal | match",
        }
    ],
}


def write_inputs(accuracy: dict | None = None, b: int = 1, c: int = 3) -> None:
    """metrics/scores, metrics/predictions, metrics/calibration, metrics/suspects.json,
    metrics/train, dvclive/ and data/prepared/test.jsonl as the stages write them.

    On the served seed's test predictions, b documents only the baseline gets right, c only the
    BiRNN; every other model and reference gets every document right.
    """
    accuracy = accuracy or ACCURACY
    for name, splits in accuracy.items():
        keys = ["0"] if name in compare.REFERENCES else [str(s) for s in SEEDS]
        runs = {
            k: {**{s: _split_scores(splits[s][i]) for s in SPLITS}, "calibrated": _calibrated(splits, i)}
            for i, k in enumerate(keys)
        }
        scores = {"seeds": runs, "trainable_parameters": SIZES[name], "served_seed": int(keys[0])}
        if name not in compare.REFERENCES:
            scores["checkpoint_sha256"] = {k: _checkpoint_sha(name, k) for k in keys}
        if name == "fasttext":
            scores["train_seconds"] = 3.5
        _write(f"metrics/scores/{name}.json", {**scores, "evaluation": "evaluation-1"})
        calibration = {"served_seed": int(keys[0]), "temperature": TEMPERATURE, "bins": BINS}
        if name not in compare.REFERENCES:
            calibration["checkpoint_sha256"] = _checkpoint_sha(name, keys[0])
        _write(f"metrics/calibration/{name}.json", calibration)
    _write("metrics/suspects.json", SUSPECTS)
    _write("metrics/predictions/stamp.json", {"evaluation": "evaluation-1"})
    for name, epochs in EPOCHS.items():
        for seed, (best, run) in zip(SEEDS, epochs, strict=True):
            summary = {
                "model": name,
                "seed": seed,
                "best_epoch": best,
                "epochs_run": run,
                "train_seconds": 12.5,
                "tokens_per_second": 9000.0,
                "checkpoint_sha256": _checkpoint_sha(name, seed),
            }
            if name == "window":
                summary["selection"] = "lowest val loss among epochs with train accuracy < 0.92"
                summary["unconstrained"] = {"epoch": run, "train_accuracy": 0.95, "val_accuracy": 0.9}
            _write(f"metrics/train/{name}/seed{seed}.json", summary)
            _write(f"dvclive/{name}/seed{seed}/run.json", {"checkpoint_sha256": _checkpoint_sha(name, seed)})
            for split in ("train", "val"):
                folder = Path(f"dvclive/{name}/seed{seed}/plots/metrics/{split}")
                _curve(folder / "accuracy.tsv", "accuracy", [0.4 + 0.05 * e for e in range(run)])
                _curve(folder / "loss.tsv", "loss", [1.1 - 0.05 * e for e in range(run)])
    actual = [LABELS[i % 3] for i in range(b + c + 5)]
    wrong = {a: LABELS[(LABELS.index(a) + 1) % 3] for a in LABELS}
    base = [a if i < b or i >= b + c else wrong[a] for i, a in enumerate(actual)]
    bi = [wrong[a] if i < b else a for i, a in enumerate(actual)]
    predicted = {name: actual for name in (*MODELS, *compare.REFERENCES)} | {"baseline": base, "birnn": bi}
    for name, labels in predicted.items():
        _write(
            f"metrics/predictions/{name}.json",
            [{"actual": a, "predicted": p, "probability": 0.75} for a, p in zip(actual, labels, strict=True)],
        )
    texts = "".join(json.dumps({"text": f"Article {k}: {a} | news", "label": a}) + "\n" for k, a in enumerate(actual))
    Path("data/prepared").mkdir(parents=True, exist_ok=True)
    Path("data/prepared/test.jsonl").write_text(texts, encoding="utf-8")


def _compare(seeds=SEEDS):
    _set_seeds(seeds)
    result = CliRunner().invoke(app, ["compare"])
    assert result.exit_code == 0, result.output
    compare_json, details = (
        json.loads(Path(f"metrics/{n}.json").read_text(encoding="utf-8")) for n in ("compare", "details")
    )
    return compare_json, details, Path("metrics/report.md").read_text(encoding="utf-8")


def _leaves(node, prefix: str = "") -> set[str]:
    if isinstance(node, dict):
        return set().union(*(_leaves(v, f"{prefix}{k}.") for k, v in node.items()))
    return {prefix.rstrip(".")}


@pytest.mark.parametrize(
    "b, c, p_value",
    [
        (1, 9, 22 / 1024),  # 2 * (C(10,0) + C(10,1)) / 2**10
        (9, 1, 22 / 1024),
        (0, 5, 2 / 32),
        (3, 3, 1.0),
        (0, 0, 1.0),  # no discordant pair: nothing to tell the models apart
    ],
)
def test_mcnemar_exact_matches_hand_computation(b, c, p_value):
    result = compare.mcnemar_exact(b, c)
    assert result == {"b": b, "c": c, "statistic": min(b, c), "p_value": pytest.approx(p_value, abs=1e-6)}


def test_mcnemar_agrees_with_scipy_binomtest():
    from scipy.stats import binomtest

    for b, c in [(0, 1), (2, 7), (10, 4), (25, 40), (150, 185), (3, 300)]:
        expected = binomtest(b, b + c, 0.5).pvalue
        assert compare.mcnemar_exact(b, c)["p_value"] == pytest.approx(expected, rel=1e-5)
    assert 0 < compare.mcnemar_exact(0, 60)["p_value"] < 1e-15  # never rounded down to 0


def test_discordant_pairs_count_only_one_sided_errors():
    base = [("a", "a"), ("a", "a"), ("b", "a"), ("b", "a"), ("c", "c")]
    bi = [("a", "b"), ("a", "a"), ("b", "b"), ("b", "c"), ("c", "c")]
    assert compare.discordant(base, bi) == (1, 1)


def test_paired_t_test_agrees_with_scipy_ttest_rel():
    from scipy.stats import ttest_rel

    cases = [
        ([0.84, 0.88, 0.86], [0.78, 0.80, 0.76]),
        ([0.86, 0.85, 0.87, 0.90, 0.81], [0.84, 0.88, 0.86, 0.85, 0.83]),
        ([0.5, 0.7], [0.6, 0.4]),
    ]
    for after, before in cases:
        expected = ttest_rel(after, before)
        got = compare.paired_t(after, before)
        assert got["seeds"] == len(after)
        assert got["mean_difference"] == pytest.approx(statistics.fmean(after) - statistics.fmean(before), abs=1e-6)
        assert got["t"] == pytest.approx(expected.statistic, rel=1e-5)
        assert got["p_value"] == pytest.approx(expected.pvalue, rel=1e-5)
    assert compare.paired_t([0.9], [0.8]) == {"mean_difference": 0.1, "seeds": 1, "t": None, "p_value": None}
    # Every seed moved by the same amount: no spread, so t is undefined; no change at all is p = 1.
    assert compare.paired_t([0.8, 0.9], [0.8, 0.9])["p_value"] == 1.0


def test_headline_and_details_across_seeds(tiny_project):
    write_inputs(b=0, c=10)
    headline, details, _ = _compare()

    birnn = details["summary"]["birnn"]
    assert birnn["val"]["accuracy"] == {"mean": 0.86, "sd": 0.02, "min": 0.84, "max": 0.88}
    assert birnn["train"]["accuracy"] == {"mean": 0.91, "sd": 0.02, "min": 0.89, "max": 0.93}
    assert birnn["test"]["accuracy"] == {"mean": 0.86, "sd": 0.01, "min": 0.85, "max": 0.87}
    assert birnn["val"]["loss"] == {"mean": 0.14, "sd": 0.02, "min": 0.12, "max": 0.16}
    assert birnn["val"]["macro_f1"] == {"mean": 0.85, "sd": 0.02, "min": 0.83, "max": 0.87}
    assert birnn["gap"] == {"mean": 0.05, "sd": 0.04, "min": 0.01, "max": 0.09}  # 0.09, 0.01, 0.05
    assert details["summary"]["reference"]["val"]["accuracy"] == {"mean": 0.95, "sd": 0.0, "min": 0.95, "max": 0.95}
    assert details["per_seed"]["stacked"]["9"]["test"] == {"accuracy": 0.84, "loss": 0.16, "macro_f1": 0.83}
    assert details["seeds"] == [7, 8, 9] and details["served_seed"] == 7

    # The headline holds the mean and sd of the same figures, nothing else.
    assert headline["seeds"] == 3
    assert headline["birnn"]["val"]["accuracy"] == {"mean": 0.86, "sd": 0.02}
    assert headline["birnn"]["gap"] == {"mean": 0.05, "sd": 0.04}
    assert headline["baseline"]["test"]["accuracy"] == {"mean": 0.79, "sd": 0.02}
    # A reference is one deterministic fit: its value, with no spread to show.
    assert headline["reference_tokens"]["val"]["accuracy"] == 0.93
    assert headline["reference"]["gap"] == 0.04

    assert details["parameters"] == {
        **{name: SIZES[name] for name in MODELS},
        "ratio": {name: SIZES[name] / 1000 for name in MODELS},
    }
    assert details["mcnemar_test"] == {
        "birnn_vs_baseline": {"b": 0, "c": 10, "statistic": 0, "p_value": pytest.approx(2 / 1024, rel=1e-5)},
        "seed": 7,
    }
    assert details["training"]["birnn"] == {
        "7": {"best_epoch": 4, "epochs_run": 9, "train_seconds": 12.5, "selection": ""},
        "8": {"best_epoch": 5, "epochs_run": 10, "train_seconds": 12.5, "selection": ""},
        "9": {"best_epoch": 6, "epochs_run": 11, "train_seconds": 12.5, "selection": ""},
    }


def test_paired_t_tests_in_details_pair_run_s_with_run_s(tiny_project):
    from scipy.stats import ttest_rel

    write_inputs()
    _, details, _ = _compare()
    for key, after, before in (("birnn_vs_baseline", "birnn", "baseline"), ("stacked_vs_birnn", "stacked", "birnn")):
        for split in ("val", "test"):
            test = details["paired_t_test"][key][split]
            expected = ttest_rel(ACCURACY[after][split], ACCURACY[before][split])
            assert test["seeds"] == 3
            assert test["t"] == pytest.approx(expected.statistic, rel=1e-5)
            assert test["p_value"] == pytest.approx(expected.pvalue, rel=1e-5)
            diff = statistics.fmean(a - b for a, b in zip(ACCURACY[after][split], ACCURACY[before][split], strict=True))
            assert test["mean_difference"] == pytest.approx(diff, abs=1e-6)
    # birnn - baseline on val: 0.06, 0.08, 0.10 -> t = 0.08 / (0.02 / sqrt 3)
    assert details["paired_t_test"]["birnn_vs_baseline"]["val"]["t"] == pytest.approx(6.928203, abs=1e-5)


def test_compare_json_holds_only_the_headline(tiny_project):
    write_inputs()
    headline, _, _ = _compare()
    models = (*MODELS, *compare.REFERENCES)
    expected = {"seeds"}
    for name in models:
        if name in compare.REFERENCES:
            expected |= {f"{name}.{s}.{m}" for s in SPLITS for m in ("accuracy", "loss", "macro_f1")} | {f"{name}.gap"}
            expected |= {f"{name}.test_ece.before", f"{name}.test_ece.after"}
        else:
            expected |= {
                f"{name}.{s}.{m}.{k}" for s in SPLITS for m in ("accuracy", "loss", "macro_f1") for k in ("mean", "sd")
            }
            expected |= {f"{name}.gap.mean", f"{name}.gap.sd"}
            # Of calibration, the mean test ECE before and after temperature scaling: no spread, no per-article list.
            expected |= {f"{name}.test_ece.before.mean", f"{name}.test_ece.after.mean"}
    for name in ("window", "birnn", "stacked"):
        for target in ("min_val_accuracy", "max_train_accuracy", "max_parameter_ratio"):
            expected |= {f"targets.{name}.{target}.{k}" for k in ("value", "met", "seeds_met")}
    assert _leaves(headline) == expected
    text = Path("metrics/compare.json").read_text(encoding="utf-8")
    for word in ("per_class", "confusion", "seconds", "tokens_per", "p_value", "epoch"):
        assert word not in text


def test_targets_are_met_on_the_mean_and_counted_per_seed(tiny_project):
    write_inputs()
    headline, details, report = _compare()
    # birnn val 0.84, 0.88, 0.86 (two reach 0.85); train 0.93, 0.89, 0.91 (two below 0.92).
    assert headline["targets"]["birnn"] == {
        "min_val_accuracy": {"value": 0.86, "met": True, "seeds_met": 2},
        "max_train_accuracy": {"value": 0.91, "met": True, "seeds_met": 2},
        "max_parameter_ratio": {"value": 1.25, "met": True, "seeds_met": 3},
    }
    assert headline["targets"]["stacked"]["min_val_accuracy"] == {"value": 0.86, "met": True, "seeds_met": 3}
    assert details["targets"]["birnn"]["min_val_accuracy"] == {
        "value": 0.86,
        "threshold": 0.85,
        "met": True,
        "seeds_met": 2,
        "seeds": 3,
    }
    assert "- ✓ validation accuracy at least 85 %: mean 86.0 % (2 of 3 seeds)" in report
    assert "- ✓ training accuracy below 92 %: mean 91.0 % (2 of 3 seeds)" in report
    assert "- ✓ at most 1.25 × the baseline's parameters: 1,250 / 1,000 = 1.250" in report
    assert "✗" not in report


@pytest.mark.parametrize(
    "model, split, values, missed, seeds_met",
    [
        ("birnn", "val", [0.80, 0.90, 0.83], "min_val_accuracy", 1),  # mean 0.843: one seed alone is not enough
        ("birnn", "train", [0.95, 0.88, 0.94], "max_train_accuracy", 1),  # mean 0.923
        # "below 92 %": a mean on the bound misses, though in floats fmean([0.90, 0.92, 0.94]) is
        # 0.9199999999999999; compare.json shows 0.92, so the decision must be on that value.
        ("birnn", "train", [0.90, 0.92, 0.94], "max_train_accuracy", 1),
        ("stacked", "val", [0.84, 0.84, 0.86], "min_val_accuracy", 1),  # mean 0.847
    ],
    ids=["birnn-val", "birnn-train", "birnn-train-mean-on-the-bound", "stacked-val"],
)
def test_a_missed_target_is_reported_not_an_error(tiny_project, model, split, values, missed, seeds_met):
    accuracy = json.loads(json.dumps(ACCURACY))
    accuracy[model][split] = values
    write_inputs(accuracy, b=2, c=2)
    headline, _, report = _compare()
    targets = headline["targets"][model]
    assert [k for k, t in targets.items() if not t["met"]] == [missed]
    assert targets[missed]["value"] == pytest.approx(statistics.fmean(values), abs=1e-6)
    assert targets[missed]["seeds_met"] == seeds_met
    other = "stacked" if model == "birnn" else "birnn"
    assert all(t["met"] for t in headline["targets"][other].values())
    assert report.count("✗") == 1
    assert "not significant at 0.05" in report


def test_parameter_ratio_above_the_bound_misses_on_every_seed(tiny_project):
    write_inputs()
    _write(
        "metrics/scores/stacked.json",
        {**json.loads(Path("metrics/scores/stacked.json").read_text()), "trainable_parameters": 1300},
    )
    headline, _, _ = _compare()
    assert headline["targets"]["stacked"]["max_parameter_ratio"] == {"value": 1.3, "met": False, "seeds_met": 0}


def test_report_cells_are_mean_plus_minus_sd(tiny_project):
    write_inputs(b=0, c=10)
    _, _, report = _compare()
    assert (
        "| After: BiRNN with dropout | 91.0 ± 2.0 | 86.0 ± 2.0 | 86.0 ± 1.0 | 0.090 ± 0.020 | 0.140 ± 0.020 "
        "| 85.0 ± 2.0 | 5.0 ± 4.0 pp | 1,250 (1.25 ×) |"
    ) in report
    assert "| Before: RNN, unidirectional, no dropout | 96.0 ± 1.0 | 78.0 ± 2.0 | 79.0 ± 2.0 |" in report
    # A reference is one fit: its cells hold the value alone.
    assert (
        "| Reference: TF-IDF + logistic regression, whole articles "
        "| 99.0 | 95.0 | 96.0 | 0.010 | 0.050 | 94.0 | 4.0 pp | — |" in report
    )
    assert "| 98.0 | 93.0 | 92.0 |" in report.split("the RNNs' tokens")[1].splitlines()[0]
    assert "- birnn: val accuracy 84.0 – 88.0 %, train accuracy 89.0 – 93.0 %, gap 1.0 – 9.0 pp" in report
    assert "- birnn: kept epoch / epochs run per seed: 4/9, 5/10, 6/11" in report
    assert "Served seed 7 on the test set (McNemar's exact test): 0 documents" in report
    assert "significant at 0.05" in report and "not significant" not in report
    assert "val +8.0 points, p = 0.0202" in report  # birnn - baseline: 0.06, 0.08, 0.10


def test_one_seed_has_no_spread_and_no_t_test(tiny_project):
    write_inputs()
    for name in MODELS:  # as evaluate writes it with train.seeds [8]: the served seed is 8
        data = json.loads(Path(f"metrics/calibration/{name}.json").read_text())
        _write(
            f"metrics/calibration/{name}.json",
            {**data, "served_seed": 8, "checkpoint_sha256": _checkpoint_sha(name, "8")},
        )
    headline, details, report = _compare(seeds=(8,))
    assert headline["seeds"] == 1
    assert headline["birnn"]["val"]["accuracy"] == {"mean": 0.88, "sd": 0.0}
    assert details["paired_t_test"]["birnn_vs_baseline"]["val"] == {
        "mean_difference": 0.08,
        "seeds": 1,
        "t": None,
        "p_value": None,
    }
    assert details["served_seed"] == 8 and details["mcnemar_test"]["seed"] == 8
    assert details["training"]["birnn"] == {
        "8": {"best_epoch": 5, "epochs_run": 10, "train_seconds": 12.5, "selection": ""}
    }
    assert "p = n/a (one seed)" in report
    assert "| 88.0 ± 0.0 |" in report


def _drop_birnn_scores():
    Path("metrics/scores/birnn.json").unlink()


def _truncate_reference():
    Path("metrics/scores/reference_tokens.json").write_text('{"seeds": {"0": {"train": {"accuracy": 0.9')


def _no_val_loss():
    data = json.loads(Path("metrics/scores/baseline.json").read_text())
    del data["seeds"]["8"]["val"]["loss"]
    _write("metrics/scores/baseline.json", data)


def _nan_accuracy():
    text = Path("metrics/scores/stacked.json").read_text().replace('"accuracy": 0.84', '"accuracy": NaN', 1)
    Path("metrics/scores/stacked.json").write_text(text)


def _a_seed_not_evaluated():
    data = json.loads(Path("metrics/scores/birnn.json").read_text())
    del data["seeds"]["9"]
    _write("metrics/scores/birnn.json", data)


def _other_test_documents():
    rows = json.loads(Path("metrics/predictions/birnn.json").read_text())
    _write("metrics/predictions/birnn.json", rows[1:])


def _no_training_summary():
    Path("metrics/train/stacked/seed9.json").unlink()


def _no_learning_curve():
    Path("dvclive/birnn/seed8/plots/metrics/val/loss.tsv").unlink()


def _summary_of_another_run():
    _write("metrics/train/birnn/seed8.json", {"best_epoch": 3, "epochs_run": 9, "checkpoint_sha256": "sha-other"})


def _curves_of_another_run():
    _write("dvclive/stacked/seed7/run.json", {"checkpoint_sha256": "sha-other"})


def _scores_of_another_evaluation():
    data = json.loads(Path("metrics/scores/reference.json").read_text())
    _write("metrics/scores/reference.json", {**data, "evaluation": "evaluation-2"})


def _summary_without_stamp():
    _write("metrics/train/baseline/seed9.json", {"best_epoch": 3, "epochs_run": 9})


@pytest.mark.parametrize(
    "damage, message",
    [
        (_drop_birnn_scores, "metrics/scores/birnn.json: evaluation scores not found"),
        (_truncate_reference, "metrics/scores/reference_tokens.json: evaluation scores is not readable JSON"),
        (_no_val_loss, "metrics/scores/baseline.json: no finite number at val.loss"),
        (_nan_accuracy, "metrics/scores/stacked.json: no finite number at"),
        (_a_seed_not_evaluated, "metrics/scores/birnn.json: no scores for seeds 7, 8, 9; rerun `pipeline evaluate`"),
        (_other_test_documents, "different test documents"),
        (_no_training_summary, "metrics/train/stacked/seed9.json: training summary not found"),
        (_no_learning_curve, "dvclive/birnn/seed8/plots/metrics/val/loss.tsv: learning curve not found"),
        (
            _summary_of_another_run,
            "dvclive/birnn/seed8 and metrics/train/birnn/seed8.json come from different runs of "
            "`pipeline train birnn --seed 8`",
        ),
        (
            _curves_of_another_run,
            "dvclive/stacked/seed7 and metrics/train/stacked/seed7.json come from different runs of "
            "`pipeline train stacked --seed 7`",
        ),
        (
            _scores_of_another_evaluation,
            "metrics/scores/reference.json and metrics/predictions come from different runs of `pipeline evaluate`",
        ),
        (_summary_without_stamp, "metrics/train/baseline/seed9.json: no checkpoint_sha256 stamp"),
    ],
)
def test_bad_inputs_fail_with_one_line(tiny_project, damage, message):
    _set_seeds(SEEDS)
    write_inputs()
    damage()
    result = CliRunner().invoke(app, ["compare"])
    assert result.exit_code == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output
    for name in ("compare.json", "details.json", "report.md", "figures"):
        assert not Path("metrics", name).exists()


def test_compare_reads_what_the_real_stages_write(tiny_project):
    runner = CliRunner()
    seeds = ("7", "8")
    runs = [["train", m] for m in MODELS]
    for args in (["download"], ["prepare"], *runs, ["evaluate"], ["suspects"], ["compare"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, (args, result.output)
    headline = json.loads(Path("metrics/compare.json").read_text())
    details = json.loads(Path("metrics/details.json").read_text())
    for name in (*MODELS, *compare.REFERENCES):
        scores = json.loads(Path(f"metrics/scores/{name}.json").read_text())["seeds"]
        val = [run["val"]["accuracy"] for run in scores.values()]
        assert sorted(scores) == (["0"] if name in compare.REFERENCES else list(seeds))
        mean = headline[name]["val"]["accuracy"]
        mean = mean if name in compare.REFERENCES else mean["mean"]
        assert mean == pytest.approx(statistics.fmean(val), abs=2e-6)
        assert details["summary"][name]["val"]["accuracy"]["max"] == max(val)
    birnn_val = [
        json.loads(Path("metrics/scores/birnn.json").read_text())["seeds"][s]["val"]["accuracy"] for s in seeds
    ]
    assert headline["targets"]["birnn"]["min_val_accuracy"]["seeds_met"] == sum(v >= 0.85 for v in birnn_val)
    for name in ("baseline", "birnn", "stacked"):
        for s in seeds:
            summary = json.loads(Path(f"metrics/train/{name}/seed{s}.json").read_text())
            kept = {k: details["training"][name][s][k] for k in ("best_epoch", "epochs_run", "train_seconds")}
            assert kept == {k: summary[k] for k in ("best_epoch", "epochs_run", "train_seconds")}
    rows = {n: json.loads(Path(f"metrics/predictions/{n}.json").read_text()) for n in ("baseline", "birnn")}
    b = sum(
        x["predicted"] == x["actual"] != y["predicted"] for x, y in zip(rows["baseline"], rows["birnn"], strict=True)
    )
    assert details["mcnemar_test"]["birnn_vs_baseline"]["b"] == b
    report = Path("metrics/report.md").read_text(encoding="utf-8")
    for row in ("| Before: RNN", "| After: BiRNN", "| Bonus: stacked", "| Reference: TF-IDF"):
        assert row in report


def test_a_train_run_stopped_between_its_outputs_is_refused_after_evaluate(tiny_project):
    """A run stopped after its checkpoint but before its summary and curves leaves a new model
    beside the previous run's files; once evaluate scores that model, compare refuses the set."""
    runner = CliRunner()
    _set_seeds((7,))
    runs = [["train", m] for m in MODELS]
    for args in (["download"], ["prepare"], *runs, ["evaluate"], ["suspects"], ["compare"]):
        assert runner.invoke(app, args).exit_code == 0, args
    old_summary = Path("metrics/train/birnn/seed7.json").read_bytes()
    old_stamp = Path("dvclive/birnn/seed7/run.json").read_bytes()
    raw = yaml.safe_load(Path("params.yaml").read_text())
    raw["train"]["max_epochs"] += 1
    Path("params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    assert runner.invoke(app, ["train", "birnn", "--seed", "7"]).exit_code == 0
    Path("metrics/train/birnn/seed7.json").write_bytes(old_summary)  # as if stopped right after the checkpoint
    Path("dvclive/birnn/seed7/run.json").write_bytes(old_stamp)
    assert runner.invoke(app, ["evaluate"]).exit_code == 0
    before = {p: p.read_bytes() for p in Path("metrics").rglob("*") if p.is_file()}
    result = runner.invoke(app, ["compare"])
    assert result.exit_code == 2
    assert result.stderr == (
        "error: metrics/scores/birnn.json scored another checkpoint of birnn/seed7 than "
        "metrics/train/birnn/seed7.json describes (one was stopped midway or the files were copied "
        "from elsewhere; rerun `dvc repro`)\n"
    )
    assert {p: p.read_bytes() for p in Path("metrics").rglob("*") if p.is_file()} == before


def test_calibration_is_summarised_across_seeds_and_reported(tiny_project):
    write_inputs()
    headline, details, report = _compare()
    birnn = details["calibration"]["birnn"]
    # birnn test accuracy 0.85, 0.87, 0.86: ECE (1 - acc) / 4 before, half of that after.
    assert birnn["temperature"] == {"mean": 1.5, "sd": 0.0, "min": 1.5, "max": 1.5}
    assert birnn["test"]["ece"]["mean"] == pytest.approx(0.035, abs=1e-6)
    assert birnn["test"]["ece_scaled"]["mean"] == pytest.approx(0.0175, abs=1e-6)
    assert birnn["val"]["loss_scaled"]["mean"] == pytest.approx(0.9 * 0.14, abs=1e-6)
    assert headline["birnn"]["test_ece"] == {"before": {"mean": 0.035}, "after": {"mean": 0.0175}}
    assert headline["reference"]["test_ece"] == {"before": 0.01, "after": 0.005}
    assert "## Calibration" in report
    # T | val ECE, after | test ECE, after (in %) | test NLL, after
    row = "| After: BiRNN with dropout | 1.50 ± 0.00 | 3.5 ± 0.5 | 1.8 ± 0.2 | 3.5 ± 0.2 | 1.8 ± 0.1 | 0.140 ± 0.010 "
    assert row + "| 0.126 ± 0.009 |" in report
    assert (
        "![Reliability diagrams, test split, before and after temperature scaling](figures/reliability.png)" in report
    )
    assert Path("metrics/figures/reliability.png").read_bytes()[:4] == b"\x89PNG"


def test_errors_file_lists_every_misclassified_test_article(tiny_project):
    write_inputs(b=2, c=3)
    _, details, report = _compare()
    rows = [json.loads(line) for line in Path("metrics/errors.jsonl").read_text(encoding="utf-8").splitlines()]
    predictions = {m: json.loads(Path(f"metrics/predictions/{m}.json").read_text()) for m in MODELS}
    texts = [json.loads(line)["text"] for line in Path("data/prepared/test.jsonl").read_text().splitlines()]
    expected = [
        {"model": m, "line": k + 1, "actual": r["actual"], "predicted": r["predicted"], "probability": 0.75}
        | {"text": texts[k][:200]}
        for m in MODELS
        for k, r in enumerate(predictions[m])
        if r["actual"] != r["predicted"]
    ]
    assert rows == expected and {r["model"] for r in rows} == {"baseline", "birnn"}
    # The baseline misses documents 3-5 (c = 3), the BiRNN documents 1-2 (b = 2): no document is missed by all.
    assert [r["line"] for r in rows if r["model"] == "baseline"] == [3, 4, 5]
    assert details["errors"]["per_model"]["baseline"] == 3 and details["errors"]["every_model_wrong"] == []
    errors_md = Path("metrics/errors.md").read_text(encoding="utf-8")
    assert "| 3 | tech | money | 0.750 | Article 2: tech \\| news |" in errors_md  # pipes escaped
    assert "## Articles every RNN model gets wrong (0)" in errors_md
    pairs = details["errors"]["pairs"]
    assert sum(p["errors"] for p in pairs) == len(rows)
    assert pairs[0]["errors"] >= pairs[-1]["errors"]
    assert "[errors.md](errors.md)" in report and "[suspects.md](suspects.md)" in report
    assert "cleanlab flags **1 of 40 training articles**" in report
    suspects = Path("metrics/suspects.md").read_text(encoding="utf-8")
    assert "| 4 | tech | sport | 0.050 | 0.900 | Goal \\| match |" in suspects


def test_articles_every_model_gets_wrong_and_a_class_without_test_article(tiny_project):
    write_inputs()
    actual = [r["actual"] for r in json.loads(Path("metrics/predictions/birnn.json").read_text())]
    for name in (*MODELS, *compare.REFERENCES):
        rows = json.loads(Path(f"metrics/predictions/{name}.json").read_text())
        if name in MODELS or name == "fasttext":  # the first document: wrong everywhere but in two references
            rows[0]["predicted"] = "money" if rows[0]["actual"] != "money" else "tech"
        _write(f"metrics/predictions/{name}.json", rows)
        scores = json.loads(Path(f"metrics/scores/{name}.json").read_text())
        for run in scores["seeds"].values():
            for split in SPLITS:  # a fourth label that has no test document
                run[split]["per_class"]["weather"] = {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
        _write(f"metrics/scores/{name}.json", scores)
    _, details, report = _compare()
    every = details["errors"]["every_model_wrong"]
    assert [e["line"] for e in every] == [1] and every[0]["actual"] == actual[0]
    assert every[0]["references_wrong"] == ["fasttext"]
    assert details["errors"]["without_test_article"] == ["weather"]
    assert details["errors"]["per_class"]["weather"] == {"articles": 0, "errors": 0}
    errors_md = Path("metrics/errors.md").read_text(encoding="utf-8")
    assert "| weather | 0 | no test article |" in errors_md
    assert "No test article has the class `weather`" in errors_md
    assert "No test article has the class `weather`: its test scores are not measured." in report
    assert "nan" not in errors_md.lower() and "NaN" not in Path("metrics/details.json").read_text()


def _calibration_of_another_evaluation():
    data = json.loads(Path("metrics/calibration/stacked.json").read_text())
    _write("metrics/calibration/stacked.json", {**data, "temperature": 2.0})


def _predictions_without_probability():
    rows = json.loads(Path("metrics/predictions/window.json").read_text())
    _write("metrics/predictions/window.json", [{"actual": r["actual"], "predicted": r["predicted"]} for r in rows])


def _texts_of_other_articles():
    lines = Path("data/prepared/test.jsonl").read_text().splitlines()
    Path("data/prepared/test.jsonl").write_text("\n".join(lines[1:]) + "\n")


def _no_suspects():
    Path("metrics/suspects.json").unlink()


@pytest.mark.parametrize(
    "damage, message",
    [
        (
            _calibration_of_another_evaluation,
            "metrics/calibration/stacked.json and metrics/scores/stacked.json come from different runs",
        ),
        (_predictions_without_probability, 'metrics/predictions/window.json: expected a list of {"actual"'),
        (_texts_of_other_articles, "data/prepared/test.jsonl: does not match metrics/predictions/ row for row"),
        (_no_suspects, "metrics/suspects.json: suspect labels not found"),
    ],
)
def test_bad_calibration_errors_or_suspects_inputs_fail_with_one_line(tiny_project, damage, message):
    _set_seeds(SEEDS)
    write_inputs()
    damage()
    result = CliRunner().invoke(app, ["compare"])
    assert result.exit_code == 2, result.output
    assert message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    for name in ("compare.json", "report.md", "errors.md", "suspects.md", "figures"):
        assert not Path("metrics", name).exists()
