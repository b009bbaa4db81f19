"""Damaged or misplaced artifacts: each is one line naming the problem, exit code 2, nothing written.

A checkpoint of random bytes or damaged in other ways, a folder given as --model, and evaluation
scores holding Infinity; and no JSON the pipeline writes ever holds Infinity or NaN.
"""

from __future__ import annotations

import io as stdio
import json
import random
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from test_compare import SEEDS, _set_seeds, write_inputs
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.core import files

ROOT = Path(__file__).resolve().parents[1]


def _predict(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", "predict", *args],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        timeout=300,
    )


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _zip_checkpoint() -> bytes:
    buffer = stdio.BytesIO()
    torch.save({"model": {"weight": torch.zeros(4)}}, buffer)
    return buffer.getvalue()


def _damaged_pickle() -> bytes:
    """A whole zip archive whose pickle is random bytes."""
    source, target = stdio.BytesIO(_zip_checkpoint()), stdio.BytesIO()
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for item in old.infolist():
            data = old.read(item)
            new.writestr(item, random.Random(1).randbytes(len(data)) if item.filename.endswith("data.pkl") else data)
    return target.getvalue()


CHECKPOINTS = {
    "random bytes": (lambda: random.Random(0).randbytes(5000), "not the zip archive that torch.save writes"),
    "a text file": (lambda: b"hello world\n", "not the zip archive that torch.save writes"),
    "an empty file": (lambda: b"", "not the zip archive that torch.save writes"),
    "cut short": (lambda: _zip_checkpoint()[:300], "not the zip archive that torch.save writes"),
    "random pickle in a whole zip": (_damaged_pickle, "its contents are damaged"),
}


@pytest.mark.parametrize("case", CHECKPOINTS)
def test_a_damaged_checkpoint_is_one_line_naming_it(tmp_path, case):
    make, reason = CHECKPOINTS[case]
    (tmp_path / "model.pt").write_bytes(make())
    before = _files(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "predict", "--model", "model.pt", "goal"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        timeout=300,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: model.pt: not a readable checkpoint"), result.stderr
    assert reason in lines[0]
    assert "refused" not in lines[0] and "dvc repro" not in lines[0]
    assert result.stdout == ""
    assert _files(tmp_path) == before


@pytest.mark.parametrize("inside", [["birnn.pt", "baseline.pt"], []])
def test_a_folder_as_model_names_a_file_in_it_not_dvc_repro(tmp_path, inside):
    folder = tmp_path / "trained"
    folder.mkdir()
    for name in inside:
        (folder / name).write_bytes(b"")
    result = _predict("--model", str(folder), "goal")
    assert result.returncode == 2
    example = f", e.g. {folder}/baseline.pt" if inside else " (a .pt file)"
    assert result.stderr == f"error: {folder}: is a folder; give the checkpoint file itself{example}\n"


def test_a_missing_checkpoint_outside_models_does_not_suggest_dvc_repro(tmp_path):
    result = _predict("--model", str(tmp_path / "nowhere.pt"), "goal")
    assert result.returncode == 2
    assert result.stderr == f"error: {tmp_path / 'nowhere.pt'}: model checkpoint not found\n"


def _strict(text: str):
    def refuse(constant: str):
        raise AssertionError(f"{constant} in strict JSON")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize("value", ["Infinity", "-Infinity", "NaN"])
def test_scores_holding_infinity_are_refused_and_compare_json_stays_strict(tiny_project, value):
    _set_seeds(SEEDS)
    write_inputs()
    assert CliRunner().invoke(app, ["compare"]).exit_code == 0
    for name in ("compare.json", "details.json"):
        _strict(Path("metrics", name).read_text(encoding="utf-8"))
    before = _files(Path("metrics"))
    scores = Path("metrics/scores/birnn.json")
    scores.write_text(scores.read_text().replace('"loss": 0.16', f'"loss": {value}', 1))
    before[str(scores.relative_to("metrics"))] = scores.read_bytes()
    result = CliRunner().invoke(app, ["compare"])
    assert result.exit_code == 2
    assert result.stderr == "error: metrics/scores/birnn.json: no finite number at val.loss; rerun `dvc repro`\n"
    assert _files(Path("metrics")) == before


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_no_json_output_can_hold_a_non_finite_number(tmp_path, value):
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        files.write_json(tmp_path / "out.json", {"p_value": value})
    assert list(tmp_path.iterdir()) == []
