"""Finding sound files: audio extensions, folder scanning, and whether a path can be read at all."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from soundsearch.avdecode import AV_EXTENSIONS
from soundsearch.errors import AudioError


AUDIO_EXTENSIONS: frozenset[str] = frozenset(
    {
        ".wav", ".wave", ".bwf", ".rf64", ".w64",
        ".flac",
        ".ogg", ".oga", ".opus",
        ".aif", ".aiff", ".aifc",
        ".mp3",
        ".au", ".snd", ".caf",
    }
) | AV_EXTENSIONS  # read through PyAV when installed, else named as needing it
PathLike = str | bytes | os.PathLike


def as_path(path: PathLike) -> Path:
    """A Path for any str/bytes/PathLike; undecodable bytes survive via surrogateescape."""
    return Path(os.fsdecode(path))


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    return "not a regular file"


def not_regular_reason(path: PathLike) -> str | None:
    """Why `path` cannot be read as a sound file (None when it is a readable regular file).

    Only regular files are opened: a named pipe or a character device would block the open or
    the read forever (`mkfifo f.wav` hung query), and a device has no size to check a decode
    against. A folder the user cannot enter is "permission denied", not "no such file".
    """
    bpath = os.fsencode(path)
    try:
        st = os.stat(bpath)
    except FileNotFoundError:
        return "no such file (or a broken link)"
    except PermissionError:
        return "permission denied (on the file or a folder above it)"
    except OSError as e:
        return f"cannot read: {e.strerror or e}"
    if stat.S_ISDIR(st.st_mode):
        return "is a directory, not an audio file"
    if not stat.S_ISREG(st.st_mode):
        return f"is {_kind(st.st_mode)}, not a regular file: only regular files are read"
    return None


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def has_audio_extension(path: PathLike) -> bool:
    return os.path.splitext(os.fsdecode(path))[1].lower() in AUDIO_EXTENSIONS


def scan(
    paths: Iterable[PathLike],
    on_skip: Callable[[Path, str], None] | None = None,
    dirs: set[str] | None = None,
) -> Iterator[Path]:
    """Audio files under `paths`, recursively: each real file once, by its resolved real path
    (symlinks resolved, see README "File identity"), sorted.

    A file reachable through a symlinked folder and by its own path is one file with one name,
    whichever way the scan met it first; otherwise a refresh that met it the other way reported
    it "removed" while it existed. `dirs`, if given, receives the real path of every folder
    listed, so a caller can tell which catalogued files the scan could have seen.

    Hidden entries and files without an audio extension are skipped silently; directory symlink
    loops and broken links are survived. Folders that cannot be listed and entries with an audio
    extension that are not regular files (pipes, devices) are skipped too, but handed to
    `on_skip(path, reason)` so the caller can name them. A file named explicitly is yielded if it
    has an audio extension. A path that does not exist raises AudioError.
    """
    skip = on_skip or (lambda _p, _r: None)
    roots = [Path(os.path.abspath(os.fsdecode(p))) for p in paths]
    for r in roots:
        if not os.path.lexists(r) or (os.path.islink(r) and not os.path.exists(r)):
            raise AudioError(r, "no such file or directory")

    found: list[tuple[str, tuple[int, int]]] = []
    stack: list[str] = []
    for r in roots:
        try:
            st = os.stat(r)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode):
            stack.append(str(r))
        elif stat.S_ISREG(st.st_mode) and has_audio_extension(r):
            found.append((os.path.realpath(r), (st.st_dev, st.st_ino)))
        elif has_audio_extension(r):
            skip(r, f"is {_kind(st.st_mode)}, not a regular file: only regular files are read")

    _walk(stack, found, skip, dirs)

    found.sort(key=lambda t: t[0])
    seen_files: set[tuple[int, int]] = set()
    for p, key in found:
        if key in seen_files:
            continue
        seen_files.add(key)
        yield Path(p)


def _walk(
    stack: list[str], found: list[tuple[str, tuple[int, int]]], skip: Callable[[Path, str], None], dirs: set[str] | None
) -> None:
    """Add (real path, (dev, inode)) of the audio files under the folders of `stack` to `found`."""
    seen_dirs: set[tuple[int, int]] = set()
    while stack:
        d = stack.pop()
        try:
            dst = os.stat(d)
        except OSError:
            continue
        key = (dst.st_dev, dst.st_ino)
        if key in seen_dirs:
            continue  # symlink loop, or the same folder reached twice
        seen_dirs.add(key)
        real_d = os.path.realpath(d)
        if dirs is not None:
            dirs.add(real_d)
        try:
            with os.scandir(d) as it:
                entries = list(it)
        except OSError as exc:
            skip(Path(d), f"folder not readable ({exc.strerror or exc}): its files were not indexed")
            continue
        for e in entries:
            if _is_hidden(e.name):
                continue
            try:
                if e.is_dir():
                    stack.append(e.path)
                elif has_audio_extension(e.name):
                    if e.is_file():
                        est = e.stat()
                        # One realpath per folder, not per file: only a linked file needs its own.
                        real = os.path.realpath(e.path) if e.is_symlink() else os.path.join(real_d, e.name)
                        found.append((real, (est.st_dev, est.st_ino)))
                    elif os.path.lexists(e.path) and os.path.exists(e.path):
                        mode = os.stat(e.path).st_mode
                        skip(Path(e.path), f"is {_kind(mode)}, not a regular file: only regular files are read")
            except OSError:
                continue  # vanished or unreadable mid-scan
