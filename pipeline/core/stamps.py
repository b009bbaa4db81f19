"""Stamps that tie one run's separate outputs together, so a reader refuses a mixed set.

Each output file appears whole (io's atomic writes and publish_dir), but a stage that writes to
several places, and is stopped between two of them, leaves a new file beside an old one. So
each file names the run that wrote it, and compare, which reads them all, checks the names:
- train: the checkpoint's sha256, in the training summary and in the curves' folder;
- evaluate: the sha256 of every checkpoint it scored, in the scores, and one stamp of the
  whole evaluation in every scores file and beside the test predictions.
`dvc repro` reruns the stage whose outputs changed, which makes the set whole again.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pipeline.core import files, layout
from pipeline.core.errors import UserError

KEY = "checkpoint_sha256"
EVALUATION = "evaluation"
RUN_FILE = "run.json"  # in a run's curves folder
PREDICTIONS_FILE = "stamp.json"  # in metrics/predictions/

RERUN = "one was stopped midway or the files were copied from elsewhere; rerun `dvc repro`"


def write_run(curves: Path, checkpoint_sha256: str) -> None:
    files.write_json(curves / RUN_FILE, {KEY: checkpoint_sha256})


def evaluation_stamp(results: dict[str, Any]) -> str:
    """One value for everything an evaluate run wrote: the hash of its results."""
    return hashlib.sha256(json.dumps(results, sort_keys=True).encode()).hexdigest()


def _field(path: Path, what: str, key: str) -> str:
    data = files.read_json(path, what)
    value = data.get(key) if isinstance(data, dict) else None
    if not isinstance(value, str):
        raise UserError(f"{path}: no {key} stamp (written by an older version?); rerun `dvc repro`")
    return value


def check_run(name: str, seed: int, scored: dict[str, Any], scores_path: Path) -> None:
    """The checkpoint evaluate scored is the one the training summary and curves describe."""
    summary = layout.run_summary(name, seed)
    trained = _field(summary, "training summary", KEY)
    curves = _field(layout.run_curves(name, seed) / RUN_FILE, "run stamp", KEY)
    if curves != trained:
        raise UserError(
            f"{layout.run_curves(name, seed)} and {summary} come from different runs of "
            f"`pipeline train {name} --seed {seed}` ({RERUN})"
        )
    checkpoints = scored.get(KEY) if isinstance(scored, dict) else None
    if not isinstance(checkpoints, dict) or checkpoints.get(str(seed)) != trained:
        raise UserError(
            f"{scores_path} scored another checkpoint of {layout.run_name(name, seed)} than {summary} "
            f"describes ({RERUN})"
        )


def check_evaluation(scores: dict[str, dict[str, Any]], scores_dir: Path, predictions_dir: Path) -> None:
    """Every scores file and the predictions come from the same evaluate run."""
    expected = _field(predictions_dir / PREDICTIONS_FILE, "evaluation stamp", EVALUATION)
    for name, data in scores.items():
        if data.get(EVALUATION) != expected:
            raise UserError(
                f"{scores_dir / f'{name}.json'} and {predictions_dir} come from different runs of "
                f"`pipeline evaluate` ({RERUN})"
            )
