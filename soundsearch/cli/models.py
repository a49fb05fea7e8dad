"""`soundsearch models`: the models available to query and eval, with their figures;
`soundsearch models fetch`: download pretrained weights a featurizer needs (OpenL3's).

`models` is a command group that still lists the models when called without a subcommand,
so `soundsearch models` and `soundsearch models --json` work as they always did.
"""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from soundsearch.cli._common import JsonOption, QuietOption, err, one_line_errors, out, progress

app = typer.Typer(
    invoke_without_command=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    rich_markup_mode="markdown",
)


@app.callback(invoke_without_command=True)
@one_line_errors
def models(ctx: typer.Context, json_out: JsonOption = False) -> None:
    """List the available models: shipped ones and those you trained.

    Shows each model's name (what --model takes), featurizer, categories, variant and the
    validation figures recorded when it was trained. User models ($SOUNDSEARCH_MODELS) come
    first and shadow shipped ones of the same name. `soundsearch models fetch openl3`
    downloads the OpenL3 featurizer's weights.

    Example:  soundsearch models --json
    """
    if ctx.invoked_subcommand is not None:
        return
    from soundsearch.model.registry import list_models

    found = list_models()
    if json_out:
        typer.echo(json.dumps([m.to_json() for m in found], allow_nan=False))
        return
    if not found:
        err.print("no models found: train one with `soundsearch train`", highlight=False)
        return
    from rich.table import Table

    from rich import box

    table = Table(
        title="models", title_justify="left", caption_justify="left", box=box.SIMPLE_HEAD,
        caption="C: categories; ep: epochs; val acc: presence-state accuracy on held-out recordings "
        "(always guessing the commonest state scores the figure in brackets)",
    )
    table.add_column("name", no_wrap=True)
    table.add_column("features", no_wrap=True)
    table.add_column("C", justify="right")
    table.add_column("variant", no_wrap=True)
    table.add_column("ep", justify="right")
    table.add_column("val acc", justify="right", no_wrap=True)
    for m in found:
        if m.error:
            table.add_row(_name(m), f"[red]unreadable: {escape(m.error)}[/]", "", "", "", "")
            continue
        acc = "" if m.val_accuracy is None else f"{m.val_accuracy:.3f}"
        if acc and m.val_majority is not None:
            acc += f" ({m.val_majority:.3f})"
        table.add_row(
            _name(m), escape(_features(m)), str(len(m.categories)), _short(m.variant),
            "" if m.epochs is None else str(m.epochs), acc,
        )
    out.print(table)


def _features(m) -> str:
    """The featurizer's name and the parameters where it departs from that featurizer's defaults."""
    from soundsearch.features import departures

    if not m.featurizer_identity:
        return m.featurizer
    name, changed = departures(m.featurizer_identity, build=False)  # building aisfx would import torch
    return " ".join([name, *changed])


def _short(variant: str) -> str:
    """Compact variant for the table: the paper's defaults go unsaid."""
    parts = [p for p in variant.split("+") if p not in ("siamese", "single", "attention")]
    return "+".join(parts) or "paper"


def _name(m) -> str:
    return escape(m.name) + (" [dim](shipped)[/]" if m.source == "shipped" else "")


class Fetchable(str, Enum):
    openl3 = "openl3"


class ContentType(str, Enum):
    env = "env"
    music = "music"


class InputRepr(str, Enum):
    mel128 = "mel128"
    mel256 = "mel256"


@app.command("fetch")
@one_line_errors
def fetch(
    model: Annotated[Fetchable, typer.Argument(metavar="WEIGHTS", help="What to fetch: openl3 (the OpenL3 featurizer's audio weights).")],
    content_type: Annotated[ContentType, typer.Option("--content-type", metavar="env|music", help="Weights trained on environmental sounds or music.")] = ContentType.env,
    input_repr: Annotated[InputRepr, typer.Option("--input-repr", metavar="mel128|mel256", help="Spectrogram the network takes: 128 or 256 Mel bands.")] = InputRepr.mel256,
    dest: Annotated[
        Optional[Path],
        typer.Option("--dir", metavar="DIR", help="Folder to store the weights in. Default: the per-user data folder, where the featurizer looks.", show_default=False),
    ] = None,
    quiet: QuietOption = False,
) -> None:
    """Download pretrained weights a featurizer needs, check them and store them.

    openl3: the OpenL3 authors' audio weights (Cramer et al. 2019, licensed CC BY 4.0), one
    file (~18 MB) per content type and input representation, from the upstream release
    ($SOUNDSEARCH_OPENL3_URL overrides the address). An interrupted download resumes; the
    file is checked layer by layer before it is put in place. Prints the stored path.

    Example:  soundsearch models fetch openl3 --content-type env --input-repr mel256
    """
    from soundsearch.features import openl3_weights as W

    with progress(quiet) as bar:
        task = None

        def on_progress(label: str, done: int, total: int) -> None:
            nonlocal task
            if bar is None:
                return
            if task is None:
                task = bar.add_task(f"fetching {label}", total=total if total > 0 else None)
            bar.update(task, completed=done)

        path = W.fetch_weights(input_repr.value, content_type.value, dest, on_progress=on_progress)
    typer.echo(str(path))
    if not quiet:
        err.print(
            f"OpenL3 weights ({escape(W.LICENCE)}) stored; use them with "
            f"`soundsearch index --featurizer openl3 -p input_repr={input_repr.value} -p content_type={content_type.value}`",
            highlight=False, soft_wrap=True,
        )
    if dest is not None and not quiet:
        err.print(f"the featurizer finds them there with {W.WEIGHTS_ENV}={escape(str(dest))}", highlight=False, soft_wrap=True)
