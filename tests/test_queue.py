"""A sweep through DVC's experiment queue: two experiments, two parallel workers, on the tiny corpus.

Queue workers run each experiment in a temporary copy of the commit that holds only git-tracked
files (and take unchanged outputs from the shared cache), so the corpus and the code are
committed here. They inherit the environment of `dvc queue start`, which is how
OMP_NUM_THREADS=1 reaches each worker's training and keeps two workers to one core each: the
train stage, which otherwise trains its seeds side by side in train.threads forked processes
(as the committed run does here), trains them one after another in its own process, on one
thread (which it records).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_params_dict
from dvc_repo import BIN, DVC, exp_show_rows, make_repo, ran, repo_env, runner, write_project

pytestmark = pytest.mark.e2e

TIMEOUT_S = 300


def _parent(pid: int) -> int | None:
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    return int(data[data.rindex(b")") + 2 :].split()[1])  # the name in (...) may hold spaces


def forked_trainers(seen: dict[int, str]) -> int:
    """How many of `seen` are workers forked by a train stage: its command line, and it their parent."""
    return sum(
        "pipeline train " in cmd and seen.get(_parent(pid)) == cmd  # a shell's `-c` line is not the same
        for pid, cmd in seen.items()
    )


def repro_watching(repo: Path, env: dict[str, str], log: Path) -> int:
    """`dvc repro` in `repo`; returns the most train workers seen at once."""
    most = 0
    with open(log, "w") as out:
        dvc = subprocess.Popen((DVC, "repro"), cwd=repo, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 2 * TIMEOUT_S
            while dvc.poll() is None and time.monotonic() < deadline:
                most = max(most, forked_trainers(processes_in(repo)))
                time.sleep(0.02)
        finally:
            if dvc.poll() is None:
                dvc.kill()
            dvc.wait()
    assert dvc.returncode == 0, log.read_text()[-3000:]
    return most


def processes_in(folder: Path) -> dict[int, str]:
    """{pid: command line} of the processes working inside `folder`."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if cwd == str(folder) or cwd.startswith(f"{folder}{os.sep}"):
            found[int(entry.name)] = cmdline
    return found


@pytest.mark.skipif(not Path("/proc/self/cwd").exists(), reason="watches the workers through /proc")
def test_two_queued_experiments_run_in_two_workers_with_one_thread_each(tmp_path):
    repo = tmp_path / "repo"
    params = tiny_params_dict()
    params["train"]["seeds"] = [7, 8]
    params["train"]["threads"] = 2  # as in params.yaml: OMP_NUM_THREADS=1 is what must cap it
    env = {k: v for k, v in make_repo(repo, params).items() if k != "OMP_NUM_THREADS"}
    sh = runner(repo, env)
    # Uncapped, each train stage trains its two seeds in two forked workers.
    assert repro_watching(repo, env, tmp_path / "repro.log") == 2
    sh("git", "add", "-A")
    sh("git", "commit", "-qm", "baseline run")

    for hidden_dim in (4, 12):
        assert "Queued experiment" in sh(DVC, "exp", "run", "--queue", "-S", f"birnn.hidden_dim={hidden_dim}")

    # The workers are daemons that keep whatever stdout they inherit open: a pipe would not close.
    with open(tmp_path / "queue-start.log", "w") as log:
        subprocess.run(
            (DVC, "queue", "start", "-j", "2"),
            cwd=repo,
            env={**env, "OMP_NUM_THREADS": "1"},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=120,
            check=True,
        )
    runs_at_once, forked = 0, 0
    try:
        # Workers exit on their own once the queue is empty; until then, count what runs at once.
        deadline = time.monotonic() + TIMEOUT_S
        while (seen := processes_in(repo)) and time.monotonic() < deadline:
            # One per experiment: a child forked by an exec-run shows its parent's command line
            # until it execs, and is not a third experiment.
            runs = [pid for pid, cmd in seen.items() if " exp exec-run " in cmd and seen.get(_parent(pid)) != cmd]
            runs_at_once = max(runs_at_once, len(runs))
            forked = max(forked, forked_trainers(seen))
            time.sleep(0.02)
    finally:
        if processes_in(repo):
            subprocess.run((DVC, "queue", "stop", "--kill"), cwd=repo, env=env, capture_output=True, timeout=120)
            time.sleep(5)
        for pid in processes_in(repo):  # whatever this test started and is still running
            os.kill(pid, signal.SIGKILL)
    assert not processes_in(repo), "queue workers still running"

    status = sh(DVC, "queue", "status")
    assert status.count("Success") == 2, status
    assert "Worker status: 0 active, 0 idle" in status
    assert runs_at_once == 2, "the two experiments did not run side by side"
    assert forked == 0, "a queued train stage trained its seeds in forked workers, past OMP_NUM_THREADS=1"

    experiments = {
        row["params"]["params.yaml"]["data"]["birnn"]["hidden_dim"]: row
        for row in exp_show_rows(json.loads(sh(DVC, "exp", "show", "--json")))
    }
    assert {4, 8, 12} <= set(experiments)  # the committed run and the two experiments
    trained = {}
    for hidden_dim in (4, 12):
        # Each trained the BiRNN only, the rest coming from the cache, in one thread. evaluate
        # reruns in one thread too, where the committed run had two: another model's fitted
        # temperature may then differ in its last digits (seen once in CI for the baseline's),
        # which republishes that model; no other model trains.
        stages = ran(sh(DVC, "queue", "logs", experiments[hidden_dim]["name"]))
        assert {"check-params", "train@birnn", "publish@birnn", "evaluate", "compare"} <= stages
        assert {s for s in stages if not s.startswith("publish@")} == {
            "check-params",
            "train@birnn",
            "evaluate",
            "compare",
        }
        summary = sh("git", "show", f"{experiments[hidden_dim]['rev']}:metrics/train/birnn/seed7.json")
        trained[hidden_dim] = json.loads(summary)
        assert trained[hidden_dim]["threads"] == 1
    assert trained[4]["trainable_parameters"] < trained[12]["trainable_parameters"]
    small, large = (experiments[h]["metrics"]["metrics/compare.json"]["data"]["birnn"] for h in (4, 12))
    assert small["val"]["loss"] != large["val"]["loss"]


def test_two_workspace_experiments_at_once_never_leave_outputs_filed_under_other_params(tmp_path):
    """`dvc exp run` applies its -S to params.yaml before it takes any lock, and runs its stages
    with the repository unlocked, so a second one started beside the first rewrites params.yaml
    under it. Which of the two then fails, and where, depends on the moment (DVC's locks, or the
    first's train stage refusing to publish, the test below): no command of the pipeline runs
    before that write, so the pipeline cannot refuse the second run itself; the docs say to use
    --queue. What it guarantees whatever the timing: no output is filed under params it was not
    made with, so `dvc status` tells the truth and one `dvc repro` puts the workspace right."""
    repo = tmp_path / "repo"
    env = make_repo(repo)
    sh = runner(repo, env)
    sh(DVC, "repro")
    sh("git", "add", "-A")
    sh("git", "commit", "-qm", "baseline run")
    logs = [tmp_path / "first.log", tmp_path / "second.log"]
    runs = []
    for hidden_dim, log in zip((4, 12), logs, strict=True):
        with open(log, "w") as out:
            command = (DVC, "exp", "run", "-S", f"birnn.hidden_dim={hidden_dim}")
            runs.append(subprocess.Popen(command, cwd=repo, env=env, stdout=out, stderr=subprocess.STDOUT))
        time.sleep(2)
    codes = [run.wait(timeout=TIMEOUT_S) for run in runs]
    assert set(codes) <= {0, 255}, [log.read_text()[-2000:] for log in logs]

    def trained_width() -> int:
        checkpoint = torch.load(repo / "models/birnn/seed7.pt", weights_only=True)
        return int(checkpoint["config"]["hidden_dim"])

    asked = yaml.safe_load((repo / "params.yaml").read_text())["birnn"]["hidden_dim"]
    if "up to date" in sh(DVC, "status", "train@birnn"):
        assert trained_width() == asked
    sh(DVC, "repro")
    assert trained_width() == asked
    assert "Data and pipelines are up to date" in sh(DVC, "status")


def _snapshot(repo: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(repo)): path.read_bytes()
        for folder in ("models", "metrics", "dvclive")
        for path in sorted((repo / folder).rglob("*"))
        if path.is_file()
    }


@pytest.mark.parametrize(
    ("section", "key", "refused"), [("birnn", "hidden_dim", True), ("stacked", "hidden_dim", False)]
)
def test_a_stage_whose_params_change_while_it_runs_publishes_nothing(tmp_path, section, key, refused):
    """What the pipeline can do about two experiments in one workspace: a stage publishes
    nothing once the params it read have changed in the file (DVC would record the new values
    beside outputs of the old ones); a change to a section it does not read lets it publish."""
    repo = tmp_path / "repo"
    params = tiny_params_dict()
    params["train"].update(max_epochs=200, patience=200)  # seconds of epochs after the first
    write_project(repo, params)
    env = repo_env(repo)
    sh = runner(repo, env)
    for step in (["download"], ["prepare"], ["train", "birnn"]):
        sh(str(BIN / "pipeline"), *step)
    before, folder = _snapshot(repo), (repo / "models/birnn").stat().st_ino
    train = subprocess.Popen(
        (str(BIN / "pipeline"), "train", "birnn"),
        cwd=repo,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert train.stdout is not None
    for line in train.stdout:
        if " epoch " in line:
            break
    params[section][key] += 1
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _, err = train.communicate(timeout=TIMEOUT_S)
    after = _snapshot(repo)
    if refused:
        assert train.returncode == 2 and len(err.strip().splitlines()) == 1, err
        assert f"params.yaml: {section} changed while this stage ran" in err and "--queue" in err
        assert after == before
    else:
        assert train.returncode == 0, err
        assert (repo / "models/birnn").stat().st_ino != folder  # a new generation, the same bytes
        assert after["models/birnn/seed7.pt"] == before["models/birnn/seed7.pt"]
    assert not list(repo.rglob("*.tmp"))
