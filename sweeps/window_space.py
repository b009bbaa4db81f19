"""The window search's space: which BiRNN configurations sweeps/window_search.py runs.

The current defaults first, then for a few fixed (weight_decay, max_vocab, max_len) contexts
the default BiRNN settings plus a seeded sample of the BiRNN grid, keeping only the widths
whose BiRNN/baseline parameter ratio, counted on the built models, is within the size rule.
"""

from __future__ import annotations

import random
import sys

from pipeline.model.network import ModelConfig, RNNClassifier, count_parameters

# The searched settings, in the table's column order.
KEYS = (
    "birnn.dropout",
    "birnn.word_dropout",
    "birnn.hidden_dim",
    "train.weight_decay",
    "prepare.max_vocab",
    "prepare.max_len",
)


SEEDS = (42, 43, 44)
SAMPLE_SEED = 20240  # picks the sampled BiRNN settings; change it for a different sample
DROPOUT = (0.3, 0.5, 0.7)
WORD_DROPOUT = (0.3, 0.5, 0.7)
HIDDEN_DIM = (48, 64, 80, 96)  # parameter_ratio drops the widths over the size rule per vocabulary
# (train.weight_decay, prepare.max_vocab, prepare.max_len): the defaults first, then one step along
# each axis, then all three towards a smaller, more regularised model.
CONTEXTS = (
    (0.3, 1000, 100),
    (1.0, 1000, 100),
    (0.1, 1000, 100),
    (0.3, 500, 100),
    (0.3, 2000, 100),
    (0.3, 1000, 50),
    (0.3, 1000, 200),
    (1.0, 500, 50),
)
SAMPLED = {0: 11}  # sampled BiRNN settings per context (context index: count); others get 3
CLASSES = 5  # BBC News's topics; each run's parameter count in its summary confirms it


def parameters(p, hidden_dim: int, max_vocab: int) -> tuple[int, int]:
    """(BiRNN, baseline) trainable parameters, counted on the built models. The vocabulary is
    max_vocab: BBC News has over 16,000 training words seen twice, so the cap always binds
    (each run's summary confirms the BiRNN's count)."""
    base = ModelConfig.from_params(p.baseline, vocab_size=max_vocab, num_classes=CLASSES)
    birnn = ModelConfig.from_params(p.birnn, vocab_size=max_vocab, num_classes=CLASSES)
    birnn = ModelConfig(**{**birnn.__dict__, "hidden_dim": hidden_dim})
    return count_parameters(RNNClassifier(birnn)), count_parameters(RNNClassifier(base))


def configurations(p) -> list[dict]:
    """The defaults first, then per context its default BiRNN and a seeded sample of the grid."""
    default = dict(
        zip(
            KEYS,
            (
                p.birnn.dropout,
                p.birnn.word_dropout,
                p.birnn.hidden_dim,
                p.train.weight_decay,
                p.prepare.max_vocab,
                p.prepare.max_len,
            ),
            strict=True,
        )
    )
    if tuple(default[k] for k in KEYS[3:]) != CONTEXTS[0]:
        sys.exit("error: CONTEXTS[0] must be params.yaml's (weight_decay, max_vocab, max_len)")
    limit, rng = p.compare.targets.max_parameter_ratio, random.Random(SAMPLE_SEED)

    def ratio(h: int, vocab: int) -> float:
        birnn, base = parameters(p, h, vocab)
        return birnn / base

    configs = []
    for index, context in enumerate(CONTEXTS):
        fits = [(d, w, h) for d in DROPOUT for w in WORD_DROPOUT for h in HIDDEN_DIM if ratio(h, context[1]) <= limit]
        anchor = tuple(default[k] for k in KEYS[:3])
        for birnn in (anchor, *rng.sample([c for c in fits if c != anchor], SAMPLED.get(index, 3))):
            config = dict(zip(KEYS, (*birnn, *context), strict=True))
            config["parameters"], config["baseline_parameters"] = parameters(p, birnn[2], context[1])
            config["ratio"] = round(config["parameters"] / config["baseline_parameters"], 4)
            configs.append(config)
    return configs
