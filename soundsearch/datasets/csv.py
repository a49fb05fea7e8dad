"""A user's own labels as a CSV file.

Two shapes are accepted (column order never matters):

    path,split,engine,dog,music          path,labels,split
    a.wav,train,1,0,0                    a.wav,engine,train
    b.wav,test,0,1,1                     b.wav,dog;music,test

With 0/1 columns the taxonomy is those columns in file order; with a `labels` column the names
must belong to a known taxonomy (SONYC-UST coarse unless the caller gives another). Paths are
relative to the CSV's folder. `split` is train (the database, and what models train on),
test (the queries) or validate (held apart for choosing epochs; the queries when no row says
test). Without a `split` column a seeded, label-stratified 80/20 split is drawn. Files that do
not exist are skipped and listed in `missing`.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from soundsearch.datasets import Example, LabelledDataset
from soundsearch.errors import DatasetError
from soundsearch.taxonomy import Taxonomy

RESERVED = {"path", "split", "labels"}
SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "test": "test",
    "testing": "test",
    "validate": "validate",
    "validation": "validate",
    "valid": "validate",
    "val": "validate",
}
TEST_FRACTION = 0.2
_MAX_LISTED = 10


def load(path: Path, seed: int = 0, taxonomy: Taxonomy | None = None) -> LabelledDataset:
    path = Path(path).expanduser()
    if not path.is_file():
        raise DatasetError(f"labels CSV not found: {path}")
    root = path.parent.absolute()
    rows, header = _read(path)
    cols, category_cols = _columns(path, header)
    has_labels = "labels" in cols
    labels, tax, declared = _labels(path, rows, cols, category_cols, taxonomy)
    paths = _paths(path, rows, cols["path"], root)
    splits, split_source = _splits(path, rows, cols, labels, seed)
    missing, keep = _existing(path, paths, root)

    empty = [c for c, n in zip(tax, labels[keep].sum(0).tolist()) if n == 0]
    # A column of zeros the file itself declares is a mistake; a category a given taxonomy (a
    # model's) lacks examples of is only a gap, reported in `info`.
    if declared and taxonomy is None and empty:
        raise DatasetError(
            f"{path}: no recording has category {', '.join(repr(c) for c in empty)} "
            "(a column of only zeros): drop the column or label some recordings"
        )

    train, test, validate = _examples(path, paths, labels, splits, keep)
    info = {
        "source": str(path.absolute()),
        "format": "labels column" if has_labels else "category columns",
        "split": split_source,
        "rows": len(rows),
        "missing": len(missing),
        "missing_listed": [str(p) for p in missing[:_MAX_LISTED]],
        "empty_categories": empty,
    }
    return LabelledDataset(
        name=path.name,
        root=root,
        taxonomy=tax,
        train=train,
        test=test,
        missing=missing,
        info=info,
        validate=validate,
    )


def _columns(path: Path, header: list[str]) -> tuple[dict[str, str], list[str]]:
    """The header's reserved columns (lower-cased name -> as written) and its category columns;
    raises unless it has a path column and exactly one of the two label shapes."""
    cols = {h.strip().lower(): h for h in header}
    if "path" not in cols:
        raise DatasetError(f"{path}: no 'path' column (columns: {', '.join(header)})")
    has_labels = "labels" in cols
    category_cols = [h for h in header if h.strip().lower() not in RESERVED]
    if has_labels and category_cols:
        raise DatasetError(
            f"{path}: give either a 'labels' column or one 0/1 column per category, not both "
            f"(extra columns: {', '.join(category_cols)})"
        )
    if not has_labels and not category_cols:
        raise DatasetError(
            f"{path}: no category columns: add one 0/1 column per category, or a 'labels' column "
            "of ';'-separated category names"
        )
    return cols, category_cols


def _labels(
    path: Path, rows: list[dict], cols: dict[str, str], category_cols: list[str], taxonomy: Taxonomy | None
) -> tuple[np.ndarray, Taxonomy, bool]:
    """The label matrix, its taxonomy, and whether the file declared the categories itself."""
    if "labels" in cols:
        tax = taxonomy or Taxonomy.default()
        return _labels_from_names(path, rows, cols["labels"], tax), tax, False
    tax = Taxonomy(tuple(c.strip() for c in category_cols))
    labels = _labels_from_columns(path, rows, category_cols)
    if taxonomy is not None:
        labels, tax = _conform(path, labels, tax, taxonomy)
    return labels, tax, True


def _paths(path: Path, rows: list[dict], column: str, root: Path) -> list[Path]:
    """Each row's absolute path (relative ones read from `root`); raises on an empty or repeated one."""
    paths: list[Path] = []
    seen: dict[Path, int] = {}
    for i, row in enumerate(rows):
        raw = (row.get(column) or "").strip()
        if not raw:
            raise DatasetError(f"{path}: row {i + 2}: empty path")
        p = Path(raw).expanduser()
        p = (p if p.is_absolute() else root / p).absolute()
        if p in seen:
            raise DatasetError(f"{path}: {raw} is listed twice (rows {seen[p] + 2} and {i + 2})")
        seen[p] = i
        paths.append(p)
    return paths


def _splits(
    path: Path, rows: list[dict], cols: dict[str, str], labels: np.ndarray, seed: int
) -> tuple[list[str], str]:
    """Each row's split (from the split column, else seeded), and where the splits came from."""
    if "split" not in cols:
        splits = _seeded_split(labels, seed)
        return splits, f"seeded {int(round((1 - TEST_FRACTION) * 100))}/{int(round(TEST_FRACTION * 100))} (seed {seed})"
    splits = []
    for i, row in enumerate(rows):
        raw = (row.get(cols["split"]) or "").strip().lower()
        if raw not in SPLIT_ALIASES:
            raise DatasetError(
                f"{path}: row {i + 2}: split {raw!r} is not one of train, test, validate"
            )
        splits.append(SPLIT_ALIASES[raw])
    return splits, "column"


def _existing(path: Path, paths: list[Path], root: Path) -> tuple[list[Path], list[int]]:
    """The listed files that do not exist, and the rows of those that do; raises if none do."""
    missing = [p for p in paths if not p.is_file()]
    missing_set = set(missing)
    keep = [i for i, p in enumerate(paths) if p not in missing_set]
    if not keep:
        listed = ", ".join(str(p) for p in missing[:3])
        raise DatasetError(
            f"{path}: none of the {len(paths)} listed files exist (e.g. {listed}); "
            f"paths are read relative to {root}"
        )
    return missing, keep


def _examples(
    path: Path, paths: list[Path], labels: np.ndarray, splits: list[str], keep: list[int]
) -> tuple[list[Example], list[Example], list[Example]]:
    """The kept rows as train, test and validate examples; raises if train or test is empty."""
    by_split: dict[str, list[Example]] = {"train": [], "test": [], "validate": []}
    for i in keep:
        by_split[splits[i]].append(Example(paths[i], labels[i].astype(np.uint8), splits[i]))
    validate = by_split["validate"]
    test = by_split["test"]
    # With no test rows, validate rows become the queries (SONYC-UST v1 did the same).
    if not test and validate:
        test, validate = validate, []
    if len(by_split["train"]) < 1:
        raise DatasetError(f"{path}: no usable recording in the train split (the database)")
    if len(test) < 1:
        raise DatasetError(f"{path}: no usable recording in the test split (the queries)")
    return by_split["train"], test, validate


def _read(path: Path) -> tuple[list[dict], list[str]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8 text ({exc.reason})") from None
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read: {exc.strerror}") from None
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    reader = csv.DictReader(text.splitlines(), delimiter=delimiter)
    header = [h for h in (reader.fieldnames or [])]
    if not header:
        raise DatasetError(f"{path}: empty file (expected a header line)")
    stripped = [h.strip() for h in header]
    lowered = [h.lower() for h in stripped]
    dupes = sorted({h for h in lowered if lowered.count(h) > 1})
    if dupes:
        raise DatasetError(f"{path}: duplicate column names: {', '.join(dupes)}")
    if any(not h for h in stripped):
        raise DatasetError(f"{path}: a column has an empty name")
    rows = []
    try:
        for row in reader:
            if None in row:
                raise DatasetError(f"{path}: line {reader.line_num}: more fields than the header has")
            if all(not (v or "").strip() for v in row.values()):
                continue  # blank line
            rows.append(row)
    except csv.Error as exc:
        raise DatasetError(f"{path}: line {reader.line_num}: {exc}") from None
    if not rows:
        raise DatasetError(f"{path}: no data rows after the header")
    return rows, header


def _labels_from_columns(path: Path, rows: list[dict], category_cols: list[str]) -> np.ndarray:
    out = np.zeros((len(rows), len(category_cols)), dtype=np.uint8)
    for j, col in enumerate(category_cols):
        for i, row in enumerate(rows):
            raw = (row.get(col) or "").strip()
            if raw in ("1", "1.0", "true", "True", "TRUE"):
                out[i, j] = 1
            elif raw in ("0", "0.0", "false", "False", "FALSE"):
                pass
            else:
                raise DatasetError(
                    f"{path}: row {i + 2}, column {col.strip()!r}: {raw!r} is not 0 or 1 "
                    "(every column other than path, split and labels is read as a category)"
                )
    return out


def _labels_from_names(path: Path, rows: list[dict], col: str, tax: Taxonomy) -> np.ndarray:
    out = np.zeros((len(rows), len(tax)), dtype=np.uint8)
    unknown: dict[str, int] = {}
    for i, row in enumerate(rows):
        for name in (row.get(col) or "").split(";"):
            name = name.strip()
            if not name:
                continue
            if name in tax:
                out[i, tax.index(name)] = 1
            else:
                unknown.setdefault(name, i + 2)
    if unknown:
        listed = ", ".join(f"{n!r} (row {r})" for n, r in list(unknown.items())[:_MAX_LISTED])
        raise DatasetError(
            f"{path}: unknown category names in 'labels': {listed}; known: {', '.join(tax)}. "
            "For categories of your own, give one 0/1 column per category instead"
        )
    return out


def _conform(path: Path, labels: np.ndarray, have: Taxonomy, want: Taxonomy):
    if set(have) != set(want):
        extra = sorted(set(have) - set(want))
        lacking = sorted(set(want) - set(have))
        raise DatasetError(
            f"{path}: its categories ({', '.join(have)}) do not match the expected ones ({', '.join(want)})"
            + (f"; not expected: {', '.join(extra)}" if extra else "")
            + (f"; missing: {', '.join(lacking)}" if lacking else "")
        )
    idx = [have.index(c) for c in want]
    return labels[:, idx], want


def _seeded_split(labels: np.ndarray, seed: int) -> list[str]:
    """Every 5th recording of each label combination (in seeded order) becomes a query.

    Stratifying by label set keeps single- and multi-label recordings in both splits.
    """
    n = labels.shape[0]
    rng = np.random.default_rng(seed)
    tie = rng.random(n)
    keys = [bytes(row) for row in labels.astype(np.uint8)]
    order = sorted(range(n), key=lambda i: (keys[i], tie[i]))
    period = int(round(1 / TEST_FRACTION))
    offset = int(rng.integers(period))
    out = ["train"] * n
    for pos, i in enumerate(order):
        if pos % period == offset:
            out[i] = "test"
    if n >= 2 and "test" not in out:
        out[order[-1]] = "test"
    if n >= 2 and "train" not in out:
        out[order[0]] = "train"
    return out
