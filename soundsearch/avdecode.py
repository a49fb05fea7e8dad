"""Decoding through PyAV (FFmpeg) for formats libsndfile cannot read: m4a/aac, wma, webm...

Optional: `pip install 'soundsearch[formats]'`. `AVFile` offers the small part of
soundfile.SoundFile that audio/decode.py uses (samplerate, channels, frames, subtype, format, read,
seek, close, context manager), so the rest of the decoding path is shared.
"""

from __future__ import annotations

import os

import numpy as np

# Extensions that only PyAV decodes here; scan() lists them so they are never silently skipped.
AV_EXTENSIONS = frozenset({".m4a", ".aac", ".mp4", ".m4b", ".alac", ".wma", ".webm", ".mka", ".ac3", ".amr"})
INSTALL = "pip install 'soundsearch[formats]'"
INSTALL_HINT = f"install PyAV to read it: {INSTALL}"


def available() -> bool:
    try:
        import av  # noqa: F401
    except ImportError:
        return False
    return True


class AVFile:
    """A decoded audio stream read in blocks of float32 frames (frames, channels)."""

    subtype = "FLOAT"

    def __init__(self, path: str | bytes | os.PathLike):
        import av

        self._av = av
        self._container = av.open(os.fsdecode(path))
        try:
            streams = self._container.streams.audio
            if not streams:
                raise ValueError("no audio stream")
            self._stream = streams[0]
            ctx = self._stream.codec_context
            self.samplerate = int(ctx.sample_rate or 0)
            self.channels = int(ctx.layout.nb_channels if ctx.layout is not None else ctx.channels)
            if self._stream.duration is not None and self._stream.time_base is not None:
                seconds = float(self._stream.duration * self._stream.time_base)
            elif self._container.duration is not None:
                seconds = self._container.duration / av.time_base
            else:
                seconds = 0.0
            # The header's length; the loaders grow their buffer if decoding yields more.
            self.frames = max(1, int(round(seconds * self.samplerate)))
            self.format = f"AV:{self._container.format.name}"
        except Exception:
            self._container.close()
            raise
        self._buf = np.zeros((0, self.channels), np.float32)
        self._frames_iter = None
        self._skip = 0

    def seek(self, frame: int) -> None:
        """Position at `frame` (decoding restarts at the keyframe before it and skips ahead)."""
        frame = max(0, int(frame))
        seconds = frame / self.samplerate
        self._container.seek(int(seconds * self._av.time_base), any_frame=False, backward=True)
        self._buf = np.zeros((0, self.channels), np.float32)
        self._frames_iter = None
        self._skip_to = frame

    def read(self, frames: int = -1, dtype: str = "float32", always_2d: bool = True) -> np.ndarray:
        if self._frames_iter is None:
            self._frames_iter = self._positioned()
        parts = [self._buf]
        have = self._buf.shape[0]
        while frames < 0 or have < frames:
            try:
                block = next(self._frames_iter)
            except StopIteration:
                break
            parts.append(block)
            have += block.shape[0]
        data = np.concatenate(parts) if len(parts) > 1 else parts[0]
        if frames >= 0:
            data, self._buf = data[:frames], data[frames:]
        else:
            self._buf = data[:0]
        return np.ascontiguousarray(data, dtype=np.float32)

    def _positioned(self):
        target = getattr(self, "_skip_to", 0)
        remaining = None  # frames still to drop after a seek, known from the first packet's time
        for frame in self._container.decode(self._stream):
            arr = self._to_array(frame)
            if remaining is None:
                at = 0
                if target and frame.pts is not None and frame.time_base is not None:
                    at = int(round(float(frame.pts * frame.time_base) * self.samplerate))
                remaining = max(0, target - at)
            if remaining:
                drop = min(remaining, arr.shape[0])
                arr, remaining = arr[drop:], remaining - drop
            if arr.shape[0]:
                yield arr

    def _to_array(self, frame) -> np.ndarray:
        arr = frame.to_ndarray()
        fmt = frame.format
        if fmt.is_planar:
            arr = arr.T  # (channels, n) -> (n, channels)
        else:
            arr = arr.reshape(-1, self.channels)
        name = fmt.name.rstrip("p")
        if name == "s16":
            arr = arr.astype(np.float32) / 32768.0
        elif name == "s32":
            arr = arr.astype(np.float32) / 2147483648.0
        elif name == "u8":
            arr = (arr.astype(np.float32) - 128.0) / 128.0
        return arr.astype(np.float32, copy=False)

    def close(self) -> None:
        self._container.close()

    def __enter__(self) -> "AVFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
