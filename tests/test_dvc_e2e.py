"""The real `dvc` driving the real `pipeline` CLI in a temporary git repo, on the tiny corpus.

One test, in the order a user works: reproduce, reproduce again (nothing runs), change a BiRNN
param (only its training and what follows rerun; metrics and params diffs show it), run an
experiment with `-S`, list it, and draw the plots.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, make_corpus, tiny_params_dict

BIN = Path(sys.executable).parent  # the venv's bin: dvc, and the `pipeline` console script
ALL_STAGES = {"download", "prepare", "train@baseline", "train@birnn", "evaluate", "compare"}
AFTER_BIRNN = {"train@birnn", "evaluate", "compare"}


def _make_repo(repo: Path) -> dict[str, str]:
    shutil.copytree(ROOT / "pipeline", repo / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".dvcignore", "pyproject.toml", ".gitignore"):
        shutil.copy2(ROOT / name, repo / name)
    (repo / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in make_corpus()), encoding="utf-8")
    (repo / "params.yaml").write_text(yaml.safe_dump(tiny_params_dict(), sort_keys=False))
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        # The copy, not the editable install's /work/main, is what the stages import.
        "PYTHONPATH": str(repo),
        "DVC_NO_ANALYTICS": "1",
        "DVC_SITE_CACHE_DIR": str(repo.parent / "dvc-site-cache"),
        "GIT_AUTHOR_NAME": "e2e", "GIT_AUTHOR_EMAIL": "e2e@example.com",
        "GIT_COMMITTER_NAME": "e2e", "GIT_COMMITTER_EMAIL": "e2e@example.com",
    }
    return env


def _runner(repo: Path, env: dict[str, str]):
    def sh(*args: str) -> str:
        done = subprocess.run(args, cwd=repo, env=env, capture_output=True, text=True, timeout=300)
        output = done.stdout + done.stderr
        assert done.returncode == 0, f"{' '.join(args)} failed ({done.returncode}):\n{output[-3000:]}"
        return output

    return sh


def _ran(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def _set_dropout(repo: Path, value: float) -> None:
    path = repo / "params.yaml"
    raw = yaml.safe_load(path.read_text())
    raw["birnn"]["dropout"] = value
    path.write_text(yaml.safe_dump(raw, sort_keys=False))


def _exp_show_rows(node) -> list[dict]:
    """Every {"params", "metrics"} record anywhere in `dvc exp show --json`'s nested output."""
    rows = []
    if isinstance(node, dict):
        if "params" in node and "metrics" in node:
            rows.append(node)
        for value in node.values():
            rows += _exp_show_rows(value)
    elif isinstance(node, list):
        for value in node:
            rows += _exp_show_rows(value)
    return rows


def _plot_specs(html: str) -> list[dict]:
    return [json.loads(s) for s in re.findall(r"var spec = (\{.*?\});\s*\n", html)]


@pytest.mark.e2e
def test_dvc_repro_experiments_metrics_and_plots(tmp_path):
    if shutil.which("git") is None:
        pytest.skip("dvc needs git, which is not installed")
    repo = tmp_path / "repo"
    repo.mkdir()
    env = _make_repo(repo)
    sh = _runner(repo, env)
    sh("git", "init", "-q")
    sh("git", "config", "user.name", "e2e")  # dvc exp commits through its own git client
    sh("git", "config", "user.email", "e2e@example.com")
    sh(str(BIN / "dvc"), "init", "-q")
    shutil.copy2(ROOT / ".dvc" / "config", repo / ".dvc" / "config")
    shutil.copytree(ROOT / ".dvc" / "plots", repo / ".dvc" / "plots")
    sh(str(BIN / "pipeline"), "plots-template")  # the offline page .dvc/config names, as `make install` writes it
    sh("git", "add", "-A")
    sh("git", "commit", "-qm", "tiny project")

    def dvc(*args: str) -> str:
        return sh(str(BIN / "dvc"), *args)

    # 1. The whole pipeline runs once, then nothing is left to do.
    assert _ran(dvc("repro")) == ALL_STAGES
    report = (repo / "metrics" / "report.md").read_text(encoding="utf-8")
    assert "| Before: baseline RNN" in report and "| After: BiRNN" in report
    assert "![Test confusion matrices](figures/confusion_matrices.png)" in report
    assert (repo / "metrics" / "figures" / "confusion_matrices.png").read_bytes()[:4] == b"\x89PNG"
    sh("git", "add", "-A")
    sh("git", "commit", "-qm", "first run")
    again = dvc("repro")
    assert _ran(again) == set()
    assert "Data and pipelines are up to date" in again

    # 2. A BiRNN param: only train@birnn is stale, and only it and its downstream rerun.
    _set_dropout(repo, 0.2)
    assert set(json.loads(dvc("status", "--json"))) == {"train@birnn"}
    assert _ran(dvc("repro")) == AFTER_BIRNN

    # 3. The diffs against the commit name the param and the BiRNN's metrics, not the baseline's.
    params = json.loads(dvc("params", "diff", "--json"))
    assert params["params.yaml"]["birnn.dropout"]["old"] == 0.5
    assert params["params.yaml"]["birnn.dropout"]["new"] == 0.2
    assert list(params["params.yaml"]) == ["birnn.dropout"]
    metrics = json.loads(dvc("metrics", "diff", "--json"))
    assert {"val.loss", "test.loss"} <= set(metrics["metrics/birnn.json"])
    assert "metrics/baseline.json" not in metrics  # not retrained, so identical
    assert "metrics/reference.json" not in metrics
    sh("git", "add", "-A")
    sh("git", "commit", "-qm", "dropout 0.2")

    # 4. An experiment from the command line, listed with its params and metrics.
    assert _ran(dvc("exp", "run", "-S", "birnn.dropout=0.4")) == AFTER_BIRNN
    rows = _exp_show_rows(json.loads(dvc("exp", "show", "--json")))
    dropouts = {
        row["params"]["params.yaml"]["data"]["birnn"]["dropout"]: row["metrics"] for row in rows
    }
    assert {0.2, 0.4} <= set(dropouts)
    for metric_files in dropouts.values():
        birnn = metric_files["metrics/birnn.json"]["data"]
        assert all(isinstance(birnn[s]["accuracy"], float) for s in ("train", "val", "test"))
        assert "targets_met" in metric_files["metrics/compare.json"]["data"]

    # 5. The plots page holds the learning curves and the confusion matrices, and no line chart of labels.
    dvc("plots", "show", "-o", "plots")
    specs = _plot_specs((repo / "plots" / "index.html").read_text(encoding="utf-8"))
    by_title = {spec["title"]["text"]: spec for spec in specs}
    for title, curve in (("Loss (train vs. val)", "loss.tsv"), ("Accuracy (train vs. val)", "accuracy.tsv")):
        # DVC shortens the file names by their common prefix (dvclive/).
        files = {row["filename"] for row in by_title[title]["data"]["values"]}
        for model in ("baseline", "birnn"):
            for split in ("train", "val"):
                assert any(f.endswith(f"{model}/plots/metrics/{split}/{curve}") for f in files)
    confusion = by_title["Test confusion matrices"]
    assert {row["filename"].split("/")[-1] for row in confusion["data"]["values"]} == {
        "baseline.json", "birnn.json", "reference.json"
    }
    assert "facet" in confusion  # the confusion template: one matrix per file and revision
    assert "predicted" not in json.dumps([s for t, s in by_title.items() if t != "Test confusion matrices"])
