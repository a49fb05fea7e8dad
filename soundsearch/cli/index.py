"""`soundsearch index` and `soundsearch status`: build the feature store and describe it."""

from __future__ import annotations

import json
from contextlib import ExitStack
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.markup import escape

from soundsearch.cli._common import (
    SHOW, JobsOption, JsonOption, ParamOption, QuietOption, StoreOption, err, featurizer_option, out, parse_params,
    print_some, progress, shown, waiting,
)
from soundsearch.errors import printable
from soundsearch.constants import COMPACT_CACHE_MIN_ITEMS, PREFILTER_MIN_ITEMS

if TYPE_CHECKING:
    from soundsearch.indexing import IndexProgress


class Backend(str, Enum):
    loky = "loky"
    dask = "dask"


NewStoreFeaturizerOption = featurizer_option("Featurizer for a new store (default logmel); an existing store keeps its own.")


def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _human_duration(seconds: float) -> str:
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    if h:
        return f"{h} h {m:02d} min"
    if m:
        return f"{m} min {s:02d} s"
    return f"{seconds:.1f} s"


def _finer(stats) -> str:
    """How a store's long recordings are cut beyond consecutive windows, for `status`."""
    parts = []
    if stats.item_hop is not None and stats.item_hop < stats.item_seconds - 1e-9:
        parts.append(f"one every {stats.item_hop:g} s")
    if stats.event_items:
        parts.append(f"up to {stats.event_items} event items a minute")
    return ", " + ", ".join(parts) if parts else ""


def index(
    paths: Annotated[
        Optional[list[Path]],
        typer.Argument(
            metavar="PATH",
            help="Audio files or folders (searched recursively). Without any, every folder the store has indexed is refreshed.",
            show_default=False,
        ),
    ] = None,
    store: StoreOption = None,
    featurizer: NewStoreFeaturizerOption = None,
    param: ParamOption = None,
    jobs: JobsOption = None,
    item_seconds: Annotated[
        Optional[float],
        typer.Option("--item-seconds", min=0.1, metavar="SECONDS", help="Item length for a new store: longer recordings are cut into items this long. Default 10.", show_default=False),
    ] = None,
    item_hop: Annotated[
        Optional[float],
        typer.Option(
            "--item-hop", min=0.1, metavar="SECONDS",
            help="For a new store: start a window every SECONDS in long recordings (overlapping items, found moments). "
            "Default half the item length; equal to --item-seconds: consecutive windows, as stores made before it.",
            show_default=False,
        ),
    ] = None,
    event_items: Annotated[
        Optional[int],
        typer.Option(
            "--event-items", min=0, metavar="N",
            help="For a new store: up to N short items a minute of a long recording, each starting at a detected sound event. Default 6; 0: none.",
            show_default=False,
        ),
    ] = None,
    quiet: QuietOption = False,
    strict: Annotated[bool, typer.Option("--strict", help="Exit with code 1 if any file could not be indexed.")] = False,
    wait: Annotated[bool, typer.Option("--wait", help="If another process is indexing into the store, wait for it instead of failing.")] = False,
    json_out: JsonOption = False,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, hidden=True, metavar="N", help="Files per store commit.")] = 64,
    verify: Annotated[bool, typer.Option("--verify", help="Check every stored item against its checksum and re-index the files of damaged ones.")] = False,
    backend: Annotated[
        Backend,
        typer.Option(
            "--backend", metavar="loky|dask",
            help="Where features are computed: loky, worker processes on this machine; dask, the workers of the "
            "dask cluster at --scheduler (needs soundsearch[dask]). The store is written here either way.",
        ),
    ] = Backend.loky,
    scheduler: Annotated[
        Optional[str],
        typer.Option("--scheduler", metavar="ADDRESS", help="The dask scheduler for --backend dask, e.g. tcp://10.0.0.5:8786.", show_default=False),
    ] = None,
) -> None:
    """Add audio files to the feature store, or bring it up to date.

    Only new and changed files are decoded; unchanged ones are recognised by size and
    modification time, and files deleted from an indexed folder leave the store. Files that
    cannot be read are listed and skipped (the run still succeeds unless --strict).

    Example:  soundsearch index ~/Sounds/Foley ~/Sounds/Ambiences --jobs 4
    """
    # Over 60 lines on purpose: typer declares its 16 options as parameters (~40 lines); the body
    # calls indexing.index_paths with _IndexProgress and prints its report.
    from soundsearch.indexing import IndexInterrupted, index_paths
    from soundsearch.paths import resolve_store_dir

    if (backend is Backend.dask) != (scheduler is not None):
        raise typer.BadParameter(
            "--backend dask needs --scheduler ADDRESS" if scheduler is None else "--scheduler is for --backend dask",
            param_hint="--scheduler",
        )
    store_dir = resolve_store_dir(store)
    params = parse_params(param)
    # Until the first progress event (the store open and locked, the featurizer built: seconds
    # with torch to import) a spinner shows; it vanishes, so an early error (missing path,
    # locked store) is the only thing on stderr. The bar then starts with the scan.
    with ExitStack() as stack:
        shows = _IndexProgress(stack, quiet)
        try:
            report = index_paths(
                store_dir,
                paths or [],
                featurizer_name=featurizer.value if featurizer else None,
                featurizer_params=params or None,
                jobs=jobs,
                item_seconds=item_seconds,
                item_hop=item_hop,
                event_items=event_items,
                on_progress=shows.on_progress,
                wait=wait,
                batch_size=batch_size,
                verify=verify,
                scheduler=scheduler,
            )
        except IndexInterrupted as stop:
            stack.close()  # end the progress bar before the message
            err.print(f"interrupted; {stop.kept} files kept, run index again to resume", highlight=False, soft_wrap=True)
            raise typer.Exit(130) from None
    if json_out:
        typer.echo(json.dumps(report.to_json(), allow_nan=False))
    elif not quiet:
        _summary(report)
    failing = len(report.failed) + len(report.still_failed)
    if strict and failing:
        err.print(f"[bold red]error:[/] {failing} file(s) could not be indexed (--strict)", highlight=False, soft_wrap=True)
        raise typer.Exit(1)


class _IndexProgress:
    """index_paths's progress as the spinner, then the bar (both on `stack`, closed with it)."""

    def __init__(self, stack: ExitStack, quiet: bool):
        self.stack, self.quiet = stack, quiet
        self.opening = stack.enter_context(waiting(quiet, "opening the store"))
        self.bar = None
        self.task = None

    def on_progress(self, p: "IndexProgress") -> None:
        if self.quiet:
            return
        if self.bar is None:
            self.opening.stop()
            self.bar = self.stack.enter_context(progress(False, *_rate_columns()))
            self.task = self.bar.add_task("scanning", total=None, audio=0.0, rate=False)
        bar, task = self.bar, self.task
        if p.phase == "featurize":
            if p.done == 0 and p.total == 0:
                bar.update(task, total=1, completed=1, description="up to date")
            elif p.done == 0:
                # Workers load the featurizer before the first file is done: seconds at 0.
                bar.reset(task, total=p.total, description="starting", audio=0.0, rate=True)
            else:
                bar.update(task, completed=p.done, audio=p.audio_seconds, description="indexing")
        elif p.phase == "compact":
            bar.update(task, description="compacting")


def _rate_columns() -> list:
    from rich.progress import ProgressColumn
    from rich.table import Column
    from rich.text import Text

    class Rate(ProgressColumn):
        """Files per second, and audio seconds per wall second: "42× real time"."""

        def __init__(self) -> None:
            # Room for "99 files/s 99× real time", so the column does not jitter as it grows.
            super().__init__(table_column=Column(no_wrap=True, min_width=len("99 files/s 99× real time")))

        def render(self, task) -> Text:
            elapsed = task.elapsed or 0.0
            if elapsed <= 0 or not task.completed or not task.fields.get("rate"):
                return Text("")
            return Text(f"{_rate(task.completed / elapsed)} files/s {_rate(task.fields.get('audio', 0.0) / elapsed)}× real time",
                        style="cyan", no_wrap=True, overflow="ellipsis")

    return [Rate()]


def _rate(x: float) -> str:
    """Two significant figures, more only above 100 (0.42, 4.2, 42, 420): a rate that changes
    with every file needs no more, and the 80-column line has no room for them."""
    return f"{x:.2f}" if x < 1 else f"{x:.1f}" if x < 10 else f"{x:.0f}"


def _count(n: int, what: str) -> str:
    return f"{n} {what}" if n == 1 else f"{n} {what}s"


def _summary(report) -> None:
    from soundsearch.avdecode import INSTALL, INSTALL_HINT

    parts = [
        f"{report.added} added",
        f"{report.updated} updated",
        f"{report.unchanged} unchanged",
        f"{len(report.removed)} removed",
        f"{len(report.failed)} failed",
        _count(len(report.warnings), "warning"),
    ]
    if report.skipped:
        parts.append(f"{len(report.skipped)} skipped")
    err.print(
        f"{shown(report.store)}: " + ", ".join(parts)
        + f" ({report.items_added} items, {_human_duration(report.audio_seconds)} of audio in {report.seconds:.1f} s)"
        + (f"; {_count(report.prints, 'long recording')} with a sound print (queries find their sound inside)"
           if report.prints else ""),
        highlight=False,
        soft_wrap=True,
    )
    # Formats only FFmpeg decodes carry the install hint in their reason: said once, after the
    # list, rather than on every .m4a of a library.
    suffix = f"; {INSTALL_HINT}"
    need_av = 0

    def why(reason: str) -> str:
        nonlocal need_av
        if reason.endswith(suffix):
            need_av += 1
            reason = reason[: -len(suffix)]
        return escape(reason)

    # One line per file, labelled, so each can be grepped; each kind shows its first SHOW.
    for label, entries in (("failed", report.failed), ("warning", report.warnings), ("skipped", report.skipped)):
        print_some(err, [f"  [yellow]{label}:[/] {shown(p)}: {why(reason)}" for p, reason in entries], f" {label} (--json lists all)")
    for label, paths in (
        ("removed", report.removed),
        ("library folder missing, skipped", report.missing_roots),
        ("damaged features, re-indexed", report.repaired),
    ):
        print_some(err, [f"  {label}: {shown(p)}" for p in paths], f" {label} (--json lists all)")
    if need_av:
        err.print(
            f"{_count(need_av, 'file')} in formats only FFmpeg decodes: {escape(INSTALL)}, then index again",
            highlight=False, soft_wrap=True,
        )
    if report.still_failed:
        err.print(
            f"{len(report.still_failed)} file(s) failed in an earlier run and are unchanged, so were not retried "
            "(soundsearch status lists them)",
            highlight=False,
            soft_wrap=True,
        )


def status(
    store: StoreOption = None,
    json_out: JsonOption = False,
    verify: Annotated[bool, typer.Option("--verify", help="Also read every stored item and check it against its checksum.")] = False,
) -> None:
    """Describe the feature store: featurizer, files, items, audio duration, failures, size.

    The catalog is always checked against the feature array (present, of the right size);
    with --verify every item's features are checked against their checksum too. A damaged
    store is described, then reported on stderr with exit code 1.

    Example:  soundsearch status --json
    """
    from soundsearch.paths import resolve_store_dir
    from soundsearch.store import Store

    with Store.open(resolve_store_dir(store)) as st:
        stats = st.stats()
        failures = st.failures()
        problems = st.verify()
        if verify:
            bad, unverified = st.check_checksums()
            if bad:
                first = sorted(bad)[0]
                problems.append(
                    f"{sum(bad.values())} items of {len(bad)} files fail their checksum "
                    f"(first: {printable(first)})"
                )
    if json_out:
        checks = {"damaged_files": [printable(p) for p in sorted(bad)], "unverified_items": unverified} if verify else {}
        typer.echo(json.dumps(_status_json(stats, failures, problems, checks), allow_nan=False))
    else:
        _status_table(stats, failures, unverified if verify else 0)
    _damaged(stats.path, problems)


def _status_json(stats, failures: list, problems: list[str], checks: dict) -> dict:
    """`status --json`: the store's figures, its failed files and problems, and with --verify
    the damaged files and the items stored before checksums."""
    doc = stats.to_json()
    doc["failed_files"] = [
        {"path": printable(p), "reason": r} for p, r in failures
    ]
    doc["problems"] = problems
    doc["prefilter_min_items"] = PREFILTER_MIN_ITEMS
    doc["prefilter"] = stats.items >= PREFILTER_MIN_ITEMS
    doc["compact_cache_min_items"] = COMPACT_CACHE_MIN_ITEMS
    from soundsearch.search.cache import default_cache_dtype  # numpy: not for --help

    doc["cache_dtype"] = default_cache_dtype(stats.items)
    doc.update(checks)
    return doc


def _status_table(stats, failures: list, unverified: int) -> None:
    """`status`: one labelled line per figure, then the failed files."""
    from soundsearch.search.cache import default_cache_dtype  # numpy: not for --help

    rows = [
        ("store", shown(stats.path)),
        ("featurizer", f"{escape(stats.featurizer_name)}  [dim]{escape(stats.featurizer_identity)}[/]"),
        ("files", f"{stats.files}"),
        ("items", f"{stats.items} (items of up to {stats.item_seconds:g} s{_finer(stats)})"),
        ("audio", _human_duration(stats.duration)),
        ("failures", f"{stats.failures}"),
        ("on disk", _human_bytes(stats.bytes_on_disk)),
        ("prefilter", ("on" if stats.items >= PREFILTER_MIN_ITEMS else "off")
         + f" (stores of {PREFILTER_MIN_ITEMS:,} items or more score only the prefilter's candidates)"),
        ("cache", default_cache_dtype(stats.items)
         + f" (stores of {COMPACT_CACHE_MIN_ITEMS:,} items or more keep the search cache in 16 bits)"),
    ]
    # A dataset cache names thousands of files as its roots: show a few, count the rest.
    for i, root in enumerate(stats.roots[:SHOW]):
        rows.append(("libraries" if i == 0 else "", shown(root)))
    if len(stats.roots) > SHOW:
        rows.append(("", f"... and {len(stats.roots) - SHOW} more"))
    for key, value in rows:
        out.print(f"[bold]{key:<11}[/]{value}", highlight=False, soft_wrap=True)
    if failures:
        out.print("[yellow]failed files:[/]", highlight=False, soft_wrap=True)
        print_some(out, [f"  {shown(p)}: {escape(reason)}" for p, reason in failures], " (--json lists all)")
    if unverified:
        out.print(f"{unverified} items stored before checksums existed: `soundsearch index --verify` records them", highlight=False, soft_wrap=True)


def _damaged(path: Path, problems: list[str]) -> None:
    from soundsearch.errors import StoreError

    if problems:
        raise StoreError(
            f"the store at {printable(path)} is damaged: {'; '.join(problems)}: "
            "run `soundsearch index --verify` to re-index damaged items, or move the store folder away and index again"
        )
