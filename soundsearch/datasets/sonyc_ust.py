"""SONYC-UST (urban sound tagging) from its official release layout.

`annotations.csv` holds one row per (recording, annotator); coarse labels are the columns
`1_engine_presence` ... `8_dog_presence` with values 1, 0 or -1 (not labelled). Labels are
aggregated as the official baselines do: for the train split a category is present when any
crowd volunteer (annotator_id > 0) marked it; for validate and test the verified ground truth
(annotator_id == 0) is used where it exists. The paper's protocol takes train as the database
and test (validate in v1, which had no labelled test split) as the queries.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np

from soundsearch.datasets import Example, LabelledDataset
from soundsearch.errors import DatasetError
from soundsearch.taxonomy import Taxonomy

ZENODO_RECORD = "3966543"
ANNOTATIONS = "annotations.csv"
ANNOTATIONS_MD5 = "70b507b15bb4cfcce4870925302f276b"
AUDIO_ARCHIVES = tuple(f"audio-{i}.tar.gz" for i in range(19))
_COARSE = re.compile(r"^(\d+)_([a-z-]+)_presence$")
_AUDIO_DIRS = re.compile(r"^(audio(-\d+)?|train|validate|test)$")


def missing_message(root: Path) -> str:
    return (
        f"SONYC-UST not found in {root}: it needs {ANNOTATIONS} and the audio folders there. "
        f"Download {ANNOTATIONS} and {AUDIO_ARCHIVES[0]} ... {AUDIO_ARCHIVES[-1]} from "
        f"https://zenodo.org/records/{ZENODO_RECORD} (SONYC-UST v2.3, CC BY 4.0), put them in "
        f"{root} and unpack the archives there (giving audio-0/ ... audio-18/ or audio/), "
        f"or run the same command with --download to have soundsearch do it"
    )


def load(root: Path) -> LabelledDataset:
    root = Path(root).expanduser().absolute()
    ann = root / ANNOTATIONS
    if not ann.is_file():
        raise DatasetError(missing_message(root))
    rows, coarse = _read_annotations(ann)
    tax = Taxonomy(tuple(name for _, name in coarse))
    recs = _recordings(ann, rows, [col for col, _ in coarse])
    audio = _find_audio(root)
    by_split, missing, sources = _examples(recs, audio, root)

    if not audio:
        raise DatasetError(
            f"SONYC-UST in {root} has {ANNOTATIONS} but no audio: expected the recordings in "
            "audio/ or audio-0/ ... audio-18/ (v2.3) or train/ and validate/ (v1). "
            + missing_message(root)
        )
    test_split = "test" if by_split["test"] else "validate"
    train, test = by_split["train"], by_split[test_split]
    validate = by_split["validate"] if test_split == "test" else []
    if not train:
        raise DatasetError(f"SONYC-UST in {root}: no train recordings with audio found")
    if not test:
        raise DatasetError(f"SONYC-UST in {root}: no test or validate recordings with audio found")
    version = "v2" if any(r["split"] == "test" for r in recs.values()) else "v1"
    info = {
        "source": str(ann),
        "version": version,
        "query_split": test_split,
        "recordings": len(recs),
        "missing": len(missing),
        "missing_listed": [str(p) for p in missing[:10]],
        "label_sources": sources,
    }
    return LabelledDataset(
        name="sonyc-ust",
        root=root,
        taxonomy=tax,
        train=train,
        test=test,
        missing=missing,
        info=info,
        validate=validate,
    )


def _recordings(ann: Path, rows: list[dict], cols: list[str]) -> dict[str, dict]:
    """recording -> its split and the label rows of each annotator kind (crowd, verified, team)."""
    recs: dict[str, dict] = {}
    for i, row in enumerate(rows):
        fname = (row.get("audio_filename") or "").strip()
        split = (row.get("split") or "").strip().lower()
        if not fname:
            raise DatasetError(f"{ann}: line {i + 2}: empty audio_filename")
        if split not in ("train", "validate", "test"):
            raise DatasetError(f"{ann}: line {i + 2}: unknown split {split!r}")
        try:
            annotator = int(float((row.get("annotator_id") or "").strip()))
        except ValueError:
            raise DatasetError(f"{ann}: line {i + 2}: annotator_id {row.get('annotator_id')!r} is not a number") from None
        vals = _row_values(ann, i, row, cols)
        rec = recs.setdefault(fname, {"split": split, "crowd": [], "verified": [], "team": []})
        if rec["split"] != split:
            raise DatasetError(f"{ann}: {fname} appears in both the {rec['split']} and {split} splits")
        kind = "verified" if annotator == 0 else ("crowd" if annotator > 0 else "team")
        rec[kind].append(vals)
    return recs


def _row_values(ann: Path, i: int, row: dict, cols: list[str]) -> np.ndarray:
    """One annotation row's coarse labels, each 1, 0 or -1 (an empty cell is -1, not labelled)."""
    vals = np.empty(len(cols), dtype=np.int8)
    for j, col in enumerate(cols):
        raw = (row.get(col) or "").strip()
        try:
            v = int(float(raw)) if raw else -1
        except ValueError:
            raise DatasetError(f"{ann}: line {i + 2}, column {col}: {raw!r} is not 1, 0 or -1") from None
        if v not in (1, 0, -1):
            raise DatasetError(f"{ann}: line {i + 2}, column {col}: {raw!r} is not 1, 0 or -1")
        vals[j] = v
    return vals


def _examples(
    recs: dict[str, dict], audio: dict[str, Path], root: Path
) -> tuple[dict[str, list[Example]], list[Path], dict[str, int]]:
    """The recordings with audio as examples per split, those without audio, and how many
    recordings took their labels from each source."""
    sources = {"crowd-any": 0, "verified": 0, "team-any": 0}
    by_split: dict[str, list[Example]] = {"train": [], "validate": [], "test": []}
    missing: list[Path] = []
    for fname in sorted(recs):
        rec = recs[fname]
        labels, source = _aggregate(rec)
        sources[source] += 1
        path = audio.get(fname)
        if path is None:
            missing.append(root / "audio" / fname)
            continue
        by_split[rec["split"]].append(Example(path, labels, rec["split"]))
    return by_split, missing, sources


def _aggregate(rec: dict) -> tuple[np.ndarray, str]:
    """Official-baseline aggregation; falls back when the preferred annotator kind is absent."""
    if rec["split"] == "train":
        order = ("crowd", "verified", "team")
    else:
        order = ("verified", "crowd", "team")
    for kind in order:
        if not rec[kind]:
            continue
        stack = np.stack(rec[kind])
        if kind == "verified":
            # One verified row per recording; should there be several, a category counts if
            # any marks it, like the crowd rule.
            return (stack == 1).any(0).astype(np.uint8), "verified"
        return (stack == 1).any(0).astype(np.uint8), "crowd-any" if kind == "crowd" else "team-any"
    raise AssertionError("a recording always has at least one annotation row")


def _read_annotations(ann: Path) -> tuple[list[dict], list[tuple[str, str]]]:
    try:
        with ann.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = list(reader.fieldnames or [])
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"{ann}: cannot read: {exc}") from None
    need = {"split", "audio_filename", "annotator_id"}
    lacking = sorted(need - set(header))
    if lacking:
        raise DatasetError(f"{ann}: not a SONYC-UST annotations file: no column {', '.join(lacking)}")
    coarse = []
    for h in header:
        m = _COARSE.match(h.strip())
        if m:
            coarse.append((int(m.group(1)), h, m.group(2)))
    if not coarse:
        raise DatasetError(f"{ann}: no coarse label columns (like 1_engine_presence)")
    coarse.sort()
    if not rows:
        raise DatasetError(f"{ann}: no annotation rows")
    return rows, [(h, name) for _, h, name in coarse]


def _find_audio(root: Path) -> dict[str, Path]:
    """audio_filename -> file, from audio/, audio-N/ (v2.3) or train/, validate/ (v1)."""
    found: dict[str, Path] = {}
    try:
        subdirs = sorted(p for p in root.iterdir() if p.is_dir() and _AUDIO_DIRS.match(p.name))
    except OSError as exc:
        raise DatasetError(f"cannot list {root}: {exc.strerror}") from None
    for d in subdirs:
        for p in sorted(d.rglob("*")):
            if p.is_file() and not p.name.startswith("."):
                found.setdefault(p.name, p.absolute())
    return found
