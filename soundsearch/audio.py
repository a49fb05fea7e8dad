"""Reading sound files: probe, decode to mono float32 at a target rate, scan folders, cut items.

Decoding is soundfile (libsndfile: wav, flac, ogg/vorbis/opus, aiff, mp3, ...), resampling is
soxr. Long files: everything reads in blocks of BLOCK_SECONDS (30 s) streamed through the
resampler, so a recording never sits in memory at its native rate and channel count. `load`
holds the mono result (4 bytes a sample at the target rate: ~320 MB for an hour at 22050 Hz)
plus one block; `iter_items`, which `features.featurize_file` uses, holds about one item at a
time (an hour of 44.1 kHz stereo WAV featurizes in ~90 MB above the interpreter's baseline).

Item rule (`split_items`, `iter_items`): a recording is cut into consecutive windows of
`item_seconds`. A trailing remainder of at least `min_last_seconds` becomes an item of its own;
a shorter remainder is merged into the window before it (so no audio is dropped and no item is a
sliver). A recording no longer than `item_seconds` (even one sample long) is a single item.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from soundsearch.avdecode import AV_EXTENSIONS
from soundsearch.errors import AudioError, AudioWarning

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

# Below -100 dBFS a file holds no usable sound (a 16-bit LSB is about -90 dBFS).
SILENCE_PEAK = 1e-5
# Above +80 dBFS a float file is damaged or mis-scaled, not loud: refused by name rather than
# normalised, because its features (log-mel of a 1e25 signal) lie far outside anything the model
# saw, so it ranked nothing and every result "passed no filters". A hot but real float file
# (peaks of a few times full scale) stays well inside this.
MAX_PEAK = 1e4
# Header rates below this are damage (a WAV claiming 1 Hz made 44 KB into 6.1 hours); the
# lowest rate in real use is 8000 Hz.
MIN_SAMPLERATE = 1000
# MPEG audio carries 8 to 320 kbit/s (448 for layer I/II). A decode that implies far more
# (little audio from many bytes: another format, e.g. AAC, named .mp3 yields a few stray frames)
# or far less (more audio than the bytes can hold) is not the file's content.
MP3_KBPS_RANGE = (4.0, 1000.0)
# Blocks of this many seconds bound memory for long files while keeping per-call overhead small.
BLOCK_SECONDS = 30.0
RESAMPLE_QUALITY = "HQ"

PathLike = str | bytes | os.PathLike


@dataclass(frozen=True)
class AudioInfo:
    path: Path
    samplerate: int
    channels: int
    frames: int
    duration: float


@dataclass
class LoadedAudio:
    signal: np.ndarray  # float32, mono, at sample_rate
    sample_rate: int
    info: AudioInfo
    warnings: list[AudioWarning] = field(default_factory=list)

    @property
    def duration(self) -> float:
        return self.signal.size / self.sample_rate


@dataclass(frozen=True)
class Segment:
    start: float
    end: float
    signal: np.ndarray


def as_path(path: PathLike) -> Path:
    """A Path for any str/bytes/PathLike; undecodable bytes survive via surrogateescape."""
    return Path(os.fsdecode(path))


def _diagnose(bpath: bytes, exc: Exception) -> str:
    """A plain reason for a failed open: the OS reason if there is one, else the decoder's."""
    # The file may have changed since _open checked it: check it again the same way.
    reason = not_regular_reason(bpath)
    if reason is not None:
        return reason
    try:
        if os.path.getsize(bpath) == 0:
            return "empty file (0 bytes)"
        with open(bpath, "rb"):
            pass
    except PermissionError:
        return "permission denied"
    except OSError as e:
        return f"cannot read: {e.strerror or e}"
    detail = (str(exc).split(": ", 1)[-1] if isinstance(exc, sf.LibsndfileError) else str(exc)).strip()
    # The file exists and opens, so libsndfile's generic "does not exist"/"System error" (its
    # MP3 reader's answer to garbage) only means it could not make sense of the data.
    if not detail or "does not exist" in detail or "System error" in detail:
        detail = "format not recognised or data corrupt"
    return f"not decodable as audio ({detail.rstrip('.')})"


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


def _open(path: PathLike) -> tuple[sf.SoundFile, Path]:
    # soundfile encodes str paths strictly; bytes go to sf_open untouched, so any name works.
    bpath = os.fsencode(path)
    reason = not_regular_reason(bpath)
    if reason is not None:
        raise AudioError(as_path(bpath), reason)
    try:
        f = sf.SoundFile(bpath)
    except (sf.LibsndfileError, RuntimeError, OSError, TypeError) as e:
        reason = _diagnose(bpath, e)
        if not reason.startswith("not decodable"):
            raise AudioError(as_path(bpath), reason) from None  # missing, unreadable, empty...
        av_file = _open_av(bpath)
        if av_file is not None:
            return av_file, as_path(bpath)
        ext = os.path.splitext(os.fsdecode(bpath))[1].lower()
        if ext in AV_EXTENSIONS:
            from soundsearch.avdecode import INSTALL_HINT, available

            if not available():
                reason = f"{ext} is not a format libsndfile reads; {INSTALL_HINT}"
        raise AudioError(as_path(bpath), reason) from None
    return f, as_path(bpath)


def _open_av(bpath: bytes):
    """The file through PyAV, or None (PyAV absent, or it cannot decode the file either)."""
    from soundsearch.avdecode import AVFile, available

    if not available() or not_regular_reason(bpath) is not None:
        return None
    try:
        return AVFile(bpath)
    except Exception:  # noqa: BLE001 - any FFmpeg failure means "not decodable", diagnosed above
        return None


def read_seconds(path: PathLike, start: float, end: float) -> tuple[np.ndarray, int]:
    """Mono float32 samples of [start, end) seconds at the file's own rate, and that rate.
    Seeks, so a window of a long file costs the window, not the file."""
    f, p = _open(path)
    with f:
        info = _info_of(f, p)
        first = max(0, int(start * info.samplerate))
        if first:
            f.seek(first)
        n = max(0, int((end - start) * info.samplerate))
        data = f.read(n, dtype="float32", always_2d=True)
    return _mix_to_mono(data), info.samplerate


def _info_of(f: sf.SoundFile, path: Path) -> AudioInfo:
    if f.samplerate <= 0 or f.channels <= 0:
        raise AudioError(path, f"invalid header (rate {f.samplerate}, channels {f.channels})")
    if f.samplerate < MIN_SAMPLERATE:
        raise AudioError(
            path, f"invalid header: sample rate {f.samplerate} Hz is below {MIN_SAMPLERATE} Hz (damaged header?)"
        )
    if f.frames <= 0:
        raise AudioError(path, "no audio samples (zero length)")
    return AudioInfo(path, int(f.samplerate), int(f.channels), int(f.frames), f.frames / f.samplerate)


def probe(path: PathLike) -> AudioInfo:
    """Header facts of an audio file, without decoding it. Raises AudioError."""
    f, p = _open(path)
    with f:
        return _info_of(f, p)


# The sample type to ask libsndfile for, by file subtype. Its integer-to-float conversion is
# slow (PCM_16 WAV read as float32 takes ~8x as long as read as int16 plus a numpy scale), so
# integer PCM is read as integers and scaled here; the result is the same float32 signal.
_READ_DTYPE = {
    "PCM_S8": "int16",
    "PCM_U8": "int16",
    "PCM_16": "int16",
    "PCM_24": "int32",
    "PCM_32": "int32",
    "FLOAT": "float32",
    "DOUBLE": "float64",
}
_INT_SCALE = {"int16": 1.0 / 32768.0, "int32": 1.0 / 2147483648.0}


def _mix_to_mono(data: np.ndarray) -> np.ndarray:
    """Average the channels of a (frames, channels) block into a contiguous float32 vector."""
    channels = data.shape[1]
    scale = _INT_SCALE.get(data.dtype.name, 1.0) / channels
    # Column adds: ndarray.mean(axis=1) over an (n, 2) array is tens of times slower.
    # copy=False: a mono float32 block is used as read (it is ours; nothing else holds it).
    mono = data[:, 0].astype(np.float32, copy=channels > 1)
    for c in range(1, channels):
        mono += data[:, c]
    if scale != 1.0:
        mono *= np.float32(scale)
    return mono


def _stream_mono(path: PathLike, sample_rate: int) -> tuple[AudioInfo, Iterator[np.ndarray], list[AudioWarning]]:
    """Open a file and return its header and a generator of mono float32 blocks at sample_rate.

    The generator validates as it goes (non-finite samples raise AudioError) and, once
    exhausted, appends a silence warning to the returned list if the whole file was silent.
    """
    f, p = _open(path)
    try:
        info = _info_of(f, p)
    except AudioError:
        f.close()
        raise
    warnings: list[AudioWarning] = []
    shown = p  # AudioError/AudioWarning keep the real path and print it escaped

    def blocks() -> Iterator[np.ndarray]:
        peak = 0.0
        decoded = 0
        produced = 0
        resampler = None
        blocksize = max(1, int(BLOCK_SECONDS * info.samplerate))
        dtype = _READ_DTYPE.get(f.subtype, "float32")
        first_sample = np.zeros(0, np.float32)
        fmt = f.format
        with f:
            while True:
                try:
                    data = f.read(blocksize, dtype=dtype, always_2d=True)
                except (sf.LibsndfileError, RuntimeError) as e:
                    raise AudioError(shown, f"decoding failed after {decoded} frames ({e})") from None
                last = data.shape[0] < blocksize
                mono = _mix_to_mono(data)
                if mono.size:
                    # max/min propagate NaN and inf, so two cheap passes both validate and
                    # measure the peak.
                    hi, lo = float(mono.max()), float(mono.min())
                    if not (np.isfinite(hi) and np.isfinite(lo)):
                        raise AudioError(shown, "contains non-finite samples (NaN or infinity)")
                    if decoded == 0:
                        first_sample = mono[:1].copy()
                    decoded += mono.size
                    peak = max(peak, hi, -lo)
                    if peak > MAX_PEAK:
                        raise AudioError(
                            shown,
                            f"absurd level: peak {peak:.3g} times full scale (above {MAX_PEAK:g}); "
                            "the samples are damaged or mis-scaled",
                        )
                if info.samplerate == sample_rate:
                    out = mono
                elif last and resampler is None:
                    # The whole file in one read (the common case): one-shot is cheaper than a stream.
                    out = soxr.resample(mono, info.samplerate, sample_rate, quality=RESAMPLE_QUALITY) if mono.size else mono
                else:
                    if resampler is None:
                        resampler = soxr.ResampleStream(
                            info.samplerate, sample_rate, 1, dtype="float32", quality=RESAMPLE_QUALITY
                        )
                    out = resampler.resample_chunk(mono, last=last)
                if out.size:
                    produced += out.size
                    yield np.ascontiguousarray(out, dtype=np.float32)
                if last:
                    break
        if decoded == 0:
            raise AudioError(shown, "no audio samples could be decoded (zero length)")
        if fmt == "MP3":
            _check_mp3_length(p, decoded, info.samplerate)
        if produced == 0:
            # A handful of samples resampled down can round to nothing; keep one so the file is usable.
            yield first_sample
        if peak < SILENCE_PEAK:
            warnings.append(AudioWarning(shown, "silent (peak below -100 dBFS)"))

    return info, blocks(), warnings


def _id3v2_size(path: Path) -> int:
    """Bytes of a leading ID3v2 tag (cover art can be megabytes), 0 without one."""
    try:
        with open(os.fsencode(path), "rb") as fh:
            head = fh.read(10)
    except OSError:
        return 0
    if len(head) < 10 or head[:3] != b"ID3" or any(b & 0x80 for b in head[6:10]):
        return 0
    size = (head[6] << 21) | (head[7] << 14) | (head[8] << 7) | head[9]
    return 10 + size + (10 if head[5] & 0x10 else 0)


def _check_mp3_length(path: Path, decoded: int, samplerate: int) -> None:
    """Refuse an MP3 decode whose length the file's size contradicts (see MP3_KBPS_RANGE)."""
    try:
        size = os.stat(os.fsencode(path)).st_size - _id3v2_size(path)
    except OSError:
        return
    seconds = decoded / samplerate
    if size <= 0 or seconds <= 0:
        return
    kbps = size * 8 / seconds / 1000
    lo, hi = MP3_KBPS_RANGE
    # Tiny files are all header and padding; the rule is only meaningful past a few frames.
    if size >= 16_384 and kbps > hi:
        raise AudioError(
            path,
            f"not decodable as MP3: only {seconds:.3f} s decoded from {size:,} bytes of audio data "
            f"({kbps:,.0f} kbit/s, far above MP3's 320): another format named .mp3, or damaged",
        )
    if kbps < lo:
        raise AudioError(
            path,
            f"suspicious MP3: {seconds:.1f} s decoded from only {size:,} bytes ({kbps:.2f} kbit/s, "
            "far below MP3's 8): damaged",
        )


def load(path: PathLike, sample_rate: int, min_samples: int = 0) -> LoadedAudio:
    """Decode a file to mono float32 at `sample_rate`.

    Raises AudioError for unreadable, undecodable, empty or non-finite audio. Odd but usable
    audio (silent; shorter than `min_samples` at the target rate) comes back with warnings.
    """
    info, blocks, warnings = _stream_mono(path, sample_rate)
    # Fill one preallocated array (grown if the header undercounts, as MP3 headers can) rather
    # than concatenating parts, so peak memory is about the result, not twice it.
    signal = np.empty(int(np.ceil(info.frames * sample_rate / info.samplerate)) + 16, np.float32)
    n = 0
    for block in blocks:
        if n + block.size > signal.size:
            signal = np.concatenate([signal[:n], np.empty(max(block.size, signal.size // 2), np.float32)])
        signal[n : n + block.size] = block
        n += block.size
    # A view when the slack is small (the usual case), so the result is not copied once more.
    signal = signal[:n] if signal.size - n <= 4096 else signal[:n].copy()
    if signal.size < min_samples:
        warnings.append(_short_warning(info.path, signal.size, sample_rate, min_samples))
    return LoadedAudio(signal, sample_rate, info, warnings)


def _short_warning(path: Path, n: int, sample_rate: int, min_samples: int) -> AudioWarning:
    return AudioWarning(
        path,
        f"shorter than one analysis frame ({n / sample_rate:.3f} s < {min_samples / sample_rate:.3f} s): padded",
    )


def _item_bounds(n: int, item: int, min_last: int) -> list[tuple[int, int]]:
    if n <= item:
        return [(0, n)]
    full, rem = divmod(n, item)
    bounds = [(i * item, (i + 1) * item) for i in range(full)]
    if rem >= min_last:
        bounds.append((full * item, n))
    elif rem:
        bounds[-1] = (bounds[-1][0], n)
    return bounds


def _item_lengths(item_seconds: float, min_last_seconds: float, sample_rate: int) -> tuple[int, int]:
    if not item_seconds > 0:
        raise ValueError(f"item_seconds must be positive, got {item_seconds}")
    item = max(1, int(round(item_seconds * sample_rate)))
    min_last = max(0, int(round(min_last_seconds * sample_rate)))
    return item, min_last


def split_items(
    signal: np.ndarray, sample_rate: int, item_seconds: float = 10.0, min_last_seconds: float = 1.0
) -> list[Segment]:
    """Cut a mono signal into items by the module's item rule (see the module docstring)."""
    item, min_last = _item_lengths(item_seconds, min_last_seconds, sample_rate)
    return [
        Segment(a / sample_rate, b / sample_rate, signal[a:b])
        for a, b in _item_bounds(int(signal.shape[0]), item, min_last)
    ]


def iter_items(
    path: PathLike,
    sample_rate: int,
    item_seconds: float = 10.0,
    min_last_seconds: float = 1.0,
    *,
    cutting: "Cutting | None" = None,
    start: float | None = None,
    end: float | None = None,
) -> tuple[AudioInfo, Iterator[Segment], list[AudioWarning]]:
    """Stream a file's items holding about one item in memory (a minute with event items).

    `cutting` (default: consecutive windows of item_seconds, the rule of split_items) says how
    to cut; `start`/`end` (seconds) cut only that region of the file, with item times still
    counted from the file's start. Returns the header, a generator of Segments and the warnings
    list, which is complete once the generator is exhausted. Errors found while decoding raise
    AudioError from the generator; a region outside the file raises AudioError at once.
    """
    info, blocks, warnings = _stream_mono(path, sample_rate)
    if cutting is None:
        cutting = Cutting(item_seconds, None, 0, min_last_seconds)
    _item_lengths(cutting.item_seconds, cutting.min_last_seconds, sample_rate)  # validates
    offset = 0.0
    if start is not None or end is not None:
        a = max(0.0, float(start or 0.0))
        b = info.duration if end is None else min(float(end), info.duration)
        if not b > a:
            blocks.close()
            raise AudioError(
                info.path,
                f"the region {a:g}-{b if end is None else float(end):g} s holds no audio "
                f"(the recording is {info.duration:.3f} s long)",
            )
        first, last = int(round(a * sample_rate)), int(round(b * sample_rate))
        blocks = _clip_blocks(blocks, first, max(last, first + 1))
        offset = first / sample_rate
    return info, _cut_stream(blocks, sample_rate, cutting, offset), warnings


# ---- finer items for long recordings (store meta item_hop, event_items)

# A new store's defaults, chosen on bench/moments.py (README "Finding the moment"): windows every
# half item, plus up to DEFAULT_EVENT_ITEMS event items a minute of long recordings.
DEFAULT_HOP_FRACTION = 0.5
DEFAULT_EVENT_ITEMS = 6

# Event items: a short item starting just before each detected onset of a long recording, so a
# bark of a third of a second is the main content of one item instead of 3% of a 10 s window.
EVENT_SECONDS = 2.0  # the longest event item
# The shortest: an event item ends where the energy falls back to its background (so a short
# bark, not the ambience after it, is the item's content), but not before this.
EVENT_MIN_SECONDS = 0.5
EVENT_PRE_SECONDS = 0.1  # the item starts this far before the onset frame (attack kept whole)
# Onset detection on 20 ms energy frames: a frame rising ONSET_DB above the median of the second
# before it, a local peak of that rise within ONSET_PEAK_FRAMES, louder than ONSET_FLOOR_DB.
ONSET_FRAME_SECONDS = 0.02
ONSET_DB = 3.0
ONSET_FLOOR_DB = -60.0
ONSET_CONTEXT_FRAMES = 50
ONSET_PEAK_FRAMES = 5
# Events are picked per minute (the strongest rises first), so their number is bounded by the
# setting per minute of audio whatever the recording holds.
EVENT_CHUNK_SECONDS = 60.0


@dataclass(frozen=True)
class Cutting:
    """How recordings are cut into items (recorded in a store's meta).

    `hop_seconds` None or >= item_seconds: today's rule (consecutive windows, see the module
    docstring). Shorter: windows start every hop_seconds while a full window and
    min_last_seconds of audio follow, and one more window ends at the end of the recording, so
    every window is a full item_seconds long. `event_items` > 0: a recording longer than
    item_seconds also gets up to that many event items (EVENT_SECONDS, from just before a
    detected onset) per minute. A recording no longer than item_seconds is one item either way.
    """

    item_seconds: float = 10.0
    hop_seconds: float | None = None
    event_items: int = 0
    min_last_seconds: float = 1.0

    @property
    def hop(self) -> float:
        return self.item_seconds if self.hop_seconds is None else min(self.hop_seconds, self.item_seconds)

    @property
    def finer(self) -> bool:
        """Whether items overlap (finer than consecutive windows)."""
        return self.hop < self.item_seconds - 1e-9 or self.event_items > 0

    def items_per_hour(self) -> tuple[float, float]:
        """(windows, most event items) per hour of long recordings."""
        return 3600.0 / self.hop, 60.0 * self.event_items


def _event_end(db: np.ndarray, f: int, min_frames: int, max_frames: int) -> int:
    """The frame after an event starting at frame f: where the envelope is back within
    ONSET_DB of the median of the second before the onset (between min and max frames on)."""
    base = float(np.median(db[max(0, f - ONSET_CONTEXT_FRAMES) : max(1, f - 1)])) if f > 1 else float(db[0])
    tail = db[f + min_frames : f + max_frames]
    back = np.flatnonzero(tail < base + ONSET_DB)
    return f + min_frames + (int(back[0]) if back.size else tail.size)


def _onset_frames(db: np.ndarray, lo: int, hi: int, limit: int, min_gap: int) -> list[int]:
    """Frames in [lo, hi) of the dB envelope `db` where an event starts: the `limit` strongest
    rises over the median of the preceding second, at least `min_gap` frames apart."""
    ctx = ONSET_CONTEXT_FRAMES
    first = max(lo, ctx)
    if hi - first <= 0 or limit <= 0:
        return []
    past = np.lib.stride_tricks.sliding_window_view(db[first - ctx : hi - 1], ctx)  # row i: frames before first+i
    rise = db[first:hi] - np.median(past, axis=1)
    ok = (rise >= ONSET_DB) & (db[first:hi] >= ONSET_FLOOR_DB)
    if not ok.any():
        return []
    w = ONSET_PEAK_FRAMES
    padded = np.pad(rise, w, constant_values=-np.inf)
    peak = rise >= np.lib.stride_tricks.sliding_window_view(padded, 2 * w + 1).max(axis=1)
    cand = np.flatnonzero(ok & peak)
    chosen: list[int] = []
    for i in cand[np.argsort(-rise[cand], kind="stable")]:
        f = first + int(i)
        if all(abs(f - c) >= min_gap for c in chosen):
            chosen.append(f)
            if len(chosen) >= limit:
                break
    return sorted(chosen)


def _cut_stream(blocks: Iterable[np.ndarray], sr: int, cutting: Cutting, offset: float = 0.0) -> Iterator[Segment]:
    """Items of a stream of mono blocks by `cutting`, holding at most a minute or an item of
    audio (plus a block). Window items come in time order, event items after each minute."""
    item, min_last = _item_lengths(cutting.item_seconds, cutting.min_last_seconds, sr)
    hop = max(1, int(round(cutting.hop * sr)))
    legacy = hop >= item
    frame = max(1, int(round(ONSET_FRAME_SECONDS * sr)))
    chunk = max(item, int(round(EVENT_CHUNK_SECONDS * sr)))
    ev_len = max(1, int(round(EVENT_SECONDS * sr)))
    ev_min = max(1, int(round(EVENT_MIN_SECONDS * sr)))
    pre = int(round(EVENT_PRE_SECONDS * sr))
    events = cutting.event_items > 0
    limit = int(round(cutting.event_items * chunk / (EVENT_CHUNK_SECONDS * sr))) if events else 0

    buf = np.zeros(0, np.float32)
    buf0 = 0  # sample offset of buf[0]
    seen = 0
    next_win = 0
    env: list[np.ndarray] = []
    env_done = 0  # samples covered by env
    next_chunk = 0  # first sample of the next minute whose events are not out yet

    def seg(a: int, b: int) -> Segment:
        return Segment(offset + a / sr, offset + b / sr, buf[a - buf0 : b - buf0].copy())

    def chunk_events(lo: int, hi: int, n: int | None) -> Iterator[Segment]:
        db = np.concatenate(env) if env else np.zeros(0)
        frames = _onset_frames(db, lo // frame, min(hi // frame, db.size), limit, max(1, ev_len // (2 * frame)))
        for f in frames:
            a = max(0, f * frame - pre)
            stop = _event_end(db, f, max(1, ev_min // frame), max(1, ev_len // frame))
            b = min(a + ev_len, stop * frame)
            yield seg(a, b if n is None else min(n, b))

    for block in blocks:
        buf = np.concatenate([buf, block]) if buf.size else block
        seen += block.size
        if events:
            whole = (seen - env_done) // frame * frame
            if whole:
                x = buf[env_done - buf0 : env_done - buf0 + whole].reshape(-1, frame).astype(np.float64)
                env.append(10.0 * np.log10((x * x).mean(axis=1) + 1e-12))
                env_done += whole
        while next_win + item + min_last <= seen:
            yield seg(next_win, next_win + item)
            next_win += hop
        while events and seen > item and next_chunk + chunk + ev_len + frame <= seen:
            yield from chunk_events(next_chunk, next_chunk + chunk, None)
            next_chunk += chunk
        keep = min(next_win, env_done, next_chunk - pre if events else next_win)
        if keep - buf0 > 0:
            buf = buf[keep - buf0 :]
            buf0 = keep
    n = seen
    if n == 0:
        return
    if legacy:
        if next_win < n:
            yield seg(next_win, n)
    elif n <= item:
        yield seg(0, n)
    else:
        yield seg(n - item, n)
    if events and n > item:
        while next_chunk < n:
            yield from chunk_events(next_chunk, next_chunk + chunk, n)
            next_chunk += chunk


def _clip_blocks(blocks: Iterable[np.ndarray], first: int, last: int | None) -> Iterator[np.ndarray]:
    """The samples [first, last) of a stream of blocks."""
    pos = 0
    for block in blocks:
        a, b = pos, pos + block.size
        pos = b
        lo, hi = max(a, first), b if last is None else min(b, last)
        if hi > lo:
            yield block[lo - a : hi - a]
        if last is not None and pos >= last:
            return


def parse_time(text: str, what: str = "time") -> float:
    """Seconds from "95", "95.5", "1:35", "1:35.5" or "0:01:35"; AudioError-free ValueError-free:
    raises SearchError naming `what` for anything else (negative times included)."""
    from soundsearch.errors import SearchError

    raw = str(text).strip()
    parts = raw.split(":")
    try:
        if not raw or len(parts) > 3 or any(p.strip() == "" for p in parts):
            raise ValueError
        values = [float(p) for p in parts]
    except ValueError:
        raise SearchError(f"{what} {text!r} is not a time: give seconds (95.5) or minutes:seconds (1:35.5)") from None
    if any(v < 0 or not np.isfinite(v) for v in values) or any(v >= 60 for v in values[1:]):
        raise SearchError(f"{what} {text!r} is not a time: give seconds (95.5) or minutes:seconds (1:35.5)")
    seconds = 0.0
    for v in values:
        seconds = seconds * 60 + v
    return seconds


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
    seen_dirs: set[tuple[int, int]] = set()
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

    found.sort(key=lambda t: t[0])
    seen_files: set[tuple[int, int]] = set()
    for p, key in found:
        if key in seen_files:
            continue
        seen_files.add(key)
        yield Path(p)
