"""train stage: data/prepared/ -> every seed of train.seeds of one model (or one seed, --seed).

Writes, per seed S, models/<model>/seedS.pt, metrics/train/<model>/seedS.json and the learning
curves in dvclive/<model>/seedS/ (pipeline.core.layout), all at the end and as one generation:
nothing is replaced until every file is written and on disk, so a stage that fails (a full disk:
one line, exit code 2) or is stopped leaves the previous outputs as they were; killed between
two of the final renames, it leaves a set whose stamps disagree (pipeline.core.stamps), which
compare refuses.

Runs side by side: on a CPU each run computes on one thread, in a worker process forked from
the stage's; train.threads cores are shared by the runs training at once, a few more than the
cores where that keeps every core busy to the end (runs_at_once). A run draws from generators
of its own (the model's initial weights, its batch order, its dropout masks), so its numbers do
not depend on what trains beside it: `pipeline train birnn --seed 43` alone writes the same
bytes as seed 43 of `pipeline train birnn`. On CUDA the runs train one after another.

Mini-batch training (or full-batch when train.batch_size is null, like the starter experiment's
loop) with Adam/AdamW and gradient clipping, on length-bucketed batches. After every epoch the
model is scored in eval mode on the whole training and validation splits. With the model's
`early_stopping`, training stops once the validation loss has not improved for
train.patience epochs and the best epoch's weights are the ones saved; with its
`max_train_accuracy` as well, only epochs whose training accuracy is below that ceiling count;
without early stopping every epoch runs and the last is kept. A loss that is not finite stops
the run with one line.

With train.processes = N > 1 the runs are data-parallel, one after another: N workers under
torchrun (pipeline.core.distributed), each training on its shard of every epoch with a batch of
batch_size / N, gradients averaged by DistributedDataParallel.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import math
import multiprocessing
import multiprocessing.connection
import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DistributedSampler

from pipeline.core import devices, distributed, files, layout, process, stamps
from pipeline.core.distributed import World
from pipeline.core.errors import UserError
from pipeline.core.params import ModelParams, Params, TrainParams
from pipeline.data.splits import Split, bucketed_batches, load_split, score_batch_size
from pipeline.data.text import Vocab
from pipeline.model import checkpoints, recurrence
from pipeline.model.network import ModelConfig, RNNClassifier, count_parameters
from pipeline.model.optimizer import FusedAdam


def thread_count(t: TrainParams) -> int:
    """train.threads, capped by OMP_NUM_THREADS where a launcher set it (torchrun, a DVC queue)."""
    cap = os.environ.get("OMP_NUM_THREADS", "")
    return min(t.threads, int(cap)) if cap.isdigit() and int(cap) > 0 else t.threads


def runs_at_once(runs: int, threads: int) -> int:
    """How many one-thread runs a CPU stage trains at once: the fewest that keep its `threads`
    cores busy to the end.

    `threads` workers at a time can leave cores idle: five runs on two cores take three rounds,
    the last with one core idle. More workers than cores share them (the kernel time-slices
    them), so that the last runs finish together. This counts each candidate's wall time for
    equal runs, sharing fairly, and takes the shortest: 3 for five runs on two cores, 2.5 run
    times instead of 3. Measured (benchmarks/runs_at_once.py): five stacked-BiRNN runs on two
    cores, 3 workers 0.86 x the time of 2, all five at once 0.92 x (each switch costs caches).
    Only where the stage may use no more than `threads` cores (its affinity), so that it never
    takes more cores than train.threads asks for.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    fewest = min(runs, threads)
    if cores > threads:
        return fewest
    shared = min(cores, threads)
    return min(range(fewest, runs + 1), key=lambda workers: (round(_shared_wall(runs, shared, workers), 9), workers))


def _shared_wall(runs: int, cores: int, workers: int) -> float:
    """The wall time, in run times, of `runs` equal runs `workers` at a time on `cores` fairly shared cores."""
    queued, running, wall = runs - min(workers, runs), [1.0] * min(workers, runs), 0.0
    while running:
        rate = min(1.0, cores / len(running))  # each running run's share of a core
        step = min(running) / rate
        wall += step
        left = [work - step * rate for work in running]
        running = [work for work in left if work > 1e-9]
        started = min(queued, len(left) - len(running))
        running, queued = running + [1.0] * started, queued - started
    return wall


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
    """A rich progress bar per run on a terminal; otherwise a plain line per epoch for CI logs."""

    def __init__(self, show: bool, bar: bool = True):
        self.bar, self.show = None, show
        self.tasks: dict[str, Any] = {}
        if show and bar and sys.stdout.isatty():
            from rich.progress import Progress

            self.bar = Progress(transient=False)
            self.bar.start()

    def add(self, name: str, max_epochs: int) -> None:
        if self.bar is not None:
            self.tasks[name] = self.bar.add_task(f"train {name}", total=max_epochs)

    def epoch(self, name: str, line: str) -> None:
        if self.bar is not None:
            self.bar.console.print(line, markup=False, highlight=False, soft_wrap=True)
            self.bar.advance(self.tasks[name])
        elif self.show:
            print(line, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


class _Curves:
    """One run's per-epoch metrics, held until its outputs are written (DVCLive writes them then:
    runs train in forked workers, and every Live would otherwise open the repository from its own)."""

    def __init__(self) -> None:
        self.step = 0
        self.rows: list[tuple[int, dict[str, float]]] = []
        self._row: dict[str, float] = {}

    def log_metric(self, name: str, value: float, plot: bool = True) -> None:
        self._row[name] = value

    def next_step(self) -> None:
        self.rows.append((self.step, self._row))
        self._row = {}

    def replay(self, live) -> None:
        for step, row in self.rows:
            live.step = step
            for name, value in row.items():
                live.log_metric(name, value, plot=True)
            live.next_step()


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


def selection(early_stopping: bool, ceiling: float | None) -> str:
    """How the kept epoch is chosen, in words for the summary and the report."""
    if not early_stopping:
        return "last epoch"
    if ceiling is None:
        return "lowest val loss"
    return f"lowest val loss among epochs with train accuracy < {ceiling:g}"


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
    progress: _Progress | None = None,
    ceiling: float | None = None,
) -> dict:
    """Train; with early stopping on validation loss, the best epoch's weights are restored.

    With a `ceiling`, only epochs whose eval-mode training accuracy is below it can be kept,
    and patience counts epochs without a better one of those. Without early stopping all
    t.max_epochs run and the last epoch is kept. Either way "best_epoch" in the summary is the
    epoch whose weights the model holds on return.
    """
    device = next(model.parameters()).device
    # The run's dropout and word-dropout masks; each rank its own.
    model.generator = torch.Generator(device=device).manual_seed(seed + 7919 * world.rank)
    net: nn.Module = model
    if world.size > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    optimizer = FusedAdam.from_params(model.parameters(), t)
    kept: dict = {"epoch": 0, "val_loss": math.inf, "state": None, "scores": {}}
    unconstrained: dict = {"epoch": 0, "val_loss": math.inf}
    tokens_total, seconds_total, epochs_run, bad_epochs = 0, 0.0, 0, 0
    board = progress or _Progress(world.main)
    board.add(name, t.max_epochs)
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
            scores = {"train_accuracy": train_m["accuracy"], "val_accuracy": val_m["accuracy"]}
            if val_m["loss"] < unconstrained["val_loss"]:
                unconstrained = {"epoch": epoch, "val_loss": val_m["loss"], **scores}
            eligible = ceiling is None or train_m["accuracy"] < ceiling
            improved = eligible and val_m["loss"] < kept["val_loss"]
            bad_epochs = 0 if improved else bad_epochs + 1
            if improved or not early_stopping:
                kept = {"epoch": epoch, "val_loss": val_m["loss"], "state": copy.deepcopy(model.state_dict())}
                kept["scores"] = scores
            board.epoch(
                name,
                f"{name} epoch {epoch:3d}/{t.max_epochs}  train loss {train_m['loss']:.4f} "
                f"acc {train_m['accuracy']:.3f} | val loss {val_m['loss']:.4f} "
                f"acc {val_m['accuracy']:.3f} | {seconds:.1f}s" + (" *" if improved else ""),
            )
            if early_stopping and bad_epochs >= t.patience:
                break
    finally:
        if progress is None:
            board.close()
    if kept["state"] is None:
        raise UserError(
            f"{name}: no epoch reached training accuracy below max_train_accuracy = {ceiling:g}; "
            "raise the ceiling or regularise the model more"
        )
    model.load_state_dict(kept["state"])
    summary = {
        "best_epoch": kept["epoch"],
        "best_val_loss": kept["val_loss"],
        **kept["scores"],  # eval-mode accuracies of the kept epoch
        "selection": selection(early_stopping, ceiling),
        "epochs_run": epochs_run,
        "train_seconds": round(seconds_total, 3),
        "tokens_per_second": round(tokens_total / seconds_total, 1) if seconds_total else 0.0,
    }
    if ceiling is not None:
        # What plain early stopping would have kept from the same epochs: the ceiling's cost.
        summary["unconstrained"] = {k: v for k, v in unconstrained.items() if k != "val_loss"}
    return summary


def for_model(t: TrainParams, mp: ModelParams) -> TrainParams:
    """The training settings of one model: train's, with the model's own weight decay if it sets one."""
    return t if mp.weight_decay is None else dataclasses.replace(t, weight_decay=mp.weight_decay)


def run(params: Params, name: str, seed: int | None = None) -> None:
    """Train every seed of train.seeds, or the one `seed`, of model section `name`."""
    t, mp = params.train, params.model(name)
    if seed is not None and seed not in t.seeds:
        raise UserError(f"--seed {seed}: not in train.seeds ({', '.join(map(str, t.seeds))})")
    if t.batch_size is not None and t.batch_size % t.processes:
        raise UserError(f"train.batch_size: {t.batch_size} does not split evenly over train.processes = {t.processes}")
    if t.processes > 1 and not distributed.under_torchrun():
        distributed.launch(["train", name, *([] if seed is None else ["--seed", str(seed)])], t.processes)
        return
    device = devices.pick(t.device, "train.device", int(os.environ.get("LOCAL_RANK", "0")))
    # One thread a run on a CPU: a run's sums then never depend on how many run beside it. Set
    # before any work, so no thread pool exists yet when the workers fork.
    torch.set_num_threads(1 if device.type == "cpu" else thread_count(t))
    # Which recurrence runs (compiled or the PyTorch loop), decided once, before any run starts.
    kernel = recurrence.require_kernel(t.allow_fallback) if device.type == "cpu" else {"recurrence": device.type}
    inputs = Inputs.load()
    cfg = ModelConfig.from_params(mp, vocab_size=len(inputs.vocab), num_classes=len(inputs.labels))
    seeds = t.seeds if seed is None else (seed,)
    world = distributed.join(device.type)
    side_by_side = runs_at_once(len(seeds), thread_count(t)) if device.type == "cpu" and world.size == 1 else 1
    try:
        runs = train_side_by_side(cfg, inputs, for_model(t, mp), mp, name, seeds, side_by_side, world, device)
    finally:
        distributed.leave(world)
    if world.main:
        summaries = publish_runs(runs, cfg, inputs, name, world, kernel, whole_model=seed is None)
        for summary in summaries:
            print(
                f"{layout.run_name(name, summary['seed'])}: best epoch {summary['best_epoch']} of "
                f"{summary['epochs_run']}, {summary['trainable_parameters']:,} parameters, "
                f"{summary['train_seconds']:.0f}s"
            )


@dataclasses.dataclass(frozen=True)
class Inputs:
    """What every run of a model reads: the splits it trains and selects on, and what goes into its checkpoint."""

    train: Split
    val: Split
    labels: list[str]
    stats: dict
    vocab: Vocab

    @classmethod
    def load(cls) -> Inputs:
        if not (layout.PREPARED / "train.npz").is_file():
            raise UserError(f"{layout.PREPARED}: prepared data not found; run `dvc repro prepare` first")
        labels = files.read_json(layout.PREPARED / "labels.json", "label list")
        if not isinstance(labels, list):
            raise UserError(f"{layout.PREPARED / 'labels.json'}: not a label list; rerun `pipeline prepare`")
        vocab = Vocab.load(layout.PREPARED / "vocab.json")
        # Each split is checked against them once, here.
        return cls(
            train=load_split("train", vocab_size=len(vocab), num_classes=len(labels)),
            val=load_split("val", vocab_size=len(vocab), num_classes=len(labels)),
            labels=labels,
            stats=files.read_json(layout.PREPARED / "stats.json", "prepare stats"),
            vocab=vocab,
        )


@dataclasses.dataclass
class Run:
    seed: int
    model: RNNClassifier
    summary: dict
    curves: _Curves


def train_side_by_side(
    cfg: ModelConfig,
    inputs: Inputs,
    t: TrainParams,
    mp: ModelParams,
    name: str,
    seeds: tuple[int, ...],
    workers: int,
    world: World,
    device: torch.device,
) -> list[Run]:
    """Train one run per seed, `workers` of them at a time.

    With more than one worker, each run trains in a process forked from this one, which has
    loaded the data and the kernel already; its weights, summary and curves come back here.
    Processes, not threads: a training step is hundreds of small operations, and threads
    contending for Python's lock ran two runs no faster than one (benchmarks/train_runs.py).
    """

    def one(seed: int, progress: _Progress) -> Run:
        torch.manual_seed(seed)  # the initial weights
        model = RNNClassifier(cfg).to(device)
        curves = _Curves()
        label = layout.run_name(name, seed)
        ceiling = mp.max_train_accuracy
        summary = fit(
            model, inputs.train, inputs.val, t, seed, label, mp.early_stopping, curves, world, progress, ceiling
        )
        return Run(seed, model, summary, curves)

    if workers == 1:
        board = _Progress(world.main)
        try:
            return [one(seed, board) for seed in seeds]
        finally:
            board.close()

    def in_worker(seed: int, sender) -> None:
        process.die_with_parent()
        try:
            run = one(seed, _Progress(world.main, bar=False))  # one line per epoch: workers share the terminal
            # The weights as bytes: a tensor itself would travel as shared memory, which outlives
            # no worker that has exited.
            weights = io.BytesIO()
            torch.save(run.model.state_dict(), weights)
            sender.send(("run", (seed, weights.getvalue(), run.summary, run.curves.rows)))
        except UserError as exc:
            sender.send(("user error", str(exc)))
        except BaseException:
            sender.send(("bug", traceback.format_exc()))
        finally:
            sender.close()
            os._exit(0)  # no atexit or finally of the stage's own runs in this copy of it

    done = _in_workers(in_worker, seeds, workers)
    runs = []
    for seed in seeds:
        _, weights, summary, rows = done[seed]
        model = RNNClassifier(cfg).to(device)
        model.load_state_dict(torch.load(io.BytesIO(weights), weights_only=True))
        curves = _Curves()
        curves.rows = rows
        runs.append(Run(seed, model, summary, curves))
    return runs


def _in_workers(job: Callable[[int, Any], None], seeds: tuple[int, ...], workers: int) -> dict[int, Any]:
    """job(seed, sender) in a process forked for each seed, `workers` at a time; {seed: what it sent}.

    A worker that fails sends its error, which is raised here; one that dies without a word
    (killed, out of memory) stops the stage with one line instead of leaving it waiting. On
    any error or interrupt the workers still training are stopped before this returns.
    """
    fork = multiprocessing.get_context("fork")
    todo, done = list(seeds), {}
    running: dict[int, tuple[Any, Any]] = {}
    try:
        while todo or running:
            while todo and len(running) < workers:
                seed = todo.pop(0)
                receiver, sender = fork.Pipe(duplex=False)
                worker = fork.Process(target=job, args=(seed, sender), name=f"run-{seed}", daemon=True)
                worker.start()
                sender.close()
                running[seed] = (worker, receiver)
            ready = set(multiprocessing.connection.wait([r for _, r in running.values()]))
            for seed, (worker, receiver) in list(running.items()):
                if receiver not in ready:
                    continue
                try:
                    kind, value = receiver.recv()
                except EOFError:  # it ended without sending: killed
                    worker.join()
                    raise UserError(
                        f"the run of seed {seed} ended without a result (exit code {worker.exitcode}); "
                        "was it killed, e.g. out of memory?"
                    ) from None
                worker.join()
                del running[seed]
                if kind == "user error":
                    raise UserError(value)
                if kind == "bug":
                    raise RuntimeError(f"the run of seed {seed} failed:\n{value}")
                done[seed] = value
    finally:
        for worker, receiver in running.values():
            worker.kill()  # a failed run, or an interrupt: the others stop now
            worker.join()
            receiver.close()
    return done


def publish_runs(
    runs: list[Run], cfg: ModelConfig, inputs: Inputs, name: str, world: World, kernel: dict, whole_model: bool
) -> list[dict]:
    """Write each run's checkpoint, summary and curves, all of them as one generation: nothing is
    replaced until every file is written, so a failure (a full disk) leaves the old outputs as
    they were. With `whole_model`, the model's three folders are replaced as a whole, so no run
    of a seed left out of train.seeds stays behind; otherwise only the runs' own files."""
    summaries = []
    with files.generation() as gen:
        if whole_model:
            checkpoints_dir = gen.folder(layout.MODELS / name)
            summaries_dir = gen.folder(layout.METRICS / "train" / name)
            curves_dir = gen.folder(layout.CURVES / name)
        for run in runs:
            if whole_model:
                checkpoint = checkpoints_dir / layout.run_checkpoint(name, run.seed).name
                summary = summaries_dir / layout.run_summary(name, run.seed).name
                curves = curves_dir / layout.run_curves(name, run.seed).name
                curves.mkdir()
            else:
                checkpoint = gen.file(layout.run_checkpoint(name, run.seed))
                summary = gen.file(layout.run_summary(name, run.seed))
                curves = gen.folder(layout.run_curves(name, run.seed))
            summaries.append(_write_run(run, cfg, inputs, name, world, kernel, checkpoint, summary, curves))
    return summaries


def _write_run(
    run: Run,
    cfg: ModelConfig,
    inputs: Inputs,
    name: str,
    world: World,
    kernel: dict,
    checkpoint_path: Path,
    summary_path: Path,
    curves: Path,
) -> dict:
    """One run's checkpoint, summary and curves (DVCLive's files, into the empty folder `curves`),
    each stamped with the checkpoint's sha256 (pipeline.core.stamps)."""
    seed, model = run.seed, run.model
    summary = {
        "model": name,
        "seed": seed,
        "trainable_parameters": count_parameters(model),
        "processes": world.size,
        "threads": torch.get_num_threads(),
        "kernel": kernel,  # the recurrence that ran (compiled or the PyTorch loop) and its BLAS
        **run.summary,
    }
    checkpoint = {
        "model": {k: v.cpu() for k, v in model.state_dict().items()},
        "config": asdict(cfg),
        "labels": list(inputs.labels),
        "vocab": list(inputs.vocab.tokens),
        "vocab_sha256": files.sha256_file(layout.PREPARED / "vocab.json"),
        "encoding": dict(inputs.stats["encoding"]),
        "epoch": summary["best_epoch"],
        "best_val_loss": summary["best_val_loss"],
        "seed": seed,
    }
    summary[stamps.KEY] = checkpoints.save_checkpoint(checkpoint_path, checkpoint)
    files.write_json(summary_path, summary)
    # DVCLive writes its files itself: a refused write names the run's curves folder.
    with files.storing(layout.run_curves(name, seed)):
        from dvclive import Live

        live = Live(dir=str(curves), save_dvc_exp=False, dvcyaml=None)
        try:
            run.curves.replay(live)
        finally:
            live.end()
    stamps.write_run(curves, summary[stamps.KEY])
    return summary
