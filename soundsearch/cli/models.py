"""`soundsearch models`: the models available to query and eval, with their figures."""

from __future__ import annotations

import json

import typer
from rich.markup import escape

from soundsearch.cli._common import JsonOption, err, out


def models(json_out: JsonOption = False) -> None:
    """List the available models: shipped ones and those you trained.

    Shows each model's name (what --model takes), featurizer, categories, variant and the
    validation figures recorded when it was trained. User models ($SOUNDSEARCH_MODELS) come
    first and shadow shipped ones of the same name.

    Example:  soundsearch models --json
    """
    from soundsearch.model import list_models

    found = list_models()
    if json_out:
        typer.echo(json.dumps([m.to_json() for m in found]))
        return
    if not found:
        err.print("no models found: train one with `soundsearch train`", highlight=False)
        return
    from rich.table import Table

    table = Table(title="models", title_justify="left")
    for col, kw in (("name", {}), ("source", {}), ("featurizer", {}), ("categories", {"justify": "right"}),
                    ("variant", {}), ("epochs", {"justify": "right"}), ("val acc", {"justify": "right"}),
                    ("val loss", {"justify": "right"})):
        table.add_column(col, **kw)
    for m in found:
        if m.error:
            table.add_row(escape(m.name), m.source, f"[red]unreadable: {escape(m.error)}[/]", "", "", "", "", "")
            continue
        table.add_row(
            escape(m.name), m.source, escape(m.featurizer), str(len(m.categories)), m.variant,
            "" if m.epochs is None else str(m.epochs),
            "" if m.val_accuracy is None else f"{m.val_accuracy:.3f}",
            "" if m.val_loss is None else f"{m.val_loss:.4f}",
        )
    out.print(table)
