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
    """The featurizer's name and the parameters where it departs from that featurizer's defaults.

    A store must match a model's featurizer exactly, so `logmel stats=mean` (the paper's steps)
    and plain `logmel` must not look alike in the table.
    """
    from soundsearch.errors import SoundsearchError
    from soundsearch.features import get_featurizer

    _, _, params_json = m.featurizer_identity.partition(":")
    try:
        params = json.loads(params_json)
        defaults = get_featurizer(m.featurizer).params
    except (ValueError, SoundsearchError):
        return m.featurizer
    changed = [f"{k}={v}" for k, v in sorted(params.items()) if defaults.get(k) != v]
    return " ".join([m.featurizer, *changed])


def _short(variant: str) -> str:
    """Compact variant for the table: the paper's defaults go unsaid."""
    parts = [p for p in variant.split("+") if p not in ("siamese", "single", "attention")]
    return "+".join(parts) or "paper"


def _name(m) -> str:
    return escape(m.name) + (" [dim](shipped)[/]" if m.source == "shipped" else "")
