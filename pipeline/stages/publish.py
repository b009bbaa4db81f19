"""publish stage: models/<model>/seed<S>.pt of the first seed in train.seeds + its temperature -> models/<model>.pt.

The served checkpoint is fixed before anything is measured: the first seed, not the seed
that scored best, so the served model is as good as a typical run and no better by choice.
It is that run's checkpoint with one entry added, "temperature": the scalar that evaluate fitted
on the validation split (metrics/calibration/<model>.json), by which `pipeline predict` and the
exported model divide the logits. The run's own checkpoint is left as it is.
"""

from __future__ import annotations

from pipeline.core import calibrated, files, layout
from pipeline.core.errors import UserError
from pipeline.core.params import Params
from pipeline.model import checkpoints


def served_temperature(name: str, seed: int, checkpoint_sha256: str) -> float:
    """The temperature evaluate fitted for this run, refused if it was fitted on another checkpoint."""
    fitted = calibrated.read(name)
    if fitted.served_seed != seed or fitted.checkpoint_sha256 != checkpoint_sha256:
        raise UserError(
            f"{layout.calibration_file(name)}: fitted on another checkpoint than {layout.run_checkpoint(name, seed)}; "
            "rerun `dvc repro`"
        )
    return fitted.temperature


def run(params: Params, name: str) -> None:
    seed = params.train.seeds[0]
    source = layout.run_checkpoint(name, seed)
    if not source.is_file():
        raise UserError(f"{source}: not trained yet; run `dvc repro train@{name}`")
    temperature = served_temperature(name, seed, files.sha256_file(source))
    checkpoint = checkpoints.load_checkpoint(source)
    checkpoints.save_checkpoint(layout.served_checkpoint(name), {**checkpoint, "temperature": temperature})
    print(f"{layout.served_checkpoint(name)}: seed {seed} of {name}, temperature {temperature:g}")
