"""train stage: data/prepared/ -> models/<model>.pt, metrics/train_<model>.json, dvclive/<model>/.

Mini-batch training (or full-batch when train.batch_size is null, like the seed's loop)
with Adam/AdamW and gradient clipping. After every epoch the model is scored in eval mode
on the training and validation splits. With the model's `early_stopping`, training stops
once the validation loss has not improved for train.patience epochs and the best epoch's
weights are the ones saved; without it every epoch runs and the last is kept. Learning
curves go to DVCLive's plots.
"""

from __future__ import annotations

import copy
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from pipeline import io
from pipeline.errors import UserError
from pipeline.models import ModelConfig, RNNClassifier, count_parameters, predict_logits
from pipeline.params import Params, TrainParams

PREPARED = Path("data/prepared")
EVAL_BATCH = 256


@dataclass(frozen=True)
class Split:
    ids: torch.Tensor  # (N, T) int64
    lengths: torch.Tensor  # (N,) int64
    labels: torch.Tensor  # (N,) int64


def load_split(name: str, folder: Path = PREPARED) -> Split:
    arrays = io.load_arrays(folder / f"{name}.npz", ("ids", "lengths", "labels"))
    split = Split(*(torch.from_numpy(arrays[k]).long() for k in ("ids", "lengths", "labels")))
    if len(split.ids) == 0:
        raise UserError(f"{folder / name}.npz: the {name} split is empty")
    return split


def pick_device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device: cuda was asked for but no CUDA device is available")
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(choice)


def train_one_epoch(
    model: RNNClassifier,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    grad_clip: float | None,
    device: torch.device,
) -> tuple[float, int]:
    """One pass over the loader; returns the mean train-mode loss and the real tokens seen."""
    model.train()
    criterion = nn.CrossEntropyLoss()
    loss_total, seen, tokens = 0.0, 0, 0
    for ids, lengths, labels in loader:
        ids = ids[:, : int(lengths.max())]  # drop columns that are padding for the whole batch
        optimizer.zero_grad(set_to_none=True)
        batch_loss = criterion(model(ids.to(device), lengths), labels.to(device))
        batch_loss.backward()
        if grad_clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        loss_total += batch_loss.item() * len(labels)
        seen += len(labels)
        tokens += int(lengths.sum())
    return loss_total / seen, tokens


@torch.no_grad()
def evaluate(model: RNNClassifier, split: Split, batch_size: int = EVAL_BATCH) -> dict[str, float]:
    """Eval-mode loss and accuracy on a whole split."""
    logits = predict_logits(model, split.ids, split.lengths, batch_size)
    loss = nn.functional.cross_entropy(logits, split.labels).item()
    accuracy = (logits.argmax(1) == split.labels).float().mean().item()
    return {"loss": loss, "accuracy": accuracy}


def _make_optimizer(model: nn.Module, t: TrainParams) -> torch.optim.Optimizer:
    cls = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam
    return cls(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)


class _Progress:
    """A rich progress bar on a terminal; otherwise a plain line per epoch for CI logs."""

    def __init__(self, name: str, max_epochs: int):
        self.bar = None
        if sys.stdout.isatty():
            from rich.progress import Progress

            self.bar = Progress(transient=False)
            self.task = self.bar.add_task(f"train {name}", total=max_epochs)
            self.bar.start()

    def epoch(self, line: str) -> None:
        if self.bar is None:
            print(line, flush=True)
        else:
            self.bar.console.print(line, markup=False, highlight=False, soft_wrap=True)
            self.bar.advance(self.task)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def fit(
    model: RNNClassifier,
    train: Split,
    val: Split,
    t: TrainParams,
    name: str,
    early_stopping: bool = True,
    live=None,
) -> dict:
    """Train; with early stopping on validation loss, the best epoch's weights are restored.

    Without early stopping all t.max_epochs run and the last epoch is kept. Either way
    "best_epoch" in the summary is the epoch whose weights the model holds on return.
    """
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(t.seeds[0])
    loader = DataLoader(
        TensorDataset(train.ids, train.lengths, train.labels),
        batch_size=t.batch_size or len(train.ids),
        shuffle=True,
        generator=generator,
    )
    optimizer = _make_optimizer(model, t)
    kept = {"epoch": 0, "val_loss": math.inf, "state": None}
    lowest_val_loss = math.inf
    tokens_total, seconds_total, epochs_run, bad_epochs = 0, 0.0, 0, 0
    progress = _Progress(name, t.max_epochs)
    try:
        for epoch in range(1, t.max_epochs + 1):
            start = time.perf_counter()
            running_loss, tokens = train_one_epoch(model, loader, optimizer, t.grad_clip, device)
            seconds = time.perf_counter() - start
            train_m, val_m = evaluate(model, train), evaluate(model, val)
            tokens_total, seconds_total, epochs_run = tokens_total + tokens, seconds_total + seconds, epoch
            if live is not None:
                live.step = epoch  # the plots' x axis counts epochs from 1, like the log lines
                for split, m in (("train", train_m), ("val", val_m)):
                    live.log_metric(f"{split}/loss", m["loss"], plot=True)
                    live.log_metric(f"{split}/accuracy", m["accuracy"], plot=True)
                # The train-mode mean over the epoch's batches (dropout on, weights moving).
                live.log_metric("train/running_loss", running_loss, plot=True)
                live.log_metric("seconds_per_epoch", seconds)
                live.next_step()
            improved = val_m["loss"] < lowest_val_loss
            lowest_val_loss = min(lowest_val_loss, val_m["loss"])
            bad_epochs = 0 if improved else bad_epochs + 1
            if improved or not early_stopping:
                kept = {"epoch": epoch, "val_loss": val_m["loss"], "state": copy.deepcopy(model.state_dict())}
            progress.epoch(
                f"{name} epoch {epoch:3d}/{t.max_epochs}  train loss {train_m['loss']:.4f} "
                f"acc {train_m['accuracy']:.3f} | val loss {val_m['loss']:.4f} "
                f"acc {val_m['accuracy']:.3f} | {seconds:.1f}s" + (" *" if improved else "")
            )
            if early_stopping and bad_epochs >= t.patience:
                break
    finally:
        progress.close()
    model.load_state_dict(kept["state"])
    return {
        "best_epoch": kept["epoch"],
        "best_val_loss": kept["val_loss"],
        "epochs_run": epochs_run,
        "train_seconds": round(seconds_total, 3),
        "tokens_per_second": round(tokens_total / seconds_total, 1) if seconds_total else 0.0,
    }


def run(params: Params, name: str) -> None:
    t, mp = params.train, params.model(name)
    torch.set_num_threads(t.threads)
    device = pick_device(t.device)
    train, val = load_split("train"), load_split("val")
    labels = io.read_json(PREPARED / "labels.json", "label list")
    stats = io.read_json(PREPARED / "stats.json", "prepare stats")
    vocab_sha256 = io.sha256_file(PREPARED / "vocab.json")
    cfg = ModelConfig.from_params(mp, vocab_size=int(stats["vocab_size"]), num_classes=len(labels))

    torch.manual_seed(t.seeds[0])
    model = RNNClassifier(cfg).to(device)
    from dvclive import Live

    with Live(dir=f"dvclive/{name}", save_dvc_exp=False, dvcyaml=None) as live:
        summary = fit(model, train, val, t, name, mp.early_stopping, live)
    checkpoint = {
        "model": {k: v.cpu() for k, v in model.state_dict().items()},
        "config": asdict(cfg),
        "labels": list(labels),
        "vocab_sha256": vocab_sha256,
        "encoding": dict(stats["encoding"]),
        "epoch": summary["best_epoch"],
        "best_val_loss": summary["best_val_loss"],
    }
    io.save_checkpoint(Path("models") / f"{name}.pt", checkpoint)
    summary = {"model": name, "trainable_parameters": count_parameters(model), **summary}
    io.write_json(Path("metrics") / f"train_{name}.json", summary)
    print(
        f"{name}: best epoch {summary['best_epoch']} of {summary['epochs_run']}, "
        f"{summary['trainable_parameters']:,} parameters, {summary['train_seconds']:.0f}s"
    )
