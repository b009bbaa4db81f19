"""Data-parallel training under torchrun: launching, the process group, ranks and reductions.

Nothing else in the pipeline knows about ranks beyond `World`. With train.processes = 1 the
train stage runs in its own process and none of this is touched. With N > 1, `pipeline train`
re-runs itself under `torchrun --standalone --nproc-per-node N` (or is started under torchrun
by the user, e.g. across nodes), each worker joins a gloo (CPU) or NCCL (CUDA) process group,
and rank 0 alone writes outputs and log lines.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from pipeline.core import process
from pipeline.core.errors import UserError

# A collective that waits longer than this has lost a peer: fail instead of hanging.
COLLECTIVE_TIMEOUT = timedelta(seconds=120)


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def under_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or "LOCAL_RANK" in os.environ


def join(device_type: str) -> World:
    """Join torchrun's process group (a no-op for a single process)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World()
    backend = "nccl" if device_type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=COLLECTIVE_TIMEOUT)
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def leave(world: World) -> None:
    if world.size > 1 and dist.is_initialized():
        dist.destroy_process_group()


def all_sum(values: list[float], world: World, device: torch.device) -> list[float]:
    """Element-wise sums over all ranks, in float64 so a count stays exact."""
    if world.size == 1:
        return values
    total = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return total.tolist()


def launch(argv: list[str], processes: int) -> None:
    """Run `python -m pipeline <argv>` in `processes` workers under torchrun on this machine.

    Worker output streams through; a failure becomes one line: a worker's own `error: ...`
    line where it printed one (a UserError), otherwise which rank died and how. The workers
    end with this process (pipeline.core.process), and an interrupt here stops torchrun first.
    """
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={processes}",
        "--max-restarts=0",
        "--monitor-interval=0.5",
        "-m",
        "pipeline",
        *argv,
    ]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env[process.GUARDIAN] = process.identity(os.getpid()) or ""
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)
    try:
        _, stderr = proc.communicate()
    except BaseException:
        proc.terminate()  # torchrun passes SIGTERM on to its workers, which clean up and exit
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        raise
    if proc.returncode == 0:
        return
    own = [line for line in stderr.splitlines() if line.startswith("error: ")]
    if own:
        raise UserError(own[0].removeprefix("error: "))
    raise UserError(f"data-parallel training failed: {_failure(stderr, proc.returncode)}")


def _failure(stderr: str, returncode: int) -> str:
    """torchrun's failure report, as one phrase: the rank and its exit code or signal."""
    # The ranks torchrun stopped itself are listed too; the first failure is the cause.
    stderr = stderr[stderr.find("Root Cause") :] if "Root Cause" in stderr else stderr
    rank = re.search(r"rank\s*:\s*(\d+)", stderr)
    code = re.search(r"exitcode\s*:\s*(-?\d+)", stderr)
    signal = re.search(r"Signal (\d+) \((\w+)\)", stderr)
    if rank and signal:
        return f"rank {rank.group(1)} was killed by {signal.group(2)}"
    if rank and code:
        return f"rank {rank.group(1)} exited with code {code.group(1)}"
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    return f"torchrun exited with code {returncode}" + (f" ({lines[-1][:160]})" if lines else "")
