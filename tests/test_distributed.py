"""Data-parallel training under torchrun: two gloo processes, byte-identical reruns, a killed rank."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from pipeline import download, io, prepare
from pipeline import params as params_module

pytestmark = pytest.mark.e2e


def _pipeline(*args: str, **kwargs) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        **kwargs,
    )


@pytest.fixture
def two_processes(tiny_project):
    raw = yaml.safe_load(Path("params.yaml").read_text())
    raw["train"].update(processes=2, batch_size=8)
    Path("params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    loaded = params_module.load("params.yaml")
    download.run(loaded)
    prepare.run(loaded)
    return tiny_project


def test_two_gloo_processes_train_identically_twice_and_the_checkpoint_predicts(two_processes):
    outputs = []
    for _ in range(2):
        proc = _pipeline("train", "birnn", "--seed", "7")
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
        assert out.count("birnn/seed7 epoch   1/3") == 1  # rank 0 alone logs
        outputs.append(Path("models/birnn/seed7.pt").read_bytes())
    assert outputs[0] == outputs[1]
    summary = io.read_json("metrics/train/birnn/seed7.json", "summary")
    assert summary["processes"] == 2 and summary["threads"] == 1
    proc = _pipeline("predict", "--model", "models/birnn/seed7.pt", "goal striker league")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    header, row = out.splitlines()
    assert header.split("\t") == ["#", "text", "label", "probability"]
    assert row.split("\t")[2] in {"money", "sport", "tech"}


def _rank_process(root: psutil.Process, rank: str, timeout: float) -> psutil.Process:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in root.children(recursive=True):
            try:
                if child.environ().get("RANK") == rank and "pipeline" in " ".join(child.cmdline()):
                    return child
            except psutil.Error:
                continue
        time.sleep(0.2)
    raise AssertionError(f"rank {rank} never started")


def test_a_killed_rank_fails_the_stage_with_one_line_instead_of_hanging(two_processes):
    raw = yaml.safe_load(Path("params.yaml").read_text())
    raw["train"]["max_epochs"] = 10_000  # long enough to be killed mid-run
    raw["birnn"]["early_stopping"] = False
    Path("params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    proc = _pipeline("train", "birnn", "--seed", "7")
    rank1 = _rank_process(psutil.Process(proc.pid), "1", timeout=120)
    time.sleep(3)  # let it reach the training loop
    started = time.monotonic()
    rank1.send_signal(signal.SIGKILL)
    out, err = proc.communicate(timeout=120)
    assert time.monotonic() - started < 60
    assert proc.returncode == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1] == "error: data-parallel training failed: rank 1 was killed by SIGKILL", err
    assert "Traceback" not in err
    assert not Path("models/birnn").exists()
