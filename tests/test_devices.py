"""Devices: `predict --device` and `train.device` pick cpu, cuda or auto the same way; CPU stays the default.

The CUDA test runs only where a CUDA device is present; everywhere else it is reported as skipped.
"""

from __future__ import annotations

import json

import pytest
import torch
from checkpoints import save_random_checkpoint
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.core import devices
from pipeline.core.errors import UserError

TEXTS = ["match goal team", "bank market shares", "chip phone", "zebra"]


def _predict(*args: str):
    return CliRunner().invoke(app, ["predict", "--json", "--top-k", "3", *args, *TEXTS])


@pytest.fixture
def checkpoint(tmp_path, monkeypatch) -> str:
    monkeypatch.chdir(tmp_path)
    save_random_checkpoint(tmp_path / "m.pt", bidirectional=True, readout="max")
    return "m.pt"


def test_cpu_is_the_default_and_auto_without_cuda_is_the_cpu(checkpoint, monkeypatch):
    default = _predict("--model", checkpoint)
    assert default.exit_code == 0, default.output
    assert _predict("--model", checkpoint, "--device", "cpu").stdout == default.stdout
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _predict("--model", checkpoint, "--device", "auto").stdout == default.stdout
    assert len(default.stdout.splitlines()) == len(TEXTS)


def test_cuda_without_a_device_is_one_line_and_exit_2(checkpoint, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = _predict("--model", checkpoint, "--device", "cuda")
    assert result.exit_code == 2
    assert result.stderr == "error: --device: cuda was asked for but no CUDA device is available\n"
    assert result.stdout == ""


def test_an_unknown_device_is_refused_by_the_cli(checkpoint):
    result = _predict("--model", checkpoint, "--device", "gpu")
    assert result.exit_code == 2 and "gpu" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize(
    ("choice", "cuda", "expected"),
    [
        ("cpu", True, torch.device("cpu")),
        ("cpu", False, torch.device("cpu")),
        ("auto", False, torch.device("cpu")),
        ("auto", True, torch.device("cuda", 1)),
        ("cuda", True, torch.device("cuda", 1)),
    ],
)
def test_pick_follows_the_choice_and_what_is_there(monkeypatch, choice, cuda, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    assert devices.pick(choice, "train.device", index=1) == expected


def test_pick_refuses_cuda_without_a_device_and_unknown_choices(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="^train.device: cuda was asked for but no CUDA device is available$"):
        devices.pick("cuda", "train.device")
    with pytest.raises(UserError, match="^--device: must be one of auto, cpu, cuda, got 'gpu'$"):
        devices.pick("gpu", "--device")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_gives_the_cpus_probabilities(checkpoint):
    on_cpu, on_cuda = _predict("--model", checkpoint), _predict("--model", checkpoint, "--device", "cuda")
    assert on_cuda.exit_code == 0, on_cuda.output
    for cpu_row, cuda_row in zip(on_cpu.stdout.splitlines(), on_cuda.stdout.splitlines(), strict=True):
        cpu_probs = {t["label"]: t["probability"] for t in json.loads(cpu_row)["top_k"]}
        cuda_probs = {t["label"]: t["probability"] for t in json.loads(cuda_row)["top_k"]}
        assert cuda_probs == pytest.approx(cpu_probs, abs=1e-5)
