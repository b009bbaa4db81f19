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

from pipeline.core import files
from pipeline.core import params as params_module
from pipeline.stages import download, prepare

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
    summary = files.read_json("metrics/train/birnn/seed7.json", "summary")
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
                # A worker is torchrun's child: its own children (ninja, say) inherit RANK too.
                worker = "RANK" not in child.parent().environ()
                if worker and child.environ().get("RANK") == rank and "pipeline" in " ".join(child.cmdline()):
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


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _score_on_rank(rank: int, size: int, port: int, state: dict, queue) -> None:
    import torch
    import torch.distributed as dist

    from pipeline.core.distributed import World
    from pipeline.data.splits import Split
    from pipeline.model.network import ModelConfig, RNNClassifier
    from pipeline.stages.train import score_shard

    store = dist.TCPStore(
        "127.0.0.1", port, size, is_master=rank == 0, timeout=__import__("datetime").timedelta(seconds=60)
    )
    dist.init_process_group("gloo", store=store, rank=rank, world_size=size)
    try:
        model = RNNClassifier(ModelConfig(**state["config"]))
        model.load_state_dict(state["model"])
        split = Split(state["ids"], state["lengths"], state["labels"])
        queue.put((rank, score_shard(model, split, World(rank, size), torch.device("cpu"))))
    finally:
        dist.destroy_process_group()


def test_scoring_across_ranks_counts_every_text_once():
    """Seven texts over two ranks (an uneven shard): the same loss and accuracy as one process."""
    import dataclasses

    import torch
    import torch.multiprocessing as mp

    from pipeline.core.distributed import World
    from pipeline.data.splits import Split
    from pipeline.model.network import ModelConfig, RNNClassifier
    from pipeline.stages.train import score_shard

    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=20, num_classes=3, embed_dim=4, hidden_dim=5, bidirectional=True, readout="max")
    model = RNNClassifier(cfg)
    lengths = torch.tensor([5, 2, 7, 1, 3, 6, 4])
    ids = torch.randint(2, 20, (7, 7)) * (torch.arange(7)[None, :] < lengths[:, None])
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0])
    alone = score_shard(model, Split(ids, lengths, labels), World(), torch.device("cpu"))
    state = {
        "config": dataclasses.asdict(cfg),
        "model": model.state_dict(),
        "ids": ids,
        "lengths": lengths,
        "labels": labels,
    }
    context = mp.get_context("spawn")
    queue = context.Queue()
    port = _free_port()
    workers = [context.Process(target=_score_on_rank, args=(r, 2, port, state, queue)) for r in range(2)]
    for w in workers:
        w.start()
    results = dict(queue.get(timeout=120) for _ in workers)  # a rank that died must fail the test, not hang it
    for w in workers:
        w.join(timeout=60)
        assert w.exitcode == 0
    for rank in (0, 1):
        assert results[rank]["accuracy"] == pytest.approx(alone["accuracy"], abs=1e-12)
        assert results[rank]["loss"] == pytest.approx(alone["loss"], rel=1e-6)


def _node(rank: int, port: int, log: Path) -> subprocess.Popen:
    """One node's torchrun launcher, started the way docs/pipeline.md tells a user to on each machine."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]), PYTHONUNBUFFERED="1")
    command = [
        *(sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1"),
        *("--node-rank", str(rank), "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}"),
        *("--max-restarts", "0", "-m", "pipeline", "train", "birnn", "--seed", "7"),
    ]
    with log.open("w") as out:  # a file, not a pipe: neither node blocks on output nobody reads
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)


# What differs between two runs of the same training: how long it took.
TIMINGS = ("train_seconds", "tokens_per_second")


def test_two_nodes_of_one_process_train_what_two_processes_on_one_node_train(two_processes, tmp_path_factory):
    proc = _pipeline("train", "birnn", "--seed", "7")
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    one_node = Path("models/birnn/seed7.pt").read_bytes()
    one_node_summary = files.read_json("metrics/train/birnn/seed7.json", "summary")
    logs = tmp_path_factory.mktemp("nodes")
    port = _free_port()
    nodes = [_node(rank, port, logs / f"node{rank}.log") for rank in (0, 1)]
    try:
        deadline = time.monotonic() + 600
        for node in nodes:
            node.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        for node in nodes:
            if node.poll() is None:
                os.killpg(node.pid, signal.SIGKILL)  # the launcher and its worker
                node.wait()
    for rank, node in enumerate(nodes):
        assert node.returncode == 0, (logs / f"node{rank}.log").read_text()
    assert Path("models/birnn/seed7.pt").read_bytes() == one_node
    summary = files.read_json("metrics/train/birnn/seed7.json", "summary")
    assert summary["processes"] == 2
    assert {k: v for k, v in summary.items() if k not in TIMINGS} == {
        k: v for k, v in one_node_summary.items() if k not in TIMINGS
    }
    assert set(summary) == set(one_node_summary)
