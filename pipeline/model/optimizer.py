"""Adam and AdamW for the train stage: torch's fused kernel through torch's functional API.

`FusedAdam` keeps the state that torch.optim.Adam(W) keeps and calls `torch.optim.adam.adam`
with fused=True, the function those classes call themselves: the same arithmetic, bit for
bit (tests/test_train.py). It does without torch.optim.Optimizer, whose first
add_param_group imports torch's compiler stack (torch._dynamo): about 1 s of every training
process's start-up on a 2-core machine, for a compiler this project never calls. Its step
skips the class's per-step hooks too, a few microseconds (61-77 vs 67-90 us for the BiRNN).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch.optim.adam import adam

from pipeline.core.params import TrainParams

BETAS = (0.9, 0.999)  # torch.optim.Adam's defaults
EPS = 1e-8


class FusedAdam:
    """Adam, or AdamW with `decoupled` weight decay, over the parameters that require grad."""

    def __init__(self, params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float, decoupled: bool):
        self.params = [p for p in params if p.requires_grad]
        self.lr, self.weight_decay, self.decoupled = lr, weight_decay, decoupled
        self.exp_avgs = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
        self.exp_avg_sqs = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
        # Per-parameter step counts as float32 tensors on the parameter's device, as the fused kernel takes them.
        self.steps = [torch.zeros((), dtype=torch.float32, device=p.device) for p in self.params]

    @classmethod
    def from_params(cls, params: Iterable[torch.nn.Parameter], t: TrainParams) -> FusedAdam:
        """train.optimizer (adam | adamw), train.lr and train.weight_decay."""
        return cls(params, lr=t.lr, weight_decay=t.weight_decay, decoupled=t.optimizer == "adamw")

    def zero_grad(self) -> None:
        """Drops the gradients (set to None, as torch.optim does by default)."""
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        """One update of every parameter that has a gradient; the others keep their state."""
        live = [i for i, p in enumerate(self.params) if p.grad is not None]
        if not live:
            return
        grads = [g for g in (self.params[i].grad for i in live) if g is not None]
        adam(
            [self.params[i] for i in live],
            grads,
            [self.exp_avgs[i] for i in live],
            [self.exp_avg_sqs[i] for i in live],
            [],
            [self.steps[i] for i in live],
            fused=True,
            decoupled_weight_decay=self.decoupled,
            amsgrad=False,
            beta1=BETAS[0],
            beta2=BETAS[1],
            lr=self.lr,
            weight_decay=self.weight_decay,
            eps=EPS,
            maximize=False,
        )
