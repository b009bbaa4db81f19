"""FusedAdam: torch.optim.Adam(W)(fused=True)'s arithmetic bit for bit, without torch.optim.Optimizer."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from pipeline.model.network import ModelConfig, RNNClassifier
from pipeline.model.optimizer import FusedAdam


def _model() -> RNNClassifier:
    torch.manual_seed(0)
    return RNNClassifier(ModelConfig(vocab_size=40, num_classes=3, embed_dim=6, hidden_dim=5, bidirectional=True))


@pytest.mark.parametrize(("name", "decoupled"), [("adam", False), ("adamw", True)])
def test_fused_adam_matches_torch_optim_bit_for_bit(name, decoupled):
    ours, theirs = _model(), _model()
    theirs.head.bias.requires_grad_(False)  # a frozen parameter is left alone by both
    ours.head.bias.requires_grad_(False)
    cls = torch.optim.AdamW if decoupled else torch.optim.Adam
    reference = cls(theirs.parameters(), lr=0.01, weight_decay=0.3, fused=True)
    optimizer = FusedAdam(ours.parameters(), lr=0.01, weight_decay=0.3, decoupled=decoupled)
    g = torch.Generator().manual_seed(1)
    for step in range(6):
        ids = torch.randint(2, 40, (4, 7), generator=g)
        lengths, labels = torch.tensor([7, 5, 3, 1]), torch.randint(0, 3, (4,), generator=g)
        for model, opt in ((ours, optimizer), (theirs, reference)):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(ids, lengths), labels).backward()
            if step == 2:
                model.embedding.weight.grad = None  # a parameter without a gradient this step
            opt.step()
    for (name_, a), b in zip(ours.state_dict().items(), theirs.state_dict().values(), strict=True):
        assert torch.equal(a, b), name_
    assert not torch.equal(ours.embedding.weight, _model().embedding.weight)  # it did train


def test_a_training_process_never_imports_the_compiler_stack():
    """torch.optim.Optimizer's constructor would import torch._dynamo (about 1 s per process)."""
    code = (
        "import sys, torch\n"
        "from pipeline.model.optimizer import FusedAdam\n"
        "model = torch.nn.Linear(3, 2)\n"
        "opt = FusedAdam(model.parameters(), lr=0.1, weight_decay=0.0, decoupled=True)\n"
        "model(torch.ones(1, 3)).sum().backward()\n"
        "torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)\n"
        "opt.step()\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
