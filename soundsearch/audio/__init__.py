"""Reading sound files: find them, decode them to mono float32 at a target rate, cut items.

    files.py     audio extensions, folder scanning, whether a path can be read at all
    decode.py    probe, load, read_seconds: soundfile (PyAV for FFmpeg-only formats) and soxr,
                 streamed in blocks so long files stay small in memory
    validate.py  what makes a file unusable, said plainly (headers, levels, MP3 lengths)
    items.py     the item rule and Cutting: consecutive or overlapping windows, event items;
                 parse_time for regions ("1:35.5")
    events.py    onset detection for event items
"""

from soundsearch.audio.decode import BLOCK_SECONDS, RESAMPLE_QUALITY, LoadedAudio, load, probe, read_seconds
from soundsearch.audio.files import AUDIO_EXTENSIONS, PathLike, as_path, has_audio_extension, not_regular_reason, scan
from soundsearch.audio.items import (
    DEFAULT_EVENT_ITEMS,
    DEFAULT_HOP_FRACTION,
    Cutting,
    Segment,
    iter_items,
    parse_time,
    split_items,
)
from soundsearch.audio.validate import MAX_PEAK, MIN_SAMPLERATE, MP3_KBPS_RANGE, SILENCE_PEAK, AudioInfo

__all__ = [
    "AUDIO_EXTENSIONS",
    "BLOCK_SECONDS",
    "DEFAULT_EVENT_ITEMS",
    "DEFAULT_HOP_FRACTION",
    "MAX_PEAK",
    "MIN_SAMPLERATE",
    "MP3_KBPS_RANGE",
    "RESAMPLE_QUALITY",
    "SILENCE_PEAK",
    "AudioInfo",
    "Cutting",
    "LoadedAudio",
    "PathLike",
    "Segment",
    "as_path",
    "has_audio_extension",
    "iter_items",
    "load",
    "not_regular_reason",
    "parse_time",
    "probe",
    "read_seconds",
    "scan",
    "split_items",
]
