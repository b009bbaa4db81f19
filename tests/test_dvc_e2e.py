"""The real `dvc` driving the real `pipeline` CLI in a temporary git repo, on the tiny corpus.

One test, in the order a user works: reproduce (one training stage per model, each training every
seed; the served checkpoints carry their temperature; the errors and suspect lists are written and
linked), reproduce again (nothing runs), change a BiRNN param (only the BiRNN's stage and what reads
it rerun, the BiRNN alone republished; the metrics diff shows only headline figures), add a seed
(every model retrains, the other seeds' checkpoints come out byte-identical), draw the plots.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from conftest import ROOT
from dvc_repo import BIN, ran, repo_env, runner, write_project

from pipeline.core.params import MODELS

SEEDS = (7, 8)  # conftest's tiny train.seeds; 7, the first, is the served seed
PLOTTED = ("baseline", "birnn", "stacked", "window")  # dvc.yaml's learning-curve plots


def _runs(models=MODELS) -> set[str]:
    return {f"train@{m}" for m in models}


# check-params runs first on any change to params.yaml; its output never changes.
ALL_STAGES = {
    "check-params",
    "download",
    "prepare",
    *_runs(),
    "evaluate",
    *(f"publish@{m}" for m in MODELS),
    "suspects",
    "compare",
}
# The BiRNN's calibration file alone changes, so the BiRNN alone is republished; suspects reads no model.
AFTER_BIRNN = {"check-params", *_runs(["birnn"]), "evaluate", "publish@birnn", "compare"}


def _edit_params(repo: Path, edit) -> None:
    path = repo / "params.yaml"
    raw = yaml.safe_load(path.read_text())
    edit(raw)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))


def _leaves(node, prefix: str = "") -> set[str]:
    """`birnn.val.accuracy.mean` for every number in a nested dict, as `dvc metrics diff` names them."""
    if isinstance(node, dict):
        return set().union(*(_leaves(v, f"{prefix}{k}.") for k, v in node.items()))
    return {prefix.rstrip(".")}


def _plot_specs(html: str) -> list[dict]:
    return [json.loads(s) for s in re.findall(r"var spec = (\{.*?\});\s*\n", html)]


def _bytes(repo: Path, pattern: str) -> dict[str, bytes]:
    return {str(p.relative_to(repo)): p.read_bytes() for p in sorted(repo.glob(pattern))}


@pytest.mark.e2e
def test_dvc_repro_seeds_metrics_and_plots(tmp_path):
    if shutil.which("git") is None:
        pytest.skip("dvc needs git, which is not installed")
    repo = tmp_path / "repo"
    repo.mkdir()
    write_project(repo)
    env = repo_env(repo)
    sh = runner(repo, env)
    sh("git", "init", "-q")
    sh(str(BIN / "dvc"), "init", "-q")
    shutil.copy2(ROOT / ".dvc" / "config", repo / ".dvc" / "config")
    shutil.copytree(ROOT / ".dvc" / "plots", repo / ".dvc" / "plots")
    sh(str(BIN / "pipeline"), "plots-template")  # the offline page .dvc/config names, as `make install` writes it
    sh("git", "add", "-A")
    sh("git", "commit", "-qm", "tiny project")

    def dvc(*args: str) -> str:
        return sh(str(BIN / "dvc"), *args)

    def commit(message: str) -> None:
        sh("git", "add", "-A")
        sh("git", "commit", "-qm", message)

    # 1. The whole pipeline runs once: one training stage per model, then nothing is left to do.
    assert ran(dvc("repro")) == ALL_STAGES
    for model in MODELS:
        runs = {p.name for p in (repo / "models" / model).glob("seed*.pt")}
        assert runs == {f"seed{s}.pt" for s in SEEDS}
        # The served checkpoint: the first seed's run with the temperature evaluate fitted for it.
        served = torch.load(repo / "models" / f"{model}.pt", weights_only=True)
        first = torch.load(repo / "models" / model / f"seed{SEEDS[0]}.pt", weights_only=True)
        second = torch.load(repo / "models" / model / f"seed{SEEDS[1]}.pt", weights_only=True)
        fitted = json.loads((repo / "metrics" / "calibration" / f"{model}.json").read_text())["temperature"]
        assert served.pop("temperature") == fitted > 0 and "temperature" not in first
        assert served.keys() == first.keys() and served["seed"] == first["seed"] != second["seed"]
        assert all(torch.equal(served["model"][k], first["model"][k]) for k in first["model"])
        for seed in SEEDS:
            assert (repo / "dvclive" / model / f"seed{seed}" / "plots" / "metrics" / "val" / "loss.tsv").is_file()
            assert (repo / "metrics" / "train" / model / f"seed{seed}.json").is_file()
    headline = json.loads((repo / "metrics" / "compare.json").read_text())
    assert headline["seeds"] == 2
    scores = json.loads((repo / "metrics" / "scores" / "stacked.json").read_text())
    assert list(scores["seeds"]) == ["7", "8"]
    report = (repo / "metrics" / "report.md").read_text(encoding="utf-8")
    assert "| After: BiRNN" in report and " ± " in report
    assert "![Test confusion matrices](figures/confusion_matrices.png)" in report
    assert (repo / "metrics" / "figures" / "confusion_matrices.png").read_bytes()[:4] == b"\x89PNG"
    # Calibration, the errors and the suspect labels, on the tiny corpus: written, linked, no NaN.
    assert "## Calibration" in report and "[errors.md](errors.md)" in report and "[suspects.md](suspects.md)" in report
    assert (repo / "metrics" / "figures" / "reliability.png").read_bytes()[:4] == b"\x89PNG"
    errors = [json.loads(line) for line in (repo / "metrics" / "errors.jsonl").read_text().splitlines()]
    predictions = json.loads((repo / "metrics" / "predictions" / "birnn.json").read_text())
    assert sum(row["model"] == "birnn" for row in errors) == sum(r["actual"] != r["predicted"] for r in predictions)
    assert "# Misclassified test articles" in (repo / "metrics" / "errors.md").read_text(encoding="utf-8")
    suspects = json.loads((repo / "metrics" / "suspects.json").read_text())
    assert (
        suspects["searched"]
        and suspects["articles"]
        == json.loads((repo / "data" / "prepared" / "stats.json").read_text())["splits"]["train"]["size"]
    )
    for path in (repo / "metrics").rglob("*.json"):
        assert "NaN" not in path.read_text(), path
    commit("first run")
    again = dvc("repro")
    assert ran(again) == set()
    assert "Data and pipelines are up to date" in again

    # 1b. dvc.yaml depends on code folders: bytecode beside the code changes nothing, while an
    # edit to a shared module marks every stage that runs it, and only those.
    (repo / "pipeline" / "model" / "__pycache__").mkdir(exist_ok=True)
    (repo / "pipeline" / "model" / "__pycache__" / "network.cpython-311.pyc").write_bytes(b"\0" * 16)
    assert json.loads(dvc("status", "--json")) == {}
    network = repo / "pipeline" / "model" / "network.py"
    original = network.read_bytes()
    network.write_bytes(original + b"# an edit\n")
    assert set(json.loads(dvc("status", "--json"))) == {*_runs(), "evaluate"}
    files_module = repo / "pipeline" / "core" / "files.py"
    kept = files_module.read_bytes()
    files_module.write_bytes(kept + b"# an edit\n")
    assert set(json.loads(dvc("status", "--json"))) == ALL_STAGES  # every stage publishes through core/files.py
    network.write_bytes(original)
    files_module.write_bytes(kept)
    assert json.loads(dvc("status", "--json")) == {}

    # 2. A BiRNN param: only the BiRNN's runs are stale; they and what reads them rerun.
    baseline_and_stacked = {**_bytes(repo, "models/baseline/seed*.pt"), **_bytes(repo, "models/stacked/seed*.pt")}
    assert len(baseline_and_stacked) == 4
    _edit_params(repo, lambda raw: raw["birnn"].update(dropout=0.2))
    # compare reads the model sections too: the ablation ladder's "change" column.
    assert set(json.loads(dvc("status", "--json"))) == {"check-params", *_runs(["birnn"]), "compare"}
    assert ran(dvc("repro")) == AFTER_BIRNN
    assert {
        **_bytes(repo, "models/baseline/seed*.pt"),
        **_bytes(repo, "models/stacked/seed*.pt"),
    } == baseline_and_stacked

    # 3. The diffs name the param, and only headline figures of metrics/compare.json: the BiRNN's.
    params = json.loads(dvc("params", "diff", "--json"))
    assert list(params) == ["params.yaml"] and list(params["params.yaml"]) == ["birnn.dropout"]
    assert (params["params.yaml"]["birnn.dropout"]["old"], params["params.yaml"]["birnn.dropout"]["new"]) == (0.5, 0.2)
    metrics = json.loads(dvc("metrics", "diff", "--json"))
    assert list(metrics) == ["metrics/compare.json"]
    changed = set(metrics["metrics/compare.json"])
    headline = json.loads((repo / "metrics" / "compare.json").read_text())
    assert changed and changed <= _leaves(headline)
    assert all(key.startswith(("birnn.", "targets.birnn.")) for key in changed), changed
    assert {"birnn.val.loss.mean", "birnn.train.loss.mean"} <= changed
    assert not any(key.startswith(("birnn.per_class", "errors", "suspects")) for key in changed)
    commit("dropout 0.2")

    # 4. A seed more: every model's stage trains all its seeds again, and the seeds it had come out
    # byte-identical (a run's numbers do not depend on the runs beside it); the served ones stay.
    trained = _bytes(repo, "models/*/seed*.pt")
    served = _bytes(repo, "models/*.pt")
    _edit_params(repo, lambda raw: raw["train"].update(seeds=[*SEEDS, 9]))
    stages = ran(dvc("repro"))
    assert {stage for stage in stages if stage.startswith("train@")} == _runs()
    assert {"evaluate", "compare"} <= stages <= ALL_STAGES - {"download", "prepare"}
    assert {k: v for k, v in _bytes(repo, "models/*/seed*.pt").items() if "seed9" not in k} == trained
    assert _bytes(repo, "models/*.pt") == served
    assert json.loads((repo / "metrics" / "compare.json").read_text())["seeds"] == 3
    assert list(json.loads((repo / "metrics" / "scores" / "birnn.json").read_text())["seeds"]) == ["7", "8", "9"]

    # 5. The plots page: the served seed's learning curves and the confusion matrices, no line chart of labels.
    dvc("plots", "show", "-o", "plots")
    specs = _plot_specs((repo / "plots" / "index.html").read_text(encoding="utf-8"))
    by_title = {spec["title"]["text"]: spec for spec in specs}
    for title, curve in (("Loss (train vs. val)", "loss.tsv"), ("Accuracy (train vs. val)", "accuracy.tsv")):
        # DVC shortens the file names by their common prefix (dvclive/).
        files = {row["filename"] for row in by_title[title]["data"]["values"]}
        assert len(files) == 2 * len(PLOTTED)
        for model in PLOTTED:
            for split in ("train", "val"):
                assert any(f.endswith(f"{model}/seed7/plots/metrics/{split}/{curve}") for f in files), files
    reliability = by_title["Reliability (test, served seed)"]
    rows = reliability["data"]["values"]
    assert {row["filename"].split("/")[-1] for row in rows} == {f"{m}.json" for m in (*PLOTTED, "reference")}
    assert {row["scaling"] for row in rows} == {"before", "after"} and all("accuracy" in row for row in rows)
    confusion = by_title["Test confusion matrices"]
    assert {row["filename"].split("/")[-1] for row in confusion["data"]["values"]} == {
        "baseline.json",
        "birnn.json",
        "stacked.json",
        "window.json",
        "reference.json",
    }
    assert "facet" in confusion  # the confusion template: one matrix per file and revision
    assert "predicted" not in json.dumps([s for t, s in by_title.items() if t != "Test confusion matrices"])
    assert "Reliability (test, served seed)" in by_title
