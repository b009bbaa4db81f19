"""publish stage: models/<model>/seed<S>.pt of the first seed in train.seeds -> models/<model>.pt.

The served checkpoint is fixed before anything is measured: the first seed, not the seed
that scored best, so the served model is as good as a typical run and no better by choice.
"""

from __future__ import annotations

from pipeline.core import files, layout
from pipeline.core.errors import UserError
from pipeline.core.params import Params


def run(params: Params, name: str) -> None:
    seed = params.train.seeds[0]
    source = layout.run_checkpoint(name, seed)
    try:
        data = source.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{source}: not trained yet; run `dvc repro train@{name}-{seed}`") from None
    files.write_bytes(layout.served_checkpoint(name), data)
    print(f"{layout.served_checkpoint(name)}: seed {seed} of {name}")
