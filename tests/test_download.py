"""SONYC-UST download against a miniature Zenodo record served on 127.0.0.1 (never the internet)."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from soundsearch.datasets import download as dl
from soundsearch.datasets import load_dataset, sonyc_ust
from soundsearch.errors import DatasetError, DownloadError

from conftest import tone, write_audio

HEADER = "split,sensor_id,audio_filename,annotator_id,1_engine_presence,2_machinery-impact_presence,3_non-machinery-impact_presence,4_powered-saw_presence,5_alert-signal_presence,6_music_presence,7_human-voice_presence,8_dog_presence\n"


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


class Record:
    """A miniature Zenodo record: files by name, a listing, and switches to misbehave."""

    def __init__(self, files: dict[str, bytes]):
        self.files = dict(files)
        self.md5 = {k: md5(v) for k, v in files.items()}
        self.cut_after: dict[str, int] = {}  # name -> bytes sent before the connection drops
        self.ranges: list[tuple[str, str | None]] = []
        self.honour_range = True


def make_handler(record: Record):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep test output clean
            pass

        def do_GET(self):
            path = self.path.split("?")[0]
            if path == f"/api/records/{sonyc_ust.ZENODO_RECORD}":
                body = json.dumps(
                    {"files": [{"key": k, "checksum": f"md5:{v}", "size": len(record.files[k])} for k, v in record.md5.items()]}
                ).encode()
                return self._send(200, body, {"Content-Type": "application/json"})
            prefix = f"/records/{sonyc_ust.ZENODO_RECORD}/files/"
            name = path[len(prefix):] if path.startswith(prefix) else None
            if name not in record.files:
                return self._send(404, b"not found")
            data = record.files[name]
            rng = self.headers.get("Range")
            record.ranges.append((name, rng))
            start = 0
            if rng and record.honour_range:
                start = int(rng.split("=")[1].split("-")[0])
                if start >= len(data):
                    return self._send(416, b"")
                status = 206
                extra = {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"}
            else:
                status, extra = 200, {}
            body = data[start:]
            cut = record.cut_after.pop(name, None)
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            for k, v in extra.items():
                self.send_header(k, v)
            self.end_headers()
            if cut is not None:
                self.wfile.write(body[:cut])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body)

        def _send(self, status, body, headers=None):
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

    return Handler


@pytest.fixture
def server():
    holder = {}

    def start(record: Record) -> str:
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(record))
        t = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        t.start()
        holder["httpd"] = httpd
        return f"http://127.0.0.1:{httpd.server_address[1]}"

    yield start
    if "httpd" in holder:
        holder["httpd"].shutdown()
        holder["httpd"].server_close()


def tar_of(tmp: Path, folder: str, names_and_freqs: list[tuple[str, float]]) -> bytes:
    src = tmp / "src" / folder
    for name, f in names_and_freqs:
        write_audio(src / name, tone(f, 0.5))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(src, arcname=folder)
    return buf.getvalue()


def miniature(tmp: Path) -> dict[str, bytes]:
    ann = HEADER
    ann += "train,1,a.wav,5,1,0,0,0,0,0,0,0\n"
    ann += "train,1,a.wav,6,0,0,0,0,0,0,1,0\n"
    ann += "train,2,b.wav,7,0,0,0,0,0,1,0,0\n"
    ann += "test,3,c.wav,0,1,0,0,0,0,0,1,0\n"
    ann += "test,3,c.wav,9,0,0,0,0,0,0,0,0\n"
    ann += "validate,4,d.wav,0,0,0,0,0,0,0,0,1\n"
    big = bytes(np.random.default_rng(0).integers(0, 256, 300_000, dtype=np.uint8))
    return {
        "annotations.csv": ann.encode(),
        "audio-0.tar.gz": tar_of(tmp, "audio", [("a.wav", 300), ("b.wav", 500)]),
        "audio-1.tar.gz": tar_of(tmp, "audio", [("c.wav", 700), ("d.wav", 900)]) + b"",
        "big.bin": big,
    }


def test_download_unpacks_and_loads(server, tmp_path):
    files = miniature(tmp_path)
    rec = Record(files)
    base = server(rec)
    root = tmp_path / "data"
    pinned = rec.md5["annotations.csv"]
    report = dl.download_sonyc_ust(root, base=base, pinned_annotations_md5=pinned)
    assert report.fetched == ["annotations.csv", "audio-0.tar.gz", "audio-1.tar.gz"]
    assert (root / "audio-0" / "audio" / "a.wav").is_file()
    assert (root / "audio-1" / "audio" / "d.wav").is_file()
    assert not (root / "audio-0.tar.gz").exists()  # archives removed after unpacking
    ds = sonyc_ust.load(root)
    assert [e.path.name for e in ds.train] == ["a.wav", "b.wav"]
    assert [e.path.name for e in ds.test] == ["c.wav"]
    # a second run fetches nothing
    again = dl.download_sonyc_ust(root, base=base, pinned_annotations_md5=pinned)
    assert again.fetched == [] and set(again.skipped) == {"annotations.csv", "audio-0.tar.gz", "audio-1.tar.gz"}


def test_fetch_resumes_with_range(server, tmp_path):
    rec = Record(miniature(tmp_path))
    rec.cut_after["big.bin"] = 100_000
    base = server(rec)
    dest = tmp_path / "big.bin"
    url = f"{base}/records/{sonyc_ust.ZENODO_RECORD}/files/big.bin"
    with pytest.raises(DownloadError, match="resume"):
        dl.fetch(url, dest, md5=rec.md5["big.bin"])
    part = dest.with_name("big.bin.part")
    assert part.stat().st_size == 100_000 and not dest.exists()
    assert dl.fetch(url, dest, md5=rec.md5["big.bin"]) is True
    assert rec.ranges[-1] == ("big.bin", "bytes=100000-")
    assert dest.read_bytes() == rec.files["big.bin"]
    assert not part.exists()


def test_fetch_restarts_when_server_ignores_range(server, tmp_path):
    rec = Record(miniature(tmp_path))
    rec.honour_range = False
    base = server(rec)
    dest = tmp_path / "big.bin"
    dest.with_name("big.bin.part").write_bytes(b"y" * 5000)
    assert dl.fetch(f"{base}/records/{sonyc_ust.ZENODO_RECORD}/files/big.bin", dest, md5=rec.md5["big.bin"]) is False
    assert dest.read_bytes() == rec.files["big.bin"]
    assert len(rec.ranges) == 1  # started over once, no second attempt


def test_stale_part_is_refetched_from_scratch(server, tmp_path):
    rec = Record(miniature(tmp_path))
    base = server(rec)
    dest = tmp_path / "big.bin"
    # A part from some other file: resuming it gives the wrong checksum, so fetch starts over.
    dest.with_name("big.bin.part").write_bytes(b"x" * 1000)
    assert dl.fetch(f"{base}/records/{sonyc_ust.ZENODO_RECORD}/files/big.bin", dest, md5=rec.md5["big.bin"])
    assert dest.read_bytes() == rec.files["big.bin"]
    assert [r for n, r in rec.ranges if n == "big.bin"] == ["bytes=1000-", None]


def test_md5_mismatch_is_refused_and_cleaned(server, tmp_path):
    rec = Record(miniature(tmp_path))
    rec.md5["audio-1.tar.gz"] = "0" * 32
    base = server(rec)
    root = tmp_path / "data"
    with pytest.raises(DownloadError, match="checksum mismatch for audio-1.tar.gz"):
        dl.download_sonyc_ust(root, base=base, pinned_annotations_md5=rec.md5["annotations.csv"])
    assert not (root / "audio-1.tar.gz").exists()
    assert not (root / "audio-1.tar.gz.part").exists()
    assert (root / "audio-0" / "audio" / "a.wav").is_file()  # what was good is kept


def test_changed_record_is_refused(server, tmp_path):
    rec = Record(miniature(tmp_path))
    base = server(rec)
    # Without pinning the miniature's md5, the real v2.3 checksum is expected.
    with pytest.raises(DownloadError, match="70b507b15bb4cfcce4870925302f276b"):
        dl.download_sonyc_ust(tmp_path / "data", base=base)


def test_unreachable_server(tmp_path):
    with pytest.raises(DownloadError, match="cannot read the file list"):
        dl.download_sonyc_ust(tmp_path / "data", base="http://127.0.0.1:9")


def test_load_dataset_download_flag_uses_env_base(server, tmp_path, monkeypatch):
    rec = Record(miniature(tmp_path))
    monkeypatch.setenv(dl.BASE_URL_ENV, server(rec))
    monkeypatch.setattr(sonyc_ust, "ANNOTATIONS_MD5", rec.md5["annotations.csv"])
    ds = load_dataset("sonyc-ust", data_dir=tmp_path / "d", download=True)
    assert len(ds.train) == 2 and len(ds.test) == 1 and ds.info["version"] == "v2"


def test_missing_data_dir_says_what_to_download(tmp_path):
    with pytest.raises(DatasetError) as exc:
        load_dataset("sonyc-ust", data_dir=tmp_path / "nothing")
    msg = str(exc.value)
    assert "annotations.csv" in msg and "audio-0.tar.gz" in msg and "3966543" in msg
    assert str(tmp_path / "nothing") in msg and "--download" in msg
