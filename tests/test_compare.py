"""compare stage: McNemar by hand, target logic on made-up metrics, the report, bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline import compare
from pipeline.cli import app

LABELS = ("money", "sport", "tech")


def _write(path: str, obj) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(obj), encoding="utf-8")


def _scores(train: float, val: float, test: float, loss: float = 0.5) -> dict:
    return {
        split: {"accuracy": acc, "loss": loss, "macro_f1": acc - 0.01}
        for split, acc in (("train", train), ("val", val), ("test", test))
    }


def write_inputs(
    birnn_train: float = 0.90,
    birnn_val: float = 0.87,
    sizes: tuple[int, int] = (1000, 1100),
    b: int = 1,
    c: int = 3,
) -> None:
    """Made-up evaluate/train outputs: b test docs only the baseline gets right, c only the BiRNN."""
    _write("metrics/baseline.json", _scores(0.95, 0.78, 0.77, loss=0.45))
    _write("metrics/birnn.json", _scores(birnn_train, birnn_val, 0.86, loss=0.35))
    _write("metrics/reference.json", _scores(0.99, 0.95, 0.96, loss=0.2))
    for name, size in zip(("baseline", "birnn"), sizes):
        _write(f"metrics/train_{name}.json", {"trainable_parameters": size, "best_epoch": 4, "epochs_run": 9})
    actual = [LABELS[i % 3] for i in range(b + c + 5)]
    wrong = {a: LABELS[(LABELS.index(a) + 1) % 3] for a in LABELS}
    base = [a if i < b or i >= b + c else wrong[a] for i, a in enumerate(actual)]
    bi = [wrong[a] if i < b else a for i, a in enumerate(actual)]
    for name, predicted in (("baseline", base), ("birnn", bi)):
        _write(f"metrics/predictions/{name}.json", [{"actual": a, "predicted": p} for a, p in zip(actual, predicted)])


def _compare():
    result = CliRunner().invoke(app, ["compare"])
    return result, json.loads(Path("metrics/compare.json").read_text()) if result.exit_code == 0 else None


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


def test_targets_met_and_reported_with_ticks(tiny_project):
    write_inputs(birnn_train=0.91, birnn_val=0.85, sizes=(1000, 1250), b=0, c=10)
    result, out = _compare()
    assert result.exit_code == 0, result.output
    assert out["targets_met"] is True
    assert out["targets"]["min_val_accuracy"] == {"value": 0.85, "threshold": 0.85, "met": True}
    assert out["targets"]["max_train_accuracy"] == {"value": 0.91, "threshold": 0.92, "met": True}
    assert out["targets"]["max_parameter_ratio"] == {"value": 1.25, "threshold": 1.25, "met": True}
    assert out["parameters"] == {"baseline": 1000, "birnn": 1250, "ratio": 1.25}
    assert out["generalisation_gap"] == {"baseline": 0.17, "birnn": 0.06, "reference": 0.04}
    assert out["birnn_minus_baseline"]["val"] == {"accuracy": 0.07, "loss": -0.1, "macro_f1": 0.07}
    assert out["mcnemar_test"] == {"b": 0, "c": 10, "statistic": 0, "p_value": pytest.approx(2 / 1024, rel=1e-5)}

    report = Path("metrics/report.md").read_text(encoding="utf-8")
    assert "| Before: baseline RNN (unidirectional) | 95.0% | 78.0% | 77.0% | 0.450 |" in report
    assert "| After: BiRNN (bidirectional + dropout) | 91.0% | 85.0% | 86.0% | 0.350 |" in report
    assert "| Reference: TF-IDF + logistic regression | 99.0% | 95.0% | 96.0% |" in report
    assert "Before: Training accuracy 95.0%, Validation accuracy 78.0%, Losses 0.45 / 0.45" in report
    assert "- ✓ validation accuracy at least 85.0%: 85.0%" in report
    assert "- ✓ training accuracy below 92.0%: 91.0%" in report
    assert "✗" not in report
    assert "significant at 0.05" in report and "not significant" not in report


@pytest.mark.parametrize(
    "inputs, missed",
    [
        ({"birnn_val": 0.80}, "min_val_accuracy"),
        ({"birnn_train": 0.95}, "max_train_accuracy"),
        ({"birnn_train": 0.92}, "max_train_accuracy"),  # "below 92 %": the bound itself misses
        ({"sizes": (1000, 1300)}, "max_parameter_ratio"),
    ],
)
def test_a_missed_target_is_reported_not_an_error(tiny_project, inputs, missed):
    write_inputs(**inputs, b=2, c=2)
    result, out = _compare()
    assert result.exit_code == 0, result.output
    assert out["targets_met"] is False
    assert [k for k, t in out["targets"].items() if not t["met"]] == [missed]
    report = Path("metrics/report.md").read_text(encoding="utf-8")
    assert report.count("✗") == 2  # the missed target and "All targets met: no ✗"
    assert "All targets met: no ✗" in report
    assert "not significant at 0.05" in report


def _drop_birnn_metrics():
    Path("metrics/birnn.json").unlink()


def _truncate_reference():
    Path("metrics/reference.json").write_text('{"train": {"accuracy": 0.9')


def _no_val_loss():
    data = json.loads(Path("metrics/baseline.json").read_text())
    del data["val"]["loss"]
    _write("metrics/baseline.json", data)


def _other_test_documents():
    rows = json.loads(Path("metrics/predictions/birnn.json").read_text())
    _write("metrics/predictions/birnn.json", rows[1:])


@pytest.mark.parametrize(
    "damage, message",
    [
        (_drop_birnn_metrics, "metrics/birnn.json: evaluation metrics not found"),
        (_truncate_reference, "metrics/reference.json: evaluation metrics is not readable JSON"),
        (_no_val_loss, "metrics/baseline.json: no number at val.loss"),
        (_other_test_documents, "different test documents"),
    ],
)
def test_bad_inputs_fail_with_one_line(tiny_project, damage, message):
    write_inputs()
    damage()
    result = CliRunner().invoke(app, ["compare"])
    assert result.exit_code == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not Path("metrics/compare.json").exists()


def test_compare_reads_what_the_real_stages_write(tiny_project):
    runner = CliRunner()
    for args in (["download"], ["prepare"], ["train", "baseline"], ["train", "birnn"], ["evaluate"], ["compare"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, (args, result.output)
    out = json.loads(Path("metrics/compare.json").read_text())
    birnn = json.loads(Path("metrics/birnn.json").read_text())
    assert out["targets"]["min_val_accuracy"]["value"] == birnn["val"]["accuracy"]
    assert out["generalisation_gap"]["birnn"] == pytest.approx(
        birnn["train"]["accuracy"] - birnn["val"]["accuracy"], abs=2e-6
    )
    rows = {n: json.loads(Path(f"metrics/predictions/{n}.json").read_text()) for n in ("baseline", "birnn")}
    b = sum(x["predicted"] == x["actual"] != y["predicted"] for x, y in zip(rows["baseline"], rows["birnn"]))
    assert out["mcnemar_test"]["b"] == b
    report = Path("metrics/report.md").read_text(encoding="utf-8")
    for row in ("| Before: baseline RNN", "| After: BiRNN", "| Reference: TF-IDF"):
        assert row in report
