"""The `pipeline` command line: one subcommand per DVC stage, configured by params.yaml.

Options here are paths and verbosity only; hyperparameters live in params.yaml. Errors a
user can cause print one line and exit with code 2; so does a file that cannot be written (a
read-only folder, a full disk), naming it. A reader that closes the pipe early (`| head -1`)
ends the command quietly with code 0, as it asked for no more.
"""

from __future__ import annotations

import importlib
import io as stdio
import os
import sys
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, TypeVar

import typer

from pipeline.core import layout, process
from pipeline.core.errors import UserError

app = typer.Typer(
    help="Reproducible RNN vs. bidirectional-RNN text classification, one command per DVC stage.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _params_file(path: Path) -> Path:
    """--params names a file: a folder is one line and exit code 2, not click's usage box."""
    if path.is_dir():
        typer.echo(f"error: --params {path}: is a folder; name the params file, e.g. {path / 'params.yaml'}", err=True)
        raise typer.Exit(2)
    return path


ParamsPath = Annotated[Path, typer.Option("--params", help="The params file to read.", callback=_params_file)]

PLOTS_PAGE = Path(".dvc/offline_plots.html")

T = TypeVar("T")


ModelName = StrEnum("ModelName", {name: name for name in layout.MODEL_NAMES})  # type: ignore[misc]


class Device(StrEnum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


ModelOption = Annotated[
    str,
    typer.Option(
        "--model", help="A model section of params.yaml, e.g. birnn (models/<name>.pt), or a checkpoint path."
    ),
]


def _settle_stdout() -> None:
    """Flush stdout; if it cannot take what it holds (a closed pipe, a full disk), point it at
    devnull, so that the interpreter's own flush at exit has nothing left to fail on."""
    try:
        sys.stdout.flush()
    except OSError:
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        except (OSError, ValueError, stdio.UnsupportedOperation):  # a stdout without a file behind it
            pass


def _guard(work: Callable[[], T]) -> T:
    """Run a stage; a UserError, or a file that cannot be written, becomes one line on stderr
    and exit code 2; a reader that closed stdout ends it quietly."""
    try:
        return work()
    except UserError as exc:
        _settle_stdout()
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except BrokenPipeError:
        _settle_stdout()
        raise typer.Exit(0) from None
    except OSError as exc:
        # What an atomic write meets (pipeline.core.files): a read-only folder, a full disk.
        # The temp file is gone by now and the published file untouched.
        _settle_stdout()
        where = f"{exc.filename}: " if exc.filename else ""
        typer.echo(f"error: {where}{exc.strerror or exc}", err=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        typer.echo(
            "interrupted; rerun the command (every file it wrote is complete, none half-written)",
            err=True,
        )
        raise typer.Exit(130) from None


def _run_stage(stage: str, params: Path, sections: tuple[str, ...], *args: object, run: str = "") -> None:
    """Validate params first, then import the stage (torch and friends load only when needed).

    `run` names the output set in the lock that keeps a second run of the same stage out.
    """

    def work() -> None:
        from pipeline.core import files
        from pipeline.core import params as params_module

        process.stop_with_parent()
        loaded = params_module.load(params, sections)
        unchanged = params_module.still_as_read(params, loaded, sections)
        with files.checked_before_publishing(unchanged), process.exclusive(run or stage):
            importlib.import_module(f"pipeline.stages.{stage}").run(loaded, *args)

    _guard(work)


# Written by check-params, the first DVC stage, which every other stage follows. Its content
# never changes, so a params change reruns only the stages that read the changed section.
PARAMS_CHECKED = layout.PARAMS_CHECKED


@app.command("check-params")
def check_params(params: ParamsPath = Path("params.yaml")) -> None:
    """Validate every section of params.yaml; as the first DVC stage, before any output is removed."""

    def work() -> None:
        from pipeline.core import files
        from pipeline.core import params as params_module

        params_module.load(params)
        files.write_text(
            PARAMS_CHECKED, "Every section of the params file was valid; written by `pipeline check-params`.\n"
        )

    _guard(work)


@app.command()
def download(params: ParamsPath = Path("params.yaml")) -> None:
    """Fetch the corpus into data/raw/ (corpus.jsonl + manifest.json)."""
    _run_stage("download", params, ("download",))


@app.command()
def prepare(params: ParamsPath = Path("params.yaml")) -> None:
    """Tokenise, de-duplicate, split, build the vocabulary and pad into data/prepared/."""
    _run_stage("prepare", params, ("prepare",))


@app.command()
def train(
    model: Annotated[ModelName, typer.Argument(help="Which model section of params.yaml to train.")],
    seed: Annotated[
        int | None, typer.Option("--seed", help="Train only this seed: the same bytes as in a run of all.")
    ] = None,
    params: ParamsPath = Path("params.yaml"),
) -> None:
    """Train a model once per seed of train.seeds, side by side: models/<model>/seed<S>.pt with
    the learning curves and a summary of each run."""
    run = f"train {model.value}" + ("" if seed is None else f" --seed {seed}")
    _run_stage("train", params, ("train", model.value), model.value, seed, run=run)


@app.command()
def publish(
    model: Annotated[ModelName, typer.Argument(help="Which model to publish.")],
    params: ParamsPath = Path("params.yaml"),
) -> None:
    """Copy the first seed's run of a model, with its temperature, to models/<model>.pt: the one predict serves."""
    _run_stage("publish", params, ("train",), model.value, run=f"publish {model.value}")


@app.command()
def evaluate(params: ParamsPath = Path("params.yaml")) -> None:
    """Score and calibrate every model and the references on train/val/test into metrics/."""
    _run_stage("evaluate", params, ("evaluate", "train"))


@app.command()
def suspects(params: ParamsPath = Path("params.yaml")) -> None:
    """List the training articles whose label looks wrong (cleanlab, cross-validated TF-IDF): metrics/suspects.json."""
    _run_stage("suspects", params, ("evaluate", "suspects"))


@app.command()
def compare(params: ParamsPath = Path("params.yaml")) -> None:
    """Walk the ablation ladder, check the starter experiment's targets, write the report and metrics/errors.md."""
    _run_stage("compare", params, ("compare", "train"))


@app.command()
def predict(
    texts: Annotated[
        list[str] | None,
        typer.Argument(metavar="TEXT", help="Texts to classify, one argument each.", show_default=False),
    ] = None,
    file: Annotated[
        str | None,
        typer.Option(
            "--file",
            metavar="PATH",
            help="Read texts from PATH (- for stdin): one per line, or a field of a .csv / .jsonl file.",
        ),
    ] = None,
    text_field: Annotated[
        str | None,
        typer.Option("--text-field", help="The .csv column or .jsonl key holding the text (default: text)."),
    ] = None,
    model: ModelOption = "birnn",
    vocab: Annotated[
        Path | None,
        typer.Option("--vocab", help="Check that the checkpoint was trained with this vocabulary file."),
    ] = None,
    top_k: Annotated[int, typer.Option("--top-k", metavar="K", help="Show the K most likely labels.")] = 1,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object per text, not a table.")] = False,
    device: Annotated[
        Device, typer.Option("--device", help="Where the model runs: cpu, cuda, or auto (cuda if there is one).")
    ] = Device.cpu,
) -> None:
    """Label new texts with a trained model: TEXT arguments, or a file of texts (--file)."""
    from pipeline.stages import predict as stage

    _guard(
        lambda: stage.run(
            texts or [],
            file,
            model=model,
            vocab=vocab,
            text_field=text_field,
            top_k=top_k,
            as_json=as_json,
            device=device.value,
        )
    )


@app.command()
def export(
    model: ModelOption = "birnn",
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            metavar="PATH",
            help="The ONNX file to write (default: exported/<model>.onnx); its JSON sidecar goes beside it.",
        ),
    ] = None,
) -> None:
    """Write a checkpoint as ONNX and a JSON sidecar (vocabulary, labels, tokenizer): no torch or pipeline needed."""
    from pipeline.stages import export as stage

    _guard(lambda: stage.run(model, out))


@app.command("plots-template")
def plots_template(
    output: Annotated[Path, typer.Option("--output", help="Where to write the page.", dir_okay=False)] = PLOTS_PAGE,
) -> None:
    """Write the offline page for `dvc plots show|diff` (.dvc/config's plots.html_template)."""
    from pipeline.report import plots_page as page

    _guard(lambda: page.run(output))


def main() -> None:
    app(prog_name="pipeline")


if __name__ == "__main__":
    main()
