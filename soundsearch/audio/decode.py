"""Decoding: probe a file, decode it to mono float32 at a target rate, or read a window of it.

Decoding is soundfile (libsndfile: wav, flac, ogg/vorbis/opus, aiff, mp3, ...), with PyAV for
what FFmpeg alone decodes when it is installed; resampling is soxr. Long files: everything reads
in blocks of BLOCK_SECONDS (30 s) streamed through the resampler, so a recording never sits in
memory at its native rate and channel count. `load` holds the mono result (4 bytes a sample at
the target rate: ~320 MB for an hour at 22050 Hz) plus one block; `items.iter_items`, which
`features.featurize_file` uses, holds about one item at a time (an hour of 44.1 kHz stereo WAV
featurizes in ~90 MB above the interpreter's baseline).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from soundsearch.audio.files import PathLike, as_path, not_regular_reason
from soundsearch.audio.validate import (
    MAX_PEAK,
    SILENCE_PEAK,
    AudioInfo,
    check_mp3_length,
    diagnose,
    header_info,
    short_warning,
)
from soundsearch.avdecode import AV_EXTENSIONS
from soundsearch.errors import AudioError, AudioWarning


# Blocks of this many seconds bound memory for long files while keeping per-call overhead small.
BLOCK_SECONDS = 30.0
RESAMPLE_QUALITY = "HQ"


@dataclass
class LoadedAudio:
    signal: np.ndarray  # float32, mono, at sample_rate
    sample_rate: int
    info: AudioInfo
    warnings: list[AudioWarning] = field(default_factory=list)

    @property
    def duration(self) -> float:
        return self.signal.size / self.sample_rate


def _open(path: PathLike) -> tuple[sf.SoundFile, Path]:
    # soundfile encodes str paths strictly; bytes go to sf_open untouched, so any name works.
    bpath = os.fsencode(path)
    reason = not_regular_reason(bpath)
    if reason is not None:
        raise AudioError(as_path(bpath), reason)
    try:
        f = sf.SoundFile(bpath)
    except (sf.LibsndfileError, RuntimeError, OSError, TypeError) as e:
        reason = diagnose(bpath, e)
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
        info = header_info(f, p)
        first = max(0, int(start * info.samplerate))
        if first:
            f.seek(first)
        n = max(0, int((end - start) * info.samplerate))
        data = f.read(n, dtype="float32", always_2d=True)
    return _mix_to_mono(data), info.samplerate


def probe(path: PathLike) -> AudioInfo:
    """Header facts of an audio file, without decoding it. Raises AudioError."""
    f, p = _open(path)
    with f:
        return header_info(f, p)


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


def stream_mono(path: PathLike, sample_rate: int) -> tuple[AudioInfo, Iterator[np.ndarray], list[AudioWarning]]:
    """Open a file and return its header and a generator of mono float32 blocks at sample_rate.

    The generator validates as it goes (non-finite samples raise AudioError) and, once
    exhausted, appends a silence warning to the returned list if the whole file was silent.
    """
    # Over 60 lines on purpose: the generator below carries one stream's decode, validation
    # and resampler state from block to block; pieces of it would pass that state around.
    f, p = _open(path)
    try:
        info = header_info(f, p)
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
            check_mp3_length(p, decoded, info.samplerate)
        if produced == 0:
            # A handful of samples resampled down can round to nothing; keep one so the file is usable.
            yield first_sample
        if peak < SILENCE_PEAK:
            warnings.append(AudioWarning(shown, "silent (peak below -100 dBFS)"))

    return info, blocks(), warnings


def load(path: PathLike, sample_rate: int, min_samples: int = 0) -> LoadedAudio:
    """Decode a file to mono float32 at `sample_rate`.

    Raises AudioError for unreadable, undecodable, empty or non-finite audio. Odd but usable
    audio (silent; shorter than `min_samples` at the target rate) comes back with warnings.
    """
    info, blocks, warnings = stream_mono(path, sample_rate)
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
        warnings.append(short_warning(info.path, signal.size, sample_rate, min_samples))
    return LoadedAudio(signal, sample_rate, info, warnings)
