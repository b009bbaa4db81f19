"""train: early stopping, checkpoints that load without pickle, determinism, a fast tiny run."""

from __future__ import annotations

import dataclasses
import errno
import json
import multiprocessing
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.core import files, layout
from pipeline.core.errors import UserError
from pipeline.data.splits import load_split
from pipeline.model import checkpoints
from pipeline.model.network import ModelConfig, RNNClassifier, predict_logits
from pipeline.stages import download, prepare, train


@pytest.fixture
def prepared(tiny_params):
    download.run(tiny_params)
    prepare.run(tiny_params)
    return tiny_params


def test_tiny_end_to_end_train_through_the_cli(prepared):
    result = CliRunner().invoke(app, ["train", "birnn", "--seed", "7"])
    assert result.exit_code == 0, result.output
    summary = json.loads(Path("metrics/train/birnn/seed7.json").read_text())
    assert summary["epochs_run"] == 3 and 1 <= summary["best_epoch"] <= 3
    assert summary["trainable_parameters"] > 0 and summary["tokens_per_second"] > 0
    assert summary["seed"] == 7 and summary["processes"] == 1
    history = Path("dvclive/birnn/seed7/plots/metrics/val/accuracy.tsv").read_text().splitlines()
    assert len(history) == 1 + 3  # header and one row per epoch
    assert [row.split("\t")[0] for row in history[1:]] == ["1", "2", "3"]  # x axis = epoch
    assert "birnn/seed7 epoch   1/3  train loss" in result.output
    assert not list(Path("dvclive/birnn").glob(".*"))  # no scratch folder left behind


def test_a_seed_outside_train_seeds_is_refused(prepared):
    result = CliRunner().invoke(app, ["train", "birnn", "--seed", "9"])
    assert result.exit_code == 2
    assert "--seed 9: not in train.seeds (7, 8)" in result.output
    assert not Path("models/birnn").exists()


def test_a_diverging_loss_stops_with_one_line_and_writes_nothing(prepared, monkeypatch):
    train.run(prepared, "baseline", 7)
    before = {p: p.read_bytes() for p in Path(".").rglob("*") if p.is_file() and "baseline" in str(p)}
    forward, calls = RNNClassifier.forward, []

    def diverging(self, ids, lengths):  # the weights blow up at the fifth batch
        calls.append(1)
        logits = forward(self, ids, lengths)
        return logits * float("nan") if len(calls) >= 5 else logits

    monkeypatch.setattr(RNNClassifier, "forward", diverging)
    result = CliRunner().invoke(app, ["train", "baseline", "--seed", "7"])
    assert result.exit_code == 2, result.output
    assert "training diverged: the loss became" in result.output and "Traceback" not in result.output
    after = {p: p.read_bytes() for p in Path(".").rglob("*") if p.is_file() and "baseline" in str(p)}
    assert after == before


def test_checkpoint_round_trips(prepared):
    train.run(prepared, "baseline", 7)
    ckpt = checkpoints.load_checkpoint("models/baseline/seed7.pt")
    assert ckpt["labels"] == ["money", "sport", "tech"]
    assert ckpt["vocab_sha256"] == files.sha256_file("data/prepared/vocab.json")
    assert ckpt["vocab"] == json.loads(Path("data/prepared/vocab.json").read_text())["tokens"]
    assert ckpt["encoding"] == {"max_len": 24, "keep": "head"}
    model = RNNClassifier(ModelConfig(**ckpt["config"]))
    model.load_state_dict(ckpt["model"])
    assert model.cfg.bidirectional is False and model.cfg.dropout == 0.0
    val = train.load_split("val")
    logits = predict_logits(model, val.ids, val.lengths, 4)
    expected = torch.nn.functional.cross_entropy(logits, val.labels).item()
    assert expected == pytest.approx(ckpt["best_val_loss"], abs=1e-5)


class Payload:
    """Stands for arbitrary code a pickled checkpoint could run on load."""


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            {"model": {}, "config": Payload(), "labels": [], "vocab_sha256": "", "epoch": 1, "best_val_loss": 0.0},
            "refused, the checkpoint holds more than tensors",
        ),
        ({"weights": torch.zeros(1)}, "not a pipeline checkpoint"),
    ],
)
def test_unsafe_or_foreign_checkpoints_are_refused(tmp_path, content, message):
    path = tmp_path / "model.pt"
    torch.save(content, path)
    with pytest.raises(UserError, match=message):
        checkpoints.load_checkpoint(path)


def test_garbage_checkpoint_is_refused(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"PK\x03\x04 this is not a checkpoint")
    with pytest.raises(UserError, match="not a readable checkpoint"):
        checkpoints.load_checkpoint(path)


@pytest.mark.parametrize("name", ["birnn", "stacked"])
def test_same_params_give_identical_checkpoint_and_metrics(prepared, name):
    train.run(prepared, name, 7)
    first = layout.run_checkpoint(name, 7).read_bytes()
    first_val = (layout.run_curves(name, 7) / "plots/metrics/val/loss.tsv").read_text()
    train.run(prepared, name, 7)
    assert layout.run_checkpoint(name, 7).read_bytes() == first

    def losses(text):
        return [line.split("\t")[-1] for line in text.splitlines()]  # drop the timestamp column

    assert losses((layout.run_curves(name, 7) / "plots/metrics/val/loss.tsv").read_text()) == losses(first_val)
    train.run(prepared, name, 8)
    assert layout.run_checkpoint(name, 8).read_bytes() != first


def test_early_stopping_restores_the_best_epoch(prepared, monkeypatch):
    val_losses = iter([1.0, 0.5, 0.7, 0.9, 0.1])
    snapshots = []
    real_score = train.score_shard

    def scripted(model, split, world, device):
        metrics = real_score(model, split, world, device)
        if split is scripted.val:
            snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
            metrics["loss"] = next(val_losses)
        return metrics

    scripted.val = train.load_split("val")
    monkeypatch.setattr(train, "score_shard", scripted)
    monkeypatch.setattr(train, "load_split", lambda name, **_: scripted.val if name == "val" else train_split)
    train_split = train.Split(*(getattr(scripted.val, k) for k in ("ids", "lengths", "labels")))
    params = dataclasses.replace(prepared, train=dataclasses.replace(prepared.train, max_epochs=10, patience=2))
    train.run(params, "birnn", 7)

    summary = json.loads(Path("metrics/train/birnn/seed7.json").read_text())
    assert summary["best_epoch"] == 2 and summary["epochs_run"] == 4  # two epochs without improvement
    saved = checkpoints.load_checkpoint("models/birnn/seed7.pt")
    assert saved["epoch"] == 2 and saved["best_val_loss"] == 0.5
    for key, tensor in saved["model"].items():
        assert torch.equal(tensor, snapshots[1][key]), key
    assert not all(torch.equal(saved["model"][k], snapshots[3][k]) for k in saved["model"])


def test_full_batch_training_like_the_starter_experiment(prepared, monkeypatch):
    """batch_size null: every epoch is one step over one batch holding every training document."""
    epochs = []
    real = train.train_one_epoch

    def counting(model, split, batches, *args, **kwargs):
        epochs.append([len(batch) for batch in batches])
        return real(model, split, batches, *args, **kwargs)

    monkeypatch.setattr(train, "train_one_epoch", counting)
    params = dataclasses.replace(prepared, train=dataclasses.replace(prepared.train, batch_size=None))
    train.run(params, "baseline", 7)
    documents = len(load_split("train"))
    assert json.loads(Path("metrics/train/baseline/seed7.json").read_text())["epochs_run"] == 3
    assert epochs == [[documents]] * 3


@pytest.mark.parametrize("array, beyond", [("ids", "vocab"), ("labels", "classes")])
def test_prepared_arrays_beyond_the_vocabulary_or_classes_exit_2_before_training(prepared, array, beyond):
    import numpy as np

    path = Path("data/prepared/train.npz")
    with np.load(path) as data:
        arrays = {k: data[k].copy() for k in data.files}
    vocab = len(json.loads(Path("data/prepared/vocab.json").read_text())["tokens"])
    classes = len(json.loads(Path("data/prepared/labels.json").read_text()))
    arrays[array].flat[0] = vocab if beyond == "vocab" else classes
    np.savez(path, **arrays)
    result = CliRunner().invoke(app, ["train", "birnn", "--seed", "7"])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: {path}: {array}: 1 values outside [0, ")
    assert len(result.stderr.strip().splitlines()) == 1
    assert not Path("models/birnn").exists()


def test_missing_prepared_data_exits_2(tiny_project):
    result = CliRunner().invoke(app, ["train", "baseline", "--seed", "7"])
    assert result.exit_code == 2
    assert "run `dvc repro prepare` first" in result.output and "Traceback" not in result.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present here")
def test_asking_for_cuda_without_a_device_exits_2(prepared):
    raw = Path("params.yaml").read_text().replace("device: cpu", "device: cuda")
    assert "device: cuda" in raw
    Path("cuda.yaml").write_text(raw)
    result = CliRunner().invoke(app, ["train", "birnn", "--seed", "7", "--params", "cuda.yaml"])
    assert result.exit_code == 2
    assert "train.device: cuda was asked for but no CUDA device is available" in result.output
    assert not Path("models/birnn").exists()


@pytest.mark.parametrize(
    "arch", [{}, {"bidirectional": True}, {"bidirectional": True, "num_layers": 2, "hidden_dim": 44}]
)
def test_scoring_batches_hold_their_states_within_budget_and_score_the_same(arch):
    from pipeline.core.distributed import World
    from pipeline.data.splits import SCORE_STATE_BYTES, Split, score_batch_size
    from pipeline.model.network import ModelConfig, RNNClassifier
    from pipeline.stages.train import score_shard

    torch.manual_seed(0)
    model = RNNClassifier(ModelConfig(vocab_size=30, num_classes=3, embed_dim=8, **arch))
    directions = 2 if model.cfg.bidirectional else 1
    row = directions * model.cfg.num_layers * model.cfg.hidden_dim * 100 * 4  # bytes of states per text
    rows = score_batch_size(model, 100)
    assert rows & (rows - 1) == 0 and 16 <= rows <= 1024
    assert rows * row <= SCORE_STATE_BYTES < 2 * rows * row
    assert score_batch_size(model, 1) == 1024 and score_batch_size(model, 10**6) == 16
    # A split of several batches scores as one batch does (padding and batching change nothing).
    lengths = torch.randint(1, 101, (3 * rows + 5,), generator=torch.Generator().manual_seed(1))
    ids = torch.randint(2, 30, (len(lengths), 100)) * (torch.arange(100)[None, :] < lengths[:, None])
    split = Split(ids, lengths, torch.randint(0, 3, (len(lengths),)))
    batched = score_shard(model, split, World(), torch.device("cpu"))
    with torch.inference_mode():
        logits = model.eval()(ids, lengths)
    assert batched["loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits, split.labels).item(), rel=1e-5)
    assert batched["accuracy"] * len(lengths) == pytest.approx(int((logits.argmax(1) == split.labels).sum()))


def _side_by_side(params, threads: int = 2):
    return dataclasses.replace(params, train=dataclasses.replace(params.train, seeds=(7, 8, 9), threads=threads))


@pytest.mark.parametrize("name", ["baseline", "birnn", "stacked"])
def test_runs_side_by_side_write_the_bytes_of_each_run_alone(prepared, name):
    """Three seeds trained in two threads at once give each seed's checkpoint from a run alone."""
    params = _side_by_side(prepared)
    train.run(params, name)
    together = {seed: layout.run_checkpoint(name, seed).read_bytes() for seed in (7, 8, 9)}
    summaries = {seed: json.loads(layout.run_summary(name, seed).read_text()) for seed in (7, 8, 9)}
    assert len(set(together.values())) == 3  # three different runs
    for seed in (7, 8, 9):
        train.run(params, name, seed)
        assert layout.run_checkpoint(name, seed).read_bytes() == together[seed], seed
        alone = json.loads(layout.run_summary(name, seed).read_text())
        assert alone["best_epoch"] == summaries[seed]["best_epoch"]
        assert alone["checkpoint_sha256"] == summaries[seed]["checkpoint_sha256"]
    train.run(params, name)  # and a rerun of all three is byte-identical
    assert {seed: layout.run_checkpoint(name, seed).read_bytes() for seed in (7, 8, 9)} == together


def test_a_run_of_every_seed_replaces_the_model_folders_whole(prepared):
    params = _side_by_side(prepared)
    train.run(params, "baseline")
    fewer = dataclasses.replace(params, train=dataclasses.replace(params.train, seeds=(8,)))
    train.run(fewer, "baseline")
    assert sorted(p.name for p in Path("models/baseline").iterdir()) == ["seed8.pt"]
    assert sorted(p.name for p in Path("metrics/train/baseline").iterdir()) == ["seed8.json"]
    assert sorted(p.name for p in Path("dvclive/baseline").iterdir()) == ["seed8"]


def test_one_failing_run_stops_the_others_and_writes_nothing(prepared, monkeypatch):
    params = _side_by_side(prepared)
    train.run(params, "birnn")
    before = {p: p.read_bytes() for p in Path(".").rglob("*") if p.is_file() and "birnn" in str(p)}
    real = train.train_one_epoch

    def seed8_diverges(model, split, batch_list, *args, **kwargs):  # runs in the forked workers
        if model.generator.initial_seed() == 8:
            raise UserError("training diverged: the loss became nan after 0 examples")
        return real(model, split, batch_list, *args, **kwargs)

    monkeypatch.setattr(train, "train_one_epoch", seed8_diverges)
    result = CliRunner().invoke(app, ["train", "birnn"])
    assert result.exit_code == 2 and "training diverged" in result.output and "Traceback" not in result.output
    after = {p: p.read_bytes() for p in Path(".").rglob("*") if p.is_file() and "birnn" in str(p)}
    assert after == before
    assert multiprocessing.active_children() == []  # no worker left training


def test_a_worker_killed_midway_stops_the_stage_with_one_line(prepared, monkeypatch):
    """Killed without a word (kill -9, the OOM killer): the stage says so instead of waiting forever."""
    params = _side_by_side(prepared)
    real = train.train_one_epoch

    def seed9_is_killed(model, split, batch_list, *args, **kwargs):
        if model.generator.initial_seed() == 9:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(model, split, batch_list, *args, **kwargs)

    monkeypatch.setattr(train, "train_one_epoch", seed9_is_killed)
    with pytest.raises(UserError, match=r"the run of seed 9 ended without a result \(exit code -9\)"):
        train.run(params, "birnn")
    assert not Path("models/birnn").exists() and multiprocessing.active_children() == []


def test_the_training_ceiling_keeps_the_best_epoch_under_it(prepared, monkeypatch):
    """max_train_accuracy: the lowest val loss among epochs whose train accuracy is below the ceiling."""
    train_acc = iter([0.5, 0.8, 0.95, 0.97, 0.99, 0.99])
    val_loss = iter([0.9, 0.6, 0.3, 0.2, 0.1, 0.1])
    real_score = train.score_shard

    def scripted(model, split, world, device):
        metrics = real_score(model, split, world, device)
        if split is scripted.train:
            metrics["accuracy"] = next(train_acc)
        else:
            metrics["loss"] = next(val_loss)
        return metrics

    scripted.train = train.load_split("train")
    monkeypatch.setattr(train, "score_shard", scripted)
    monkeypatch.setattr(train, "load_split", lambda name, **_: scripted.train if name == "train" else val_split)
    val_split = load_split("val")
    params = dataclasses.replace(
        prepared,
        train=dataclasses.replace(prepared.train, max_epochs=6, patience=3, seeds=(7,)),
        window=dataclasses.replace(prepared.window, max_train_accuracy=0.9),
    )
    train.run(params, "window", 7)
    summary = json.loads(Path("metrics/train/window/seed7.json").read_text())
    assert summary["best_epoch"] == 2 and summary["train_accuracy"] == 0.8
    assert summary["epochs_run"] == 5  # epochs 3, 4, 5 break the ceiling: patience runs out
    assert summary["selection"] == "lowest val loss among epochs with train accuracy < 0.9"
    assert summary["unconstrained"]["epoch"] == 5 and summary["unconstrained"]["train_accuracy"] == 0.99
    assert checkpoints.load_checkpoint("models/window/seed7.pt")["epoch"] == 2


def test_a_ceiling_no_epoch_meets_stops_with_one_line(prepared):
    params = dataclasses.replace(prepared, window=dataclasses.replace(prepared.window, max_train_accuracy=1e-9))
    result = CliRunner().invoke(app, ["train", "window", "--seed", "7"])
    assert result.exit_code == 0  # the file's ceiling is met
    with pytest.raises(UserError, match="no epoch reached training accuracy below max_train_accuracy = 1e-09"):
        train.run(params, "window", 7)


def test_a_model_weight_decay_overrides_the_training_one(prepared):
    t = prepared.train
    assert train.for_model(t, prepared.birnn) is t
    assert train.for_model(t, prepared.window).weight_decay == prepared.window.weight_decay != t.weight_decay


MODEL_FOLDERS = ("models/baseline", "metrics/train/baseline", "dvclive/baseline")


def _outputs(root: Path = Path(".")) -> dict[str, bytes]:
    """Every file and folder of the baseline's three output folders, hidden ones included."""
    found = {}
    for folder in MODEL_FOLDERS:
        for path in sorted((root / folder).rglob("*")):
            found[str(path.relative_to(root))] = path.read_bytes() if path.is_file() else b"<folder>"
    return found


def _full_metrics_disk(monkeypatch) -> None:
    """metrics/train on a full disk: every file written into it fails as on a full filesystem."""
    real = Path.write_bytes

    def write_bytes(path, data):
        if "metrics/train" in path.as_posix():
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(path, data)

    monkeypatch.setattr(Path, "write_bytes", write_bytes)


@pytest.mark.parametrize("seed", [None, 8])
def test_a_full_disk_leaves_the_three_old_folders_and_says_so_in_one_line(prepared, monkeypatch, seed):
    """Whole model or one seed: the old checkpoint, summary and curves stay together, byte for byte."""
    train.run(dataclasses.replace(prepared, train=dataclasses.replace(prepared.train, max_epochs=2)), "baseline")
    before = _outputs()
    _full_metrics_disk(monkeypatch)
    result = CliRunner().invoke(app, ["train", "baseline", *([] if seed is None else ["--seed", str(seed)])])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert (
        errors
        == [
            "error: metrics/train/baseline/seed7.json: cannot be written (No space left on device); "
            "the previous outputs are kept"
        ]
        if seed is None
        else [
            "error: metrics/train/baseline/seed8.json: cannot be written (No space left on device); "
            "the previous outputs are kept"
        ]
    )
    assert _outputs() == before
    assert sorted(p.name for p in Path("models").iterdir()) == ["baseline"]


FULL_DISK = r"""
import json, os, subprocess, sys, yaml
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from test_train import _outputs

def train():
    return subprocess.run([sys.executable, "-m", "pipeline", "train", "baseline"], capture_output=True, text=True)

assert train().returncode == 0
before = _outputs()
try:  # fill the 64 KiB filesystem of metrics/train
    with open("metrics/train/filler", "wb") as filler:
        while True:
            filler.write(b"\0" * 1024)
            filler.flush()
except OSError:
    pass
params = yaml.safe_load(Path("params.yaml").read_text())
params["train"]["max_epochs"] = 2
Path("params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
done = train()
print(json.dumps({"code": done.returncode, "stderr": done.stderr, "same": _outputs() == before,
                  "left": sorted(p.name for p in Path("metrics/train").iterdir())}))
"""


def test_a_real_full_filesystem_under_metrics_train_leaves_the_three_old_folders(prepared):
    """A 64 KiB tmpfs on metrics/train, in a mount namespace of the test's own (`unshare`)."""
    Path("metrics/train").mkdir(parents=True)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [
            "unshare",
            "--mount",
            "--map-root-user",
            "sh",
            "-c",
            'mount -t tmpfs -o size=64k tmpfs metrics/train && exec "$0" -c "$1" "$2"',
            sys.executable,
            FULL_DISK,
            str(Path(__file__).parent),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["code"] == 2
    assert result["stderr"].splitlines() == [
        "error: metrics/train/baseline/seed7.json: cannot be written (No space left on device); "
        "the previous outputs are kept"
    ]
    assert result["same"]
    assert result["left"] == ["baseline", "filler"]  # no temp folder


def test_a_symlinked_curves_folder_stays_a_link_and_leaves_no_temp(prepared):
    """dvclive/<model> pointing elsewhere (another disk): the folder it points to gets the curves."""
    Path("elsewhere/baseline").mkdir(parents=True)
    Path("dvclive").mkdir()
    Path("dvclive/baseline").symlink_to(Path("elsewhere/baseline").resolve())
    train.run(prepared, "baseline", 7)
    train.run(prepared, "baseline")
    train.run(prepared, "baseline", 8)
    assert Path("dvclive/baseline").is_symlink()
    assert sorted(p.name for p in Path("dvclive").iterdir()) == ["baseline"]
    assert sorted(p.name for p in Path("elsewhere/baseline").iterdir()) == ["seed7", "seed8"]
    assert Path("elsewhere/baseline/seed8/plots/metrics/val/loss.tsv").is_file()


def test_runs_at_once_keeps_every_core_busy_to_the_end(monkeypatch):
    """Five runs on two cores: three at once (2.5 run times) rather than two (three rounds)."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert [train.runs_at_once(runs, 2) for runs in (1, 2, 3, 4, 5, 6, 7)] == [1, 2, 3, 2, 3, 2, 4]
    assert train.runs_at_once(5, 1) == 1  # one thread (a DVC queue's OMP_NUM_THREADS=1): one run at a time
    # A stage that may use more cores than train.threads never takes them.
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert train.runs_at_once(5, 2) == 2
