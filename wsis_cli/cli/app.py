"""The `wsis` Typer application: verbs are registered here and nowhere else."""

from __future__ import annotations

from typing import Annotated

import typer

from wsis_cli import __version__
from wsis_cli.cli import budget, data, evaluate, predict, predict_maps, pseudolabel, score_iou, select, show, train

app = typer.Typer(
    name="wsis",
    help="Weakly- and semi-supervised instance segmentation: cheap labels in, instance masks out.\n\n"
         "Every verb reads and writes COCO JSON, so verbs chain in shell pipelines ('-' = stdin/stdout).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"wsis {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """wsis: weakly- and semi-supervised instance segmentation."""


app.add_typer(data.app, name="data")
app.add_typer(pseudolabel.app, name="pseudolabel")
app.add_typer(train.app, name="train")
app.command("predict")(predict.predict)
app.command("predict-maps")(predict_maps.predict_maps)
app.command("score-iou")(score_iou.score_iou)
app.command("budget")(budget.budget)
app.command("select")(select.select)
app.command("evaluate")(evaluate.evaluate)
app.command("show")(show.show)


def _terminate(signum, frame) -> None:
    raise KeyboardInterrupt  # unwind as Ctrl-C does: stop the workers, keep the resume log


def main() -> None:
    import signal

    signal.signal(signal.SIGTERM, _terminate)
    app()
