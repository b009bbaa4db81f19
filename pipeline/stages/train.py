"""train stage: data/prepared/ -> one run of a model for one seed of train.seeds.

Writes models/<model>/seed<S>.pt, metrics/train/<model>/seed<S>.json and the learning
curves in dvclive/<model>/seed<S>/ (pipeline.core.layout), all at the end: a run that fails or
is stopped leaves the previous outputs as they were, or, stopped between two of them, a set
whose stamps disagree (pipeline.core.stamps), which compare refuses.

Mini-batch training (or full-batch when train.batch_size is null, like the seed's loop)
with Adam/AdamW and gradient clipping, on length-bucketed batches. After every epoch the
model is scored in eval mode on the whole training and validation splits. With the model's
`early_stopping`, training stops once the validation loss has not improved for
train.patience epochs and the best epoch's weights are the ones saved; without it every
epoch runs and the last is kept. A loss that is not finite stops the run with one line.

With train.processes = N > 1 the run is data-parallel: N workers under torchrun
(pipeline.core.distributed), each training on its shard of every epoch with a batch of
batch_size / N, gradients averaged by DistributedDataParallel.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import sys
import time
from dataclasses import asdict
from typing import Any

import torch
from torch import nn
from torch.utils.data import DistributedSampler

from pipeline.core import devices, distributed, files, layout, stamps
from pipeline.core.distributed import World
from pipeline.core.errors import UserError
from pipeline.core.params import Params, TrainParams
from pipeline.data.splits import Split, bucketed_batches, load_split, score_batch_size
from pipeline.data.text import Vocab
from pipeline.model import checkpoints
from pipeline.model.network import ModelConfig, RNNClassifier, count_parameters
from pipeline.model.optimizer import FusedAdam


def thread_count(t: TrainParams) -> int:
    """train.threads, capped by OMP_NUM_THREADS where a launcher set it (torchrun, a DVC queue)."""
    cap = os.environ.get("OMP_NUM_THREADS", "")
    return min(t.threads, int(cap)) if cap.isdigit() and int(cap) > 0 else t.threads


def train_one_epoch(
    model: nn.Module,
    train: Split,
    batches: list[torch.Tensor],
    optimizer: FusedAdam,
    grad_clip: float | None,
    device: torch.device,
) -> tuple[float, int]:
    """One pass over the batches; returns the mean train-mode loss and the real tokens seen."""
    model.train()
    criterion = nn.CrossEntropyLoss()
    loss_total, seen, tokens = 0.0, 0, 0
    for index in batches:
        ids, lengths, labels = train.batch(index)
        optimizer.zero_grad()
        batch_loss = criterion(model(ids.to(device, non_blocking=True), lengths), labels.to(device))
        batch_loss.backward()
        if grad_clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        value = batch_loss.item()
        if not math.isfinite(value):
            raise UserError(
                f"training diverged: the loss became {value} after {seen} examples; lower train.lr or check the data"
            )
        loss_total += value * len(labels)
        seen += len(labels)
        tokens += int(lengths.sum())
    return loss_total / seen, tokens


@torch.inference_mode()
def score_shard(model: RNNClassifier, split: Split, world: World, device: torch.device) -> dict[str, float]:
    """Eval-mode loss and accuracy on a whole split; each rank scores every world.size-th text."""
    model.eval()
    index = torch.arange(world.rank, len(split), world.size)
    loss_sum, correct = 0.0, 0
    rows = score_batch_size(model, int(split.lengths.max()))
    for batch in index[torch.sort(split.lengths[index], descending=True, stable=True).indices].split(rows):
        ids, lengths, labels = split.batch(batch)
        logits = model(ids.to(device, non_blocking=True), lengths).float().cpu()
        loss_sum += nn.functional.cross_entropy(logits, labels, reduction="sum").item()
        correct += int((logits.argmax(1) == labels).sum())
    total_loss, total_correct, count = distributed.all_sum([loss_sum, correct, len(index)], world, device)
    return {"loss": total_loss / count, "accuracy": total_correct / count}


class _Progress:
    """A rich progress bar on a terminal; otherwise a plain line per epoch for CI logs."""

    def __init__(self, name: str, max_epochs: int, show: bool):
        self.bar, self.show = None, show
        if show and sys.stdout.isatty():
            from rich.progress import Progress

            self.bar = Progress(transient=False)
            self.task = self.bar.add_task(f"train {name}", total=max_epochs)
            self.bar.start()

    def epoch(self, line: str) -> None:
        if self.bar is not None:
            self.bar.console.print(line, markup=False, highlight=False, soft_wrap=True)
            self.bar.advance(self.task)
        elif self.show:
            print(line, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _epoch_batches(train: Split, t: TrainParams, seed: int, epoch: int, world: World) -> list[torch.Tensor]:
    """This rank's batches for one epoch: its DistributedSampler shard, bucketed by length.

    Every rank shuffles with the same seed, so all ranks take the same number of batches.
    """
    indices: Any = range(len(train))  # any sized sequence serves as DistributedSampler's dataset
    sampler: DistributedSampler = DistributedSampler(indices, world.size, world.rank, shuffle=True, seed=seed)
    sampler.set_epoch(epoch)
    shard = torch.tensor(list(sampler))
    per_rank = None if t.batch_size is None else t.batch_size // world.size
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return [shard[b] for b in bucketed_batches(train.lengths[shard], per_rank, generator)]


def fit(
    model: RNNClassifier,
    train: Split,
    val: Split,
    t: TrainParams,
    seed: int,
    name: str,
    early_stopping: bool = True,
    live=None,
    world: World = World(),
) -> dict:
    """Train; with early stopping on validation loss, the best epoch's weights are restored.

    Without early stopping all t.max_epochs run and the last epoch is kept. Either way
    "best_epoch" in the summary is the epoch whose weights the model holds on return.
    """
    device = next(model.parameters()).device
    net: nn.Module = model
    if world.size > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
        torch.manual_seed(seed + 7919 * world.rank)  # each rank its own dropout masks
    optimizer = FusedAdam.from_params(model.parameters(), t)
    kept: dict = {"epoch": 0, "val_loss": math.inf, "state": None, "scores": {}}
    lowest_val_loss = math.inf
    tokens_total, seconds_total, epochs_run, bad_epochs = 0, 0.0, 0, 0
    progress = _Progress(name, t.max_epochs, world.main)
    try:
        for epoch in range(1, t.max_epochs + 1):
            start = time.perf_counter()
            batches = _epoch_batches(train, t, seed, epoch, world)
            running_loss, tokens = train_one_epoch(net, train, batches, optimizer, t.grad_clip, device)
            seconds = time.perf_counter() - start
            train_m, val_m = score_shard(model, train, world, device), score_shard(model, val, world, device)
            running_loss, all_tokens = distributed.all_sum([running_loss / world.size, tokens], world, device)
            tokens_total, seconds_total, epochs_run = tokens_total + int(all_tokens), seconds_total + seconds, epoch
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
                kept = {
                    "epoch": epoch,
                    "val_loss": val_m["loss"],
                    "state": copy.deepcopy(model.state_dict()),
                    "scores": {"train_accuracy": train_m["accuracy"], "val_accuracy": val_m["accuracy"]},
                }
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
        **kept["scores"],  # eval-mode accuracies of the kept epoch
        "epochs_run": epochs_run,
        "train_seconds": round(seconds_total, 3),
        "tokens_per_second": round(tokens_total / seconds_total, 1) if seconds_total else 0.0,
    }


def run(params: Params, name: str, seed: int) -> None:
    t, mp = params.train, params.model(name)
    if seed not in t.seeds:
        raise UserError(f"--seed {seed}: not in train.seeds ({', '.join(map(str, t.seeds))})")
    if t.batch_size is not None and t.batch_size % t.processes:
        raise UserError(f"train.batch_size: {t.batch_size} does not split evenly over train.processes = {t.processes}")
    if t.processes > 1 and not distributed.under_torchrun():
        distributed.launch(["train", name, "--seed", str(seed)], t.processes)
        return
    torch.set_num_threads(thread_count(t))
    device = devices.pick(t.device, "train.device", int(os.environ.get("LOCAL_RANK", "0")))
    train, val = load_split("train"), load_split("val")
    labels = files.read_json(layout.PREPARED / "labels.json", "label list")
    stats = files.read_json(layout.PREPARED / "stats.json", "prepare stats")
    vocab = Vocab.load(layout.PREPARED / "vocab.json")
    cfg = ModelConfig.from_params(mp, vocab_size=len(vocab), num_classes=len(labels))
    world = distributed.join(device.type)
    try:
        torch.manual_seed(seed)
        model = RNNClassifier(cfg).to(device)
        summary = _train_and_publish(model, cfg, train, val, params, name, seed, world, vocab, labels, stats)
    finally:
        distributed.leave(world)
    if world.main:
        print(
            f"{layout.run_name(name, seed)}: best epoch {summary['best_epoch']} of {summary['epochs_run']}, "
            f"{summary['trainable_parameters']:,} parameters, {summary['train_seconds']:.0f}s"
        )


def _train_and_publish(model, cfg, train, val, params, name, seed, world, vocab, labels, stats) -> dict:
    """Fit, then (rank 0) write the checkpoint, the summary and the curves, all at the end.

    DVCLive writes the curves into the unpublished folder that files.publish_dir swaps in last,
    so a stopped run leaves no partial curves beside the previous model.
    """
    t = params.train
    publish = files.publish_dir(layout.run_curves(name, seed)) if world.main else contextlib.nullcontext()
    with publish as curves:
        live = None
        if world.main:
            from dvclive import Live

            live = Live(dir=str(curves), save_dvc_exp=False, dvcyaml=None)
        try:
            early = params.model(name).early_stopping
            summary = fit(model, train, val, t, seed, layout.run_name(name, seed), early, live, world)
        finally:
            if live is not None:
                live.end()
        summary = {
            "model": name,
            "seed": seed,
            "trainable_parameters": count_parameters(model),
            "processes": world.size,
            "threads": torch.get_num_threads(),
            **summary,
        }
        if curves is not None:  # rank 0
            checkpoint = {
                "model": {k: v.cpu() for k, v in model.state_dict().items()},
                "config": asdict(cfg),
                "labels": list(labels),
                "vocab": list(vocab.tokens),
                "vocab_sha256": files.sha256_file(layout.PREPARED / "vocab.json"),
                "encoding": dict(stats["encoding"]),
                "epoch": summary["best_epoch"],
                "best_val_loss": summary["best_val_loss"],
                "seed": seed,
            }
            # Three places, so each names the checkpoint (pipeline.core.stamps); the curves go in last.
            summary[stamps.KEY] = checkpoints.save_checkpoint(layout.run_checkpoint(name, seed), checkpoint)
            files.write_json(layout.run_summary(name, seed), summary)
            stamps.write_run(curves, summary[stamps.KEY])
    return summary
