"""`soundsearch eval`: the paper's Fig. 3 as a command, with the baselines it lacked."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from soundsearch.cli._common import (
    DataDirOption, DatasetOption, FeaturizerName, JobsOption, JsonOption, ModeOption, QuietOption, err, out, progress,
)

# --variants (and the two options that only shape it) retrain the paper's models: research,
# not what measuring your own model needs, so under their own heading.
KNOB = "Research knobs"
VariantsFeaturizerOption = Annotated[
    Optional[FeaturizerName],
    typer.Option(
        "--featurizer", "-f", metavar="|".join(FeaturizerName.__members__), rich_help_panel=KNOB, show_default=False,
        help="Features for --variants when no --model is given (default logmel).",
    ),
]


def eval_(
    dataset: DatasetOption = "sonyc-ust",
    data_dir: DataDirOption = None,
    model: Annotated[
        Optional[list[str]],
        typer.Option("--model", "-m", metavar="NAME|PATH", help="Model name or file; repeat to compare several. Default: the shipped default model.", show_default=False),
    ] = None,
    variants: Annotated[
        bool, typer.Option("--variants", rich_help_panel=KNOB, help="Also train and evaluate the paper's 8 variants (Siamese or not x single or per-category x attention or not), one seed.")
    ] = False,
    k: Annotated[
        Optional[list[str]], typer.Option("--k", "-k", metavar="K", help="Cut-offs K (repeat, or comma-separated). Default: 1,5,10,30,50,100.", show_default=False)
    ] = None,
    thresholds: Annotated[
        Optional[list[str]],
        typer.Option("--thresholds", "-s", metavar="S", help="Agreement thresholds s (repeat, or comma-separated). Default: C and C-1.", show_default=False),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", metavar="N", help="Seed for a CSV's split and the variants' training.")] = 0,
    jobs: JobsOption = None,
    plot: Annotated[
        Optional[Path], typer.Option("--plot", metavar="PNG", help="Write the mAP-vs-K figure (one panel per query group x threshold) to this PNG.", show_default=False)
    ] = None,
    download: Annotated[bool, typer.Option("--download", help="Fetch SONYC-UST from Zenodo first (resumes, checks md5).")] = False,
    featurizer: VariantsFeaturizerOption = None,
    epochs: Annotated[
        Optional[int], typer.Option("--epochs", metavar="N", rich_help_panel=KNOB, help="Epochs for each --variants model (default: chosen on a validation split).", show_default=False)
    ] = None,
    store: Annotated[
        Optional[Path],
        typer.Option("--store", metavar="DIR", help="Take features from this store (your own index) instead of a private cache; listed files it lacks are indexed into it.", show_default=False),
    ] = None,
    as_json: JsonOption = False,
    quiet: QuietOption = False,
    mode: ModeOption = None,
) -> None:
    """Measure retrieval quality: mAP_s@K of the test split queried against the training split.

    Rows: each model (ranked by its recorded mode, or --mode, as query ranks), a random
    ranking (exact expectation), and cosine similarity of pooled features and of whole-item
    statistics (the same featurizer). Queries are grouped into single-label, multi-label and
    no-category ones.

    Example: soundsearch eval --dataset my-labels.csv --model mymodel --plot fig3.png
    """
    # Over 60 lines on purpose: typer declares its 16 options as parameters (~35 lines); the body
    # calls evaluate.protocol.evaluate with _EvalProgress and renders or plots its report.
    from soundsearch.evaluate.plot import plot_report
    from soundsearch.evaluate.protocol import evaluate, parse_ints

    ks = parse_ints(k, "--k")
    ss = parse_ints(thresholds, "--thresholds")
    say = (lambda m: None) if quiet else (lambda m: err.print(m, highlight=False))

    with progress(quiet) as bar:
        shows = _EvalProgress(bar)
        report = evaluate(
            dataset_spec=dataset,
            data_dir=data_dir,
            models=model,
            variants=variants,
            ks=ks,
            thresholds=ss,
            seed=seed,
            jobs=jobs,
            download=download,
            featurizer=featurizer.value if featurizer is not None else None,
            variant_epochs=epochs,
            store_dir=store,
            mode=mode,
            on_status=say,
            on_progress=shows.on_progress,
            on_download=shows.on_download,
        )

    if plot is not None:
        written = plot_report(report, plot)
        say(f"plot written to {written}")
    if as_json:
        out.print_json(json.dumps(report.to_json()))
        return
    render(report)


class _EvalProgress:
    """evaluate's download and featurize progress on one bar task (none when quiet)."""

    def __init__(self, bar):
        self.bar = bar
        self.task = None

    def on_progress(self, p) -> None:
        if self.bar is None or getattr(p, "phase", None) != "featurize" or not p.total:
            return
        if self.task is None:
            self.task = self.bar.add_task("features", total=p.total)
        self.bar.update(self.task, completed=p.done, total=p.total)

    def on_download(self, name: str, done: int, total: int) -> None:
        if self.bar is None:
            return
        if self.task is None:
            self.task = self.bar.add_task(f"download {name}", total=max(total, 0) or None)
        self.bar.update(self.task, description=f"download {name}", completed=done, total=max(total, 0) or None)


def render(report) -> None:
    import numpy as np
    from rich.table import Table

    from soundsearch.evaluate.report import GROUP_TITLES

    out.print(
        f"[bold]{report.dataset.get('name', '')}[/]: {report.database_size} database recordings, "
        + ", ".join(f"{len(report.groups[g])} {g}" for g in report.groups)
        + " queries",
        highlight=False,
    )
    for g in report.nonempty_groups():
        for s in report.thresholds:
            table = Table(title=f"{GROUP_TITLES[g]} ({len(report.groups[g])}): mAP_{s}@K", title_justify="left")
            table.add_column("system")
            for kk in report.ks:
                table.add_column(f"K={kk}", justify="right")
            values = np.array([report.map(sysres, g, s) for sysres in report.systems])
            best = np.nanmax(np.where(np.isnan(values), -1, values), axis=0)
            for sysres, row in zip(report.systems, values):
                cells = []
                for j, v in enumerate(row):
                    text = "-" if np.isnan(v) else f"{v:.3f}"
                    cells.append(f"[bold green]{text}[/]" if not np.isnan(v) and v == best[j] and v > 0 else text)
                table.add_row(sysres.name, *cells)
            out.print(table)
    for note in report.notes:
        err.print(f"note: {note}", highlight=False)
