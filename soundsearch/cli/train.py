"""`soundsearch train`: fit a presence-matrix model on a labelled dataset and save it."""

from __future__ import annotations

import json
import re
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from soundsearch.model.config import CONTEXTS
from soundsearch.cli._common import (
    DataDirOption, DatasetOption, FeaturizerName, JobsOption, JsonOption, ParamOption, QuietOption, err,
    featurizer_option, out, parse_params, print_some, progress, shown,
)
from soundsearch.training.config import BATCHINGS, LR_SCHEDULES, OPTIMIZERS, PAIR_BALANCES, SCHEMES, TrainConfig


def _choices(name: str, values: tuple[str, ...]) -> type[Enum]:
    """A typer choice enum of the library's own tuple of names (one source for both)."""
    return Enum(name, {v: v for v in values}, type=str)


OptimizerName = _choices("OptimizerName", OPTIMIZERS)
PairScheme = _choices("PairScheme", SCHEMES)
Batching = _choices("Batching", BATCHINGS)
PairBalance = _choices("PairBalance", PAIR_BALANCES)
LrSchedule = _choices("LrSchedule", LR_SCHEDULES)
ContextName = _choices("ContextName", CONTEXTS)

# The library's defaults: every option below takes its default from here.
D = TrainConfig()

TrainFeaturizerOption = featurizer_option("Features to train on (the store you query must use the same). Default: logmel.")


def _epochs(value: str) -> int | None:
    if value.strip().lower() == "auto":
        return None
    try:
        n = int(value)
    except ValueError:
        raise typer.BadParameter(f"expected a number of epochs or 'auto', got {value!r}") from None
    if n < 1:
        raise typer.BadParameter("the number of epochs must be at least 1")
    return n


def _widths(value: str | None, option: str) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        widths = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        widths = ()
    if not widths or any(w < 1 for w in widths):
        raise typer.BadParameter(f"expected comma-separated layer widths like 128,128, got {value!r}", param_hint=option)
    return widths


def _state_weights(value: str) -> tuple[float, ...]:
    try:
        weights = tuple(float(v) for v in value.split(","))
    except ValueError:
        weights = ()
    if len(weights) != 3 or not all(w > 0 for w in weights):
        raise typer.BadParameter(f"expected three positive weights like 2,1,1, got {value!r}", param_hint="--state-weights")
    return weights


def _out_path(out_opt: Path | None, dataset_name: str) -> Path:
    from soundsearch.model.registry import MODEL_SUFFIX
    from soundsearch.paths import user_models_dir

    if out_opt is None:
        stem = re.sub(r"[^A-Za-z0-9_-]+", "-", Path(dataset_name).stem).strip("-") or "model"
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        return user_models_dir() / f"{stem}-{stamp}{MODEL_SUFFIX}"
    path = out_opt.expanduser()
    if path.is_dir():
        raise typer.BadParameter(f"{path} is a folder: give the model file to write", param_hint="--out")
    if path.suffix == "":
        path = path.with_suffix(MODEL_SUFFIX)
    elif path.suffix != MODEL_SUFFIX:
        raise typer.BadParameter(f"model files end in {MODEL_SUFFIX}, not {path.suffix}", param_hint="--out")
    return path.absolute()


# Everyday options come first under "Options"; the paper's variants and the knobs that only
# matter when experimenting go under their own headings, so `train --help` reads top-down.
VARIANT = "Model variants (the paper's)"
KNOB = "Research knobs"


def _metavar(values) -> str:
    return "|".join(v.value for v in values)


def train(
    dataset: DatasetOption = "sonyc-ust",
    data_dir: DataDirOption = None,
    download: Annotated[bool, typer.Option("--download", help="Fetch SONYC-UST first (about 10 GB, resumable).")] = False,
    featurizer: TrainFeaturizerOption = FeaturizerName.logmel,
    param: ParamOption = None,
    out_path: Annotated[
        Optional[Path],
        typer.Option("--out", "-o", metavar="FILE", help="Model file to write. Default: a new file in the user models folder ($SOUNDSEARCH_MODELS).", show_default=False),
    ] = None,
    epochs: Annotated[str, typer.Option("--epochs", "-e", help="Epochs, or 'auto': choose by validation loss with early stopping.", metavar="N|auto")] = "auto",
    seed: Annotated[int, typer.Option("--seed", metavar="N", help="Seed for the split, pairs, initialisation and batch order.")] = D.seed,
    jobs: JobsOption = None,
    threads: Annotated[int, typer.Option("--threads", min=1, metavar="N", help="Threads for training. With 1 a seed gives the same model on any machine, and it is often the fastest.")] = D.threads,
    quiet: QuietOption = False,
    json_out: JsonOption = False,
    # -- the paper's variants
    no_siamese: Annotated[bool, typer.Option("--no-siamese", rich_help_panel=VARIANT, help="No towers: the raw frames of the pair go into the pair head.")] = not D.siamese,
    per_category: Annotated[bool, typer.Option("--per-category", rich_help_panel=VARIANT, help="One sub-model per category instead of one for all.")] = D.per_category,
    no_attention: Annotated[bool, typer.Option("--no-attention", rich_help_panel=VARIANT, help="Mean over time instead of attention pooling.")] = not D.attention,
    # -- research knobs: epochs and validation
    max_epochs: Annotated[int, typer.Option("--max-epochs", min=1, metavar="N", rich_help_panel=KNOB, help="Upper bound for --epochs auto.")] = D.max_epochs,
    patience: Annotated[int, typer.Option("--patience", min=1, metavar="N", rich_help_panel=KNOB, help="Epochs without a better validation loss before stopping.")] = D.patience,
    val_fraction: Annotated[float, typer.Option("--val-fraction", min=0.01, max=0.49, metavar="SHARE", rich_help_panel=KNOB, help="Share of training recordings held out to choose epochs.")] = D.val_fraction,
    val_split: Annotated[bool, typer.Option("--val-split", rich_help_panel=KNOB, help="Choose epochs on the dataset's own validate split instead of a held-out share.")] = False,
    no_refit: Annotated[bool, typer.Option("--no-refit", rich_help_panel=KNOB, help="Keep the model trained without the held-out recordings.")] = not D.refit,
    # -- optimisation
    lr: Annotated[float, typer.Option("--lr", metavar="RATE", rich_help_panel=KNOB, help="Learning rate.")] = D.lr,
    lr_schedule: Annotated[LrSchedule, typer.Option("--lr-schedule", metavar=_metavar(LrSchedule), rich_help_panel=KNOB, help="'cosine': decay the learning rate to 0 over the planned epochs.")] = LrSchedule(D.lr_schedule),
    optimizer: Annotated[OptimizerName, typer.Option("--optimizer", metavar=_metavar(OptimizerName), rich_help_panel=KNOB, help="Optimiser (the paper: rmsprop).")] = OptimizerName(D.optimizer),
    weight_decay: Annotated[float, typer.Option("--weight-decay", min=0.0, metavar="X", rich_help_panel=KNOB, help="Weight decay.")] = D.weight_decay,
    # -- batches and pairs
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, metavar="N", rich_help_panel=KNOB, help="Pairs per batch.")] = D.batch_size,
    batching: Annotated[Batching, typer.Option("--batching", metavar=_metavar(Batching), rich_help_panel=KNOB, help="'random': shuffled pairs (the paper); 'blocked': batches of pairs among few items, ~2x faster; 'items': batches of --batch-items items with balanced pairs drawn among them (the default model's recipe).")] = Batching(D.batching),
    batch_items: Annotated[int, typer.Option("--batch-items", min=2, metavar="N", rich_help_panel=KNOB, help="Items per batch with --batching items (--batch-size pairs are drawn among them).")] = D.batch_items,
    pair_balance: Annotated[PairBalance, typer.Option("--pair-balance", metavar=_metavar(PairBalance), rich_help_panel=KNOB, help="With --batching items: 'partner' balances each pair's partner (the paper); 'category' also draws the first item holding the pair's category half of the time (more 'both' pairs for rare categories).")] = PairBalance(D.pair_balance),
    pairs_per_side: Annotated[int, typer.Option("--pairs-per-side", min=1, metavar="N", rich_help_panel=KNOB, help="Partners per target, category and situation.")] = D.pairs_per_side,
    pair_scheme: Annotated[PairScheme, typer.Option("--pair-scheme", metavar=_metavar(PairScheme), rich_help_panel=KNOB, help="'shared': one random partner order per target for all categories (the paper's pair count); 'independent': a fresh draw per category (more pairs).")] = PairScheme(D.pair_scheme),
    # -- loss and augmentation
    state_weights: Annotated[Optional[str], typer.Option("--state-weights", metavar="B,N,D", rich_help_panel=KNOB, help="Loss weights of the states both,neither,differs (default 1,1,1).")] = None,
    tag_weight: Annotated[float, typer.Option("--tag-weight", min=0.0, metavar="W", rich_help_panel=KNOB, help="Weight of an auxiliary per-item tagging loss on the tower output (training only).")] = D.tag_weight,
    mix: Annotated[float, typer.Option("--mix", min=0.0, max=1.0, metavar="SHARE", rich_help_panel=KNOB, help="Share of training items replaced by a mix of two items (union of their labels).")] = D.mix_prob,
    input_noise: Annotated[float, typer.Option("--input-noise", min=0.0, metavar="STD", rich_help_panel=KNOB, help="Std of Gaussian noise added to standardised features in training.")] = D.input_noise,
    # -- network shape
    tower: Annotated[Optional[str], typer.Option("--tower", metavar="W,W,...", rich_help_panel=KNOB, help="Tower layer widths.")] = None,
    head: Annotated[Optional[str], typer.Option("--head", metavar="W,W,...", rich_help_panel=KNOB, help="Pair-head layer widths.")] = None,
    dropout: Annotated[float, typer.Option("--dropout", min=0.0, max=0.95, metavar="P", rich_help_panel=KNOB, help="Dropout between layers in training.")] = D.dropout,
    context: Annotated[ContextName, typer.Option("--context", metavar=_metavar(ContextName), rich_help_panel=KNOB, help="'stats': every step also sees its item's mean, std and max over time.")] = ContextName(D.context),
) -> None:
    """Train a presence-matrix model on a labelled dataset and save it.

    Features are computed once and cached; 10% of the training recordings are held out to choose
    the number of epochs by validation loss, then the model is refit on all of them. Prints the
    model's path and its validation figures.

    Example:  soundsearch train --dataset my-labels.csv --seed 1 --out ~/models/foley.safetensors
    """
    # Over 60 lines on purpose: typer declares its 38 options as parameters (~50 lines); the body
    # parses them into a TrainConfig, calls training.pipeline.train_on_dataset and prints the result.
    from soundsearch.features import get_featurizer
    from soundsearch.training.pipeline import train_on_dataset

    n_epochs = _epochs(epochs)
    tower_w = _widths(tower, "--tower")
    head_w = _widths(head, "--head")
    params = parse_params(param)
    if lr <= 0:
        raise typer.BadParameter("the learning rate must be positive", param_hint="--lr")
    config = TrainConfig(
        siamese=not no_siamese, per_category=per_category, attention=not no_attention,
        dropout=dropout, context=context.value, optimizer=optimizer.value, lr=lr,
        batch_size=batch_size, batching=batching.value, weight_decay=weight_decay, input_noise=input_noise,
        pairs_per_side=pairs_per_side, pair_scheme=pair_scheme.value, epochs=n_epochs, max_epochs=max_epochs, patience=patience,
        val_fraction=val_fraction, refit=not no_refit, seed=seed, threads=threads,
        batch_items=batch_items, tag_weight=tag_weight, mix_prob=mix, lr_schedule=lr_schedule.value,
        pair_balance=pair_balance.value,
        **({"tower": tower_w} if tower_w else {}), **({"head": head_w} if head_w else {}),
        **({"state_weights": _state_weights(state_weights)} if state_weights else {}),
    )
    fz = get_featurizer(featurizer.value, **params)
    if out_path is not None:
        _out_path(out_path, "")  # a bad --out fails before minutes of featurizing, not after

    with progress(quiet) as bar:
        shows = _TrainProgress(bar, quiet)
        trained = train_on_dataset(
            dataset, fz, config, data_dir=data_dir, download=download, val_split=val_split, jobs=jobs,
            on_dataset=shows.on_dataset, on_feature_progress=shows.on_feature_progress,
            on_features=shows.on_features, on_epoch=shows.on_epoch, on_batch=shows.on_batch,
        )
        shows.done()
    data, feats, result = trained.dataset, trained.features, trained.result
    target = _out_path(out_path, data.name)
    if feats.failed and not quiet:
        _list_skipped("could not be read", feats.failed)
    saved = result.model.save(target)
    if json_out:
        typer.echo(json.dumps(_json_doc(saved, data, fz, feats, result)))
    elif quiet:
        out.print(shown(saved), highlight=False, soft_wrap=True)
    else:
        _render(saved, data, fz, result)


class _TrainProgress:
    """The progress bar's (and the skipped files') view of train_on_dataset's callbacks."""

    def __init__(self, bar, quiet: bool):
        self.bar, self.quiet = bar, quiet
        self.task = bar.add_task("features", total=None) if bar is not None else None

    def on_dataset(self, data) -> None:
        if data.missing and not self.quiet:
            _list_skipped("missing", [(p, "file not found") for p in data.missing])

    def on_feature_progress(self, p) -> None:
        if self.bar is not None and getattr(p, "phase", "") == "featurize" and p.total:
            self.bar.update(self.task, total=p.total, completed=p.done)

    def on_features(self, _feats) -> None:
        if self.bar is not None:
            self.bar.update(self.task, description="features ready", total=1, completed=1)
            self.bar.update(self.task, description="training", completed=0, total=None)

    def on_batch(self, phase: str, done: int, total: int) -> None:
        if self.bar is not None:
            self.bar.update(self.task, total=total, completed=done)

    def on_epoch(self, e) -> None:
        if self.bar is None:
            return
        if e.phase == "select":
            text = (f"epoch {e.epoch:>3}  loss {e.train_loss:.4f}  val loss {e.val_loss:.4f}  "
                    f"val acc {e.val_accuracy:.3f}{'  *' if e.best else ''}  ({e.pairs_per_s:,.0f} pairs/s)")
        else:
            text = f"refit {e.epoch:>3}/{e.epochs}  loss {e.train_loss:.4f}  ({e.pairs_per_s:,.0f} pairs/s)"
        self.bar.console.print(text, highlight=False)
        nxt = "refit" if e.phase == "refit" else "training"
        self.bar.update(self.task, description=nxt, completed=0)

    def done(self) -> None:
        if self.bar is not None:
            self.bar.update(self.task, description="trained", total=1, completed=1)


def _json_doc(saved: Path, data, fz, feats, result) -> dict:
    report = result.report
    return {
        "model": str(saved),
        "name": saved.name.removesuffix(".safetensors"),
        "dataset": data.name,
        "featurizer": fz.identity,
        "variant": result.model.config.variant,
        "epochs": report.epochs,
        "refit": report.refit,
        "validation": report.validation.to_json(),
        "categories": list(data.taxonomy),
        "items": report.items,
        "recordings": report.recordings,
        "train_pairs": report.train_pairs,
        "pairs_per_s": round(report.pairs_per_s, 1),
        "seconds": round(report.seconds, 2),
        "missing": [str(p) for p in data.missing],
        "failed": [[str(p), str(r)] for p, r in feats.failed],
        "history": [h.to_json() for h in report.history],
    }


def _list_skipped(what: str, entries) -> None:
    err.print(f"[yellow]{len(entries)} file(s) {what}, skipped:[/]", highlight=False, soft_wrap=True)
    print_some(err, [f"  {shown(p)}: {escape(str(reason))}" for p, reason in entries])


def _render(saved: Path, data, fz, result) -> None:
    from rich.table import Table

    report, model = result.report, result.model
    v = report.validation
    table = Table(title="training summary", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    rows = [
        ("model", shown(saved)),
        ("dataset", escape(data.name)),
        ("featurizer", escape(fz.name)),
        ("variant", model.config.variant),
        ("training data", f"{report.items} items from {report.recordings} recordings, {report.train_pairs:,} pairs"),
        ("epochs", f"{report.epochs} (chosen by validation loss{', then refit on all recordings' if report.refit else ''})"
         if model.meta["recipe"]["epochs"] is None else f"{report.epochs}{' (then refit on all recordings)' if report.refit else ''}"),
        ("validation", f"loss {v.loss:.4f}, accuracy {v.accuracy:.3f} vs majority {v.majority:.3f} "
         f"({v.recordings} recordings, {v.pairs:,} pairs)"),
        ("time", f"{report.seconds:.1f} s ({report.pairs_per_s:,.0f} pairs/s)"),
    ]
    for k, val in rows:
        table.add_row(k, val)
    out.print(table)
    cats = Table(title="per category", title_justify="left")
    cats.add_column("category")
    cats.add_column("training items with it", justify="right")
    cats.add_column("validation accuracy", justify="right")
    for name, pos, acc in zip(data.taxonomy, report.positives, v.per_category):
        cats.add_row(escape(name), str(pos), f"{acc:.3f}")
    out.print(cats)
    out.print(
        f"saved model [bold]{escape(saved.name)}[/] to {shown(saved)}\n"
        f"validation: loss {v.loss:.4f}, presence-state accuracy {v.accuracy:.3f} "
        f"(majority rate {v.majority:.3f}) on {v.recordings} held-out recordings, {v.pairs} pairs",
        highlight=False, soft_wrap=True,
    )
