"""What makes a sound file unusable, said plainly: header facts checked, level limits, a failed
open diagnosed, an MP3 decode its file size contradicts, and the too-short warning."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import soundfile as sf

from soundsearch.audio.files import not_regular_reason
from soundsearch.errors import AudioError, AudioWarning


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


@dataclass(frozen=True)
class AudioInfo:
    path: Path
    samplerate: int
    channels: int
    frames: int
    duration: float


def diagnose(bpath: bytes, exc: Exception) -> str:
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


def header_info(f: sf.SoundFile, path: Path) -> AudioInfo:
    if f.samplerate <= 0 or f.channels <= 0:
        raise AudioError(path, f"invalid header (rate {f.samplerate}, channels {f.channels})")
    if f.samplerate < MIN_SAMPLERATE:
        raise AudioError(
            path, f"invalid header: sample rate {f.samplerate} Hz is below {MIN_SAMPLERATE} Hz (damaged header?)"
        )
    if f.frames <= 0:
        raise AudioError(path, "no audio samples (zero length)")
    return AudioInfo(path, int(f.samplerate), int(f.channels), int(f.frames), f.frames / f.samplerate)


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


def check_mp3_length(path: Path, decoded: int, samplerate: int) -> None:
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


def short_warning(path: Path, n: int, sample_rate: int, min_samples: int) -> AudioWarning:
    return AudioWarning(
        path,
        f"shorter than one analysis frame ({n / sample_rate:.3f} s < {min_samples / sample_rate:.3f} s): padded",
    )
