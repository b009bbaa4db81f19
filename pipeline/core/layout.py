"""Where the pipeline's artifacts live: one place for the paths that several stages share.

Every model is trained once per seed in train.seeds; each run has its own checkpoint,
learning curves and training summary. The first seed's checkpoint is the served one,
copied to models/<model>.pt by the publish stage.
"""

from __future__ import annotations

from pathlib import Path

RAW = Path("data/raw")
PREPARED = Path("data/prepared")
PARAMS_CHECKED = Path("data/params.ok")  # written by check-params, the first stage
MODELS = Path("models")
METRICS = Path("metrics")
CURVES = Path("dvclive")

# The model sections of params.yaml, in the order of the report: the ablation ladder from the
# starter experiment's Before (baseline) to its After (birnn), one change a rung; the After's
# two counterfactuals; the stacked BiRNN; and the BiRNN held under the training ceiling.
MODEL_NAMES = (
    "baseline",
    "plus_bidirectional",
    "plus_dropout",
    "plus_word_dropout",
    "plus_max_readout",
    "birnn",
    "birnn_unidirectional",
    "birnn_final_readout",
    "stacked",
    "window",
)
# The ablation ladder, rung by rung: each differs from the one before in one setting.
LADDER = MODEL_NAMES[:6]
# The After with one of its changes taken back: reading one way, or the final state as readout.
COUNTERFACTUALS = ("birnn_unidirectional", "birnn_final_readout")


def run_name(model: str, seed: int) -> str:
    return f"{model}/seed{seed}"


def run_checkpoint(model: str, seed: int) -> Path:
    return MODELS / model / f"seed{seed}.pt"


def run_curves(model: str, seed: int) -> Path:
    return CURVES / model / f"seed{seed}"


def run_summary(model: str, seed: int) -> Path:
    return METRICS / "train" / model / f"seed{seed}.json"


def served_checkpoint(model: str) -> Path:
    return MODELS / f"{model}.pt"


# Written by evaluate, one file per model and reference: the served seed's temperature (which
# publish puts into the served checkpoint) and its reliability bins on the test split.
CALIBRATION = METRICS / "calibration"


def calibration_file(name: str) -> Path:
    return CALIBRATION / f"{name}.json"


# Written by the suspects stage: training articles whose label cleanlab doubts.
SUSPECTS = METRICS / "suspects.json"
