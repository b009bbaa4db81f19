"""The RNN text classifier: embedding, (bi)directional RNN over packed sequences, a readout.

No I/O here. The readout never reads padding: `final` takes each direction's last real
step from h_n of a packed sequence (for the backward direction that is the state after
reading the whole text right to left), `mean`/`max` pool over real tokens only. The common
`out[:, -1, :]` is wrong on both counts: on padded batches the forward half is read after
the padding, and the backward half has only seen the last token.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from pipeline.core.params import ModelParams
from pipeline.data.text import PAD_ID, UNK_ID
from pipeline.model.recurrence import compiled, fused_rnn

CELLS = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    num_classes: int
    cell: str = "rnn"
    embed_dim: int = 50
    hidden_dim: int = 64
    num_layers: int = 1
    bidirectional: bool = False
    dropout: float = 0.0
    word_dropout: float = 0.0
    readout: str = "final"

    @classmethod
    def from_params(cls, p: ModelParams, vocab_size: int, num_classes: int) -> ModelConfig:
        arch = {f.name: getattr(p, f.name) for f in fields(cls) if hasattr(p, f.name)}
        return cls(vocab_size=vocab_size, num_classes=num_classes, **arch)


class MaxOverTime(torch.autograd.Function):
    """amax over dim 1 with amax's gradient (split evenly among ties), in two passes.

    On a CPU, max(dim) with indices is 20x slower than amax, and amax's own backward takes
    several passes over the states; saturated tanh units tie at exactly 1.0, so ties are real.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        top = x.amax(1)
        ctx.save_for_backward(x, top)
        return top

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        x, top = ctx.saved_tensors
        kernel = compiled() if x.device.type == "cpu" else None
        if kernel is not None:
            return kernel.max_backward(x, top, grad)
        hit = x == top.unsqueeze(1)
        # count_nonzero reads the mask as it is; sum would first copy it to integers.
        return torch.where(hit, (grad / torch.count_nonzero(hit, dim=1)).unsqueeze(1), 0.0)


class RNNClassifier(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.cell not in CELLS:
            raise ValueError(f"cell must be one of {sorted(CELLS)}, got {cfg.cell!r}")
        if cfg.readout not in ("final", "mean", "max"):
            raise ValueError(f"readout must be final, mean or max, got {cfg.readout!r}")
        if cfg.vocab_size < 2 or cfg.num_classes < 2:
            raise ValueError("a classifier needs a vocabulary of >= 2 tokens and >= 2 classes")
        if not 0 <= cfg.dropout < 1 or not 0 <= cfg.word_dropout < 1:
            raise ValueError("dropout and word_dropout must lie in [0, 1)")
        self.cfg = cfg
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.embed_dim, padding_idx=PAD_ID)
        self.rnn = CELLS[cfg.cell](
            cfg.embed_dim,
            cfg.hidden_dim,
            num_layers=cfg.num_layers,
            batch_first=True,
            bidirectional=cfg.bidirectional,
            # torch applies this between stacked layers only; one layer has none to apply.
            dropout=cfg.dropout if cfg.num_layers > 1 else 0.0,
        )
        self.num_directions = 2 if cfg.bidirectional else 1
        self.head = nn.Linear(cfg.hidden_dim * self.num_directions, cfg.num_classes)
        # Where the training-time masks (dropout, word dropout) are drawn from; None: torch's
        # global generator. A run of its own generator draws the same masks whatever else runs
        # in the process at the same time (pipeline.stages.train runs seeds side by side).
        self.generator: torch.Generator | None = None

    def _uniform(self, like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        return torch.rand(like.shape, dtype=dtype, device=like.device, generator=self.generator)

    def dropout(self, x: torch.Tensor) -> torch.Tensor:
        """Inverted dropout with cfg.dropout while training; the identity in eval mode.

        On a CPU the mask comes from the C++ kernels' counter-based hash (nn.Dropout's
        bernoulli_ draws one number at a time and costs more than the layer's GEMMs); the
        fallback compares a uniform draw with p. Either way each value is kept with 1 - p.
        """
        p = self.cfg.dropout
        if not self.training or p == 0:
            return x
        kernel = compiled() if x.device.type == "cpu" else None
        if kernel is not None:
            # The mask's hash is keyed by one draw from torch's generator: seeded, reproducible.
            seed = int(torch.randint(0, 2**62, (1,), generator=self.generator))
            return x * kernel.dropout_mask(x.detach(), p, seed)
        return x * self._uniform(x, x.dtype).ge_(p).mul_(1.0 / (1.0 - p))  # in place: one temporary

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """ids (B, T) padded with PAD_ID, lengths (B,) of real tokens, each >= 1 -> logits (B, C)."""
        if self.training and self.cfg.word_dropout > 0:
            # Replace random real tokens by <unk>, so the model cannot lean on rare words.
            drop = self._uniform(ids) < self.cfg.word_dropout
            ids = ids.masked_fill(drop & (ids != PAD_ID), UNK_ID)
        if self.cfg.cell == "rnn":
            features = self._fused_features(ids, lengths.to(ids.device))
        else:
            features = self._packed_features(ids, lengths)
        return self.head(self.dropout(features))  # (B, C)

    def projects_vocabulary(self, ids: torch.Tensor) -> bool:
        """Whether the tanh RNN reads its first layer's input projection from a per-vocabulary
        table (pipeline.model.recurrence.fused_rnn): where no dropout acts on the embeddings, and the
        batch holds at least as many tokens as the vocabulary, so the table costs less."""
        return (self.cfg.dropout == 0 or not self.training) and ids.numel() >= self.cfg.vocab_size

    def _fused_features(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The tanh RNN on the padded batch, time-major (pipeline.model.recurrence)."""
        if self.projects_vocabulary(ids):
            out = fused_rnn(self.rnn, ids.t(), lengths, self.dropout, embedding=self.embedding.weight)
        else:
            x = self.dropout(self.embedding(ids.t()))  # (T, B, E)
            out = fused_rnn(self.rnn, x, lengths, self.dropout)  # (D, T, B, H)
        if self.cfg.readout == "final":
            # Step length - 1 holds both directions' final states (see fused_rnn).
            pooled = out[:, lengths - 1, torch.arange(len(lengths), device=out.device)]  # (D, B, H)
        elif bool((lengths == out.size(1)).all()):
            # No padding in the batch (common with length buckets): nothing to mask.
            pooled = out.mean(1) if self.cfg.readout == "mean" else MaxOverTime.apply(out)
        else:
            steps = torch.arange(out.size(1), device=out.device)
            real = (steps[:, None] < lengths[None, :])[None, :, :, None]  # (1, T, B, 1)
            if self.cfg.readout == "mean":
                pooled = (out * real).sum(1) / lengths[None, :, None]
            else:
                pooled = MaxOverTime.apply(out.masked_fill(~real, float("-inf")))
        return pooled.transpose(0, 1).reshape(len(lengths), -1)  # (B, D * H)

    def _packed_features(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """GRU and LSTM: torch's cells over a packed batch."""
        x = self.dropout(self.embedding(ids))  # (B, T, E)
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, h_n = self.rnn(packed)
        if self.cfg.readout == "final":
            if isinstance(h_n, tuple):  # LSTM returns (h_n, c_n)
                h_n = h_n[0]
            # h_n (L * D, B, H): keep the top layer, one row per direction.
            top = h_n.view(self.cfg.num_layers, self.num_directions, -1, self.cfg.hidden_dim)[-1]
            return torch.cat(list(top), dim=-1)  # (B, D * H)
        out, _ = pad_packed_sequence(out, batch_first=True)  # (B, T', D * H), T' = max length
        lengths = lengths.to(out.device)
        mask = torch.arange(out.size(1), device=out.device)[None, :] < lengths[:, None]
        if self.cfg.readout == "mean":
            return (out * mask[..., None]).sum(1) / lengths[:, None]
        return out.masked_fill(~mask[..., None], float("-inf")).amax(1)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@torch.no_grad()
def predict_logits(model: RNNClassifier, ids: torch.Tensor, lengths: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Eval-mode logits (N, C) on the CPU, computed in batches on the model's device."""
    model.eval()
    device = next(model.parameters()).device
    chunks = []
    for start in range(0, len(ids), batch_size):
        batch_lengths = lengths[start : start + batch_size]
        # Trim the batch to its longest text: padding beyond it is never read.
        batch_ids = ids[start : start + batch_size, : int(batch_lengths.max())]
        chunks.append(model(batch_ids.to(device), batch_lengths).float().cpu())
    return torch.cat(chunks) if chunks else torch.empty(0, model.cfg.num_classes)
