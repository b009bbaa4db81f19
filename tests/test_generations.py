"""download and prepare killed with SIGKILL: readers see the old outputs or the new ones, never
a mix, and the next run leaves no temp file behind.

The kills land at each file a stage publishes (the k-th os.replace, where a stage that replaced
its files one by one would be caught half way) and at seeded random moments.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, make_corpus, tiny_params_dict

OUTPUTS = {"download": "data/raw", "prepare": "data/prepared"}
FILES = {"download": 2, "prepare": 9}  # what each stage publishes


# Runs a stage that kills itself with SIGKILL at its k-th os.replace (k = argv[1]).
KILL_AT_REPLACE = """
import os, signal, sys
k, calls, real = int(sys.argv[1]), 0, os.replace
def replace(*args, **kwargs):
    global calls
    calls += 1
    if calls == k:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*args, **kwargs)
os.replace = replace
from pipeline.cli import main
sys.argv = ["pipeline", sys.argv[2]]
main()
"""


def _stage(stage: str, cwd: Path, kill_at: int | None = None) -> subprocess.Popen:
    # The system temp folder is one the test can see: a killed stage must leave nothing there.
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(cwd.parent / "systmp")}
    args = ["-m", "pipeline", stage]
    if kill_at is not None:
        args = ["-c", KILL_AT_REPLACE, str(kill_at), stage]
    return subprocess.Popen(
        [sys.executable, *args], cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def _run(stage: str, cwd: Path) -> None:
    proc = _stage(stage, cwd)
    _, err = proc.communicate()
    assert proc.returncode == 0, err.decode()


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())} if folder.exists() else {}


def _project(root: Path, seed: int) -> Path:
    root.mkdir()
    docs = make_corpus(n_per_class=700, seed=seed)
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    raw = tiny_params_dict()
    raw["prepare"]["seed"] = seed
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return root


@pytest.mark.parametrize("stage", ["download", "prepare"])
def test_a_killed_stage_leaves_one_whole_generation(tmp_path, stage):
    (tmp_path / "systmp").mkdir()
    # The new generation differs from the old in corpus and seed, so a mix would show.
    new = _project(tmp_path / "new", seed=1)
    _run("download", new)
    _run("prepare", new)
    expected_new = _files(new / OUTPUTS[stage])
    work = _project(tmp_path / "work", seed=0)
    _run("download", work)
    _run("prepare", work)
    old = _files(work / OUTPUTS[stage])
    assert old != expected_new
    shutil.copy(new / "corpus.jsonl", work / "corpus.jsonl")
    shutil.copy(new / "params.yaml", work / "params.yaml")
    if stage == "prepare":
        shutil.copytree(new / "data/raw", work / "data/raw", dirs_exist_ok=True)

    for k in range(1, FILES[stage] + 1):
        proc = _stage(stage, work, kill_at=k)
        proc.wait()
        assert _files(work / OUTPUTS[stage]) in (old, expected_new), f"mixed at replace {k}"
    rng = random.Random(stage)
    for delay in sorted(rng.uniform(0.05, 1.5) for _ in range(2)):
        proc = _stage(stage, work)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert _files(work / OUTPUTS[stage]) in (old, expected_new), f"mixed after {delay:.2f} s"
    _run(stage, work)
    assert _files(work / OUTPUTS[stage]) == expected_new
    assert sorted(p.name for p in (work / "data").iterdir()) == ["prepared", "raw"]
    assert list((tmp_path / "systmp").iterdir()) == []
