"""Fetch SONYC-UST from Zenodo: resumable downloads, md5 checks, safe unpacking.

A download goes to `<name>.part` and is resumed with an HTTP Range request when that file
exists, so an interrupted 1 GB archive does not start over. Checksums come from the Zenodo
record's metadata (the annotations file's is also pinned here, so a changed record is noticed).
Each archive is unpacked into its own folder (audio-N/) and then removed; a marker file records
that it was unpacked, so a second run skips it.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import tarfile
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from soundsearch.errors import DownloadError

ZENODO_URL = "https://zenodo.org"
BASE_URL_ENV = "SOUNDSEARCH_ZENODO_URL"
_CHUNK = 1 << 20
_TIMEOUT = 60

Progress = Callable[[str, int, int], None]


@dataclass
class DownloadReport:
    root: Path
    fetched: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    unpacked: list[str] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)


def base_url(override: str | None = None) -> str:
    return (override or os.environ.get(BASE_URL_ENV) or ZENODO_URL).rstrip("/")


def record_files(record: str, base: str | None = None) -> dict[str, str]:
    """name -> md5 of every file of a Zenodo record, from its API metadata."""
    url = f"{base_url(base)}/api/records/{record}"
    try:
        with urllib.request.urlopen(url, timeout=_TIMEOUT) as resp:
            meta = json.loads(resp.read().decode("utf-8"))
    except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as exc:
        raise DownloadError(f"cannot read the file list of Zenodo record {record} from {url}: {_reason(exc)}") from None
    entries = meta.get("files")
    if isinstance(entries, dict):  # newer API: {"entries": {name: {...}}}
        entries = list((entries.get("entries") or {}).values())
    out: dict[str, str] = {}
    for f in entries or []:
        name = f.get("key") or f.get("filename")
        checksum = str(f.get("checksum") or "")
        if name and checksum.startswith("md5:"):
            out[name] = checksum[4:]
    if not out:
        raise DownloadError(f"Zenodo record {record} at {url} lists no files with md5 checksums")
    return out


def download_sonyc_ust(
    root: Path,
    *,
    base: str | None = None,
    archives: list[str] | None = None,
    on_progress: Progress | None = None,
    keep_archives: bool = False,
    pinned_annotations_md5: str | None = None,
) -> DownloadReport:
    """Download and unpack SONYC-UST v2.3 into `root` (resuming whatever is half done).

    `pinned_annotations_md5` defaults to the v2.3 release's; a record listing another
    annotations file is refused rather than silently mixed with older audio.
    """
    from soundsearch.datasets.sonyc_ust import ANNOTATIONS, ANNOTATIONS_MD5, AUDIO_ARCHIVES, ZENODO_RECORD

    pinned = pinned_annotations_md5 or ANNOTATIONS_MD5

    root = Path(root).expanduser().absolute()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(f"cannot create {root}: {exc.strerror}") from None
    listing = record_files(ZENODO_RECORD, base)
    if listing.get(ANNOTATIONS, pinned) != pinned:
        raise DownloadError(
            f"Zenodo record {ZENODO_RECORD} now lists {ANNOTATIONS} with md5 {listing[ANNOTATIONS]}, "
            f"not the SONYC-UST v2.3 file ({pinned}) soundsearch knows"
        )
    wanted = list(archives) if archives is not None else [a for a in AUDIO_ARCHIVES if a in listing]
    if not wanted:
        raise DownloadError(f"Zenodo record {ZENODO_RECORD} lists none of the audio archives {AUDIO_ARCHIVES[0]} ...")
    report = DownloadReport(root)
    url_of = lambda name: f"{base_url(base)}/records/{ZENODO_RECORD}/files/{name}?download=1"  # noqa: E731
    _fetch_annotations(root / ANNOTATIONS, url_of(ANNOTATIONS), pinned, report, on_progress)
    for name in wanted:
        if name not in listing:
            raise DownloadError(f"Zenodo record {ZENODO_RECORD} has no file {name}")
        _fetch_archive(root, name, url_of(name), listing[name], report, on_progress, keep_archives)
    return report


def _fetch_annotations(ann: Path, url: str, md5: str, report: DownloadReport, on_progress: Progress | None) -> None:
    """The annotations file, unless `ann` already holds it."""
    if ann.is_file() and md5sum(ann) == md5:
        report.skipped.append(ann.name)
        return
    resumed = fetch(url, ann, md5=md5, on_progress=on_progress)
    report.fetched.append(ann.name)
    if resumed:
        report.resumed.append(ann.name)


def _fetch_archive(
    root: Path, name: str, url: str, md5: str, report: DownloadReport, on_progress: Progress | None, keep_archives: bool
) -> None:
    """One audio archive fetched (unless already here) and unpacked into root/<its stem>,
    unless its marker says it was unpacked before."""
    marker = root / f".{name}.unpacked"
    if marker.is_file() and marker.read_text().strip() == md5:
        report.skipped.append(name)
        return
    archive = root / name
    if not (archive.is_file() and md5sum(archive) == md5):
        resumed = fetch(url, archive, md5=md5, on_progress=on_progress)
        report.fetched.append(name)
        if resumed:
            report.resumed.append(name)
    unpack(archive, root / name.split(".")[0])
    marker.write_text(md5 + "\n")
    report.unpacked.append(name)
    if not keep_archives:
        archive.unlink()


def fetch(url: str, dest: Path, md5: str | None = None, on_progress: Progress | None = None) -> bool:
    """Download `url` to `dest` via `dest.part`, resuming a partial file; True if it resumed.

    A resumed file whose checksum fails is fetched once more from the start, since the part
    on disk may have come from an older version of the file.
    """
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    resumed = _transfer(url, part, dest.name, on_progress)
    if md5 is not None:
        got = md5sum(part)
        if got != md5 and resumed:
            part.unlink()
            _transfer(url, part, dest.name, on_progress)
            got = md5sum(part)
        if got != md5:
            part.unlink()
            raise DownloadError(
                f"checksum mismatch for {dest.name} from {url}: expected md5 {md5}, got {got}; "
                "the broken download was removed, run the command again"
            )
    os.replace(part, dest)
    return resumed


def _transfer(url: str, part: Path, label: str, on_progress: Progress | None) -> bool:
    """Fetch into `part`; True when it continued a partial file rather than starting over."""
    have = part.stat().st_size if part.is_file() else 0
    req = urllib.request.Request(url, headers={"User-Agent": "soundsearch"})
    if have:
        req.add_header("Range", f"bytes={have}-")
    try:
        resp = urllib.request.urlopen(req, timeout=_TIMEOUT)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:
            return True  # nothing left to fetch: the part is already whole (the checksum decides)
        raise DownloadError(f"download of {url} failed: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        raise DownloadError(f"download of {url} failed: {_reason(exc)}") from None
    with resp:
        if have and resp.status == 206:
            mode, done = "ab", have
        else:
            mode, done = "wb", 0  # the server ignored the Range request: start over
        length = resp.headers.get("Content-Length")
        total = done + int(length) if length and length.isdigit() else -1
        try:
            with part.open(mode) as fh:
                while True:
                    chunk = resp.read(_CHUNK)
                    if not chunk:
                        break
                    fh.write(chunk)
                    done += len(chunk)
                    if on_progress is not None:
                        on_progress(label, done, total)
        except (OSError, urllib.error.URLError, http.client.HTTPException) as exc:
            raise DownloadError(
                f"download of {url} broke off after {done} bytes ({_reason(exc)}); "
                "run the command again to resume"
            ) from None
    if total >= 0 and done < total:
        raise DownloadError(
            f"download of {url} broke off after {done} of {total} bytes; run the command again to resume"
        )
    return mode == "ab"


def unpack(archive: Path, dest: Path) -> None:
    """Extract a tar archive into `dest`, refusing members that would land outside it."""
    tmp = dest.with_name(dest.name + ".unpacking")
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
    except (tarfile.TarError, OSError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DownloadError(f"cannot unpack {archive}: {exc}") from None
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)


def md5sum(path: Path) -> str:
    h = hashlib.md5()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    return str(reason if reason is not None else exc)
