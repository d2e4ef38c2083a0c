"""Tests of `nightact download` against a local HTTP server; nothing here touches the internet."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import socket
import stat
import struct
import threading
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from nightact import cli
from nightact.core.videos import read_clip, write_video
from nightact.sources import download
from nightact.sources.download import DownloadConfig, DownloadError, download_dataset

CLASSES = {"Drink": 2, "walking on stairs": 1}


@pytest.fixture(autouse=True)
def no_kaggle_credentials(monkeypatch, tmp_path):
    # Whatever the machine has configured, these tests exercise the plain HTTP path.
    for name in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "no-kaggle-config"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


@pytest.fixture(scope="module")
def video_folder(tmp_path_factory) -> Path:
    """``modified_videos/<class>/*.mp4`` as in the real archive, tiny real H.264 files."""
    root = tmp_path_factory.mktemp("source")
    rng = np.random.default_rng(0)
    for class_name, count in CLASSES.items():
        for index in range(count):
            frames = rng.integers(0, 60, size=(6, 24, 32, 3), dtype=np.uint8)
            write_video(root / "modified_videos" / class_name / f"clip{index}.mp4", frames, fps=10)
    return root


def zip_folder(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            archive.write(path, path.relative_to(folder).as_posix())
    return buffer.getvalue()


@pytest.fixture(scope="module")
def payload(video_folder) -> bytes:
    return zip_folder(video_folder)


class Server:
    """A local HTTP server serving ``files`` ({url path: bytes}) with switchable behaviour."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.support_range = True
        self.drop_first_after: int | None = None  # cut the first response after N body bytes
        self.drop_every_after: int | None = None  # cut every response after N body bytes
        self.status: int | None = None  # answer every request with this error status
        self.requests: list[dict[str, str]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append(dict(self.headers))
                if server.status is not None:
                    self.send_error(server.status)
                    return
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                start = 0
                requested = self.headers.get("Range")
                if requested and server.support_range:
                    start = int(requested.removeprefix("bytes=").split("-")[0])
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Type", "application/zip")
                self.send_header("Content-Length", str(len(body) - start))
                self.send_header("ETag", '"v1"')
                self.end_headers()
                cut = server.drop_every_after
                if server.drop_first_after is not None and len(server.requests) == 1:
                    cut = server.drop_first_after
                if cut is not None:
                    # Send part of the body, then hang up as a failing network would.
                    self.wfile.write(body[start : start + cut])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                self.wfile.write(body[start:])

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def ranges(self) -> list[str | None]:
        return [request.get("Range") for request in self.requests]


@pytest.fixture
def server():
    running = Server()
    yield running
    running.httpd.shutdown()
    running.httpd.server_close()


def config_for(server: Server, dest: Path, path: str = "/noctact-har.zip", **overrides):
    settings = {"retry_seconds": 0.0, "progress": False, "timeout_seconds": 10.0}
    settings.update(overrides)
    return DownloadConfig(dest=str(dest), url=server.url(path), **settings)


def assert_dataset(result, dest: Path, video_folder: Path):
    assert result.dataset_root == dest / "noctact-har" / "modified_videos"
    assert result.class_counts == CLASSES
    for class_name in CLASSES:
        for original in sorted((video_folder / "modified_videos" / class_name).iterdir()):
            extracted = result.dataset_root / class_name / original.name
            assert extracted.read_bytes() == original.read_bytes()
    # The extracted videos decode like the originals.
    clip = read_clip(result.dataset_root / "Drink" / "clip0.mp4", frames=3, height=24, width=32)
    assert clip.frames.shape == (3, 24, 32, 3)


def test_full_download_extracts_reports_and_is_idempotent(server, payload, video_folder, tmp_path):
    server.files["/noctact-har.zip"] = payload
    dest = tmp_path / "data"
    config = config_for(server, dest, sha256=hashlib.sha256(payload).hexdigest())

    result = download_dataset(config)

    assert_dataset(result, dest, video_folder)
    assert not result.already_present
    assert result.archive_sha256 == hashlib.sha256(payload).hexdigest()
    assert result.archive_bytes == len(payload)
    assert server.ranges() == [None]
    # Nothing temporary is left, and the archive is gone unless asked to keep it.
    assert sorted(path.name for path in dest.iterdir()) == [
        "noctact-har",
        "noctact-har.download.json",
    ]
    record = json.loads((dest / "noctact-har.download.json").read_text())
    assert record["class_counts"] == CLASSES
    assert record["config"]["url"] == config.url
    assert result.prepare_command() == (
        f"nightact prepare {dest / 'noctact-har' / 'modified_videos'} {dest / 'store'}"
    )
    assert "walking on stairs" in result.table()

    second = download_dataset(config)
    assert second.already_present
    assert second.class_counts == CLASSES
    assert len(server.requests) == 1  # the second run asked the server nothing


def test_dropped_connection_resumes_with_range(server, payload, video_folder, tmp_path):
    server.files["/noctact-har.zip"] = payload
    server.drop_first_after = len(payload) // 3
    dest = tmp_path / "data"

    result = download_dataset(config_for(server, dest, keep_archive=True))

    assert server.ranges() == [None, f"bytes={len(payload) // 3}-"]
    assert server.requests[1]["If-Range"] == '"v1"'
    assert (dest / "noctact-har.zip").read_bytes() == payload
    assert result.archive == dest / "noctact-har.zip"
    assert not (dest / "noctact-har.zip.part").exists()
    assert_dataset(result, dest, video_folder)


def test_existing_part_file_is_resumed(server, payload, video_folder, tmp_path):
    server.files["/noctact-har.zip"] = payload
    dest = tmp_path / "data"
    dest.mkdir()
    (dest / "noctact-har.zip.part").write_bytes(payload[:1000])

    result = download_dataset(config_for(server, dest))

    assert server.ranges() == ["bytes=1000-"]
    assert result.archive_sha256 == hashlib.sha256(payload).hexdigest()
    assert_dataset(result, dest, video_folder)


def test_server_without_range_support_restarts_cleanly(server, payload, video_folder, tmp_path):
    server.files["/noctact-har.zip"] = payload
    server.support_range = False
    server.drop_first_after = len(payload) // 2
    dest = tmp_path / "data"
    dest.mkdir()
    # A stale prefix that is not even the right bytes: a 200 answer must overwrite it.
    (dest / "noctact-har.zip.part").write_bytes(b"x" * 100)

    result = download_dataset(config_for(server, dest, keep_archive=True))

    assert server.ranges() == ["bytes=100-", f"bytes={len(payload) // 2}-"]
    assert (dest / "noctact-har.zip").read_bytes() == payload
    assert_dataset(result, dest, video_folder)


def test_download_that_keeps_breaking_is_reported_truncated_and_resumable(
    server, payload, tmp_path
):
    server.files["/noctact-har.zip"] = payload
    server.drop_every_after = 500
    dest = tmp_path / "data"

    with pytest.raises(DownloadError, match="truncated: got 1000 of"):
        download_dataset(config_for(server, dest, retries=1))
    assert not (dest / "noctact-har").exists()
    assert (dest / "noctact-har.zip.part").read_bytes() == payload[:1000]

    server.drop_every_after = None
    result = download_dataset(config_for(server, dest))
    assert server.ranges()[-1] == "bytes=1000-"
    assert result.archive_sha256 == hashlib.sha256(payload).hexdigest()


def test_checksum_mismatch_is_refused(server, payload, tmp_path):
    server.files["/noctact-har.zip"] = payload
    dest = tmp_path / "data"
    with pytest.raises(DownloadError, match="SHA-256 mismatch"):
        download_dataset(config_for(server, dest, sha256="0" * 64))
    assert list(dest.iterdir()) == []


@pytest.mark.parametrize(
    ("member", "reason"),
    [
        ("../evil.txt", "'..'"),
        ("modified_videos/../../evil.txt", "'..'"),
        ("/tmp/evil.txt", "absolute path"),
        ("link", "symbolic link"),
    ],
)
def test_malicious_archive_is_refused_before_anything_is_written(
    server, payload, tmp_path, member, reason
):
    buffer = io.BytesIO(payload)
    with zipfile.ZipFile(buffer, "a") as archive:
        info = zipfile.ZipInfo(member)
        if member == "link":
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(info, "/etc/passwd" if member == "link" else "owned")
    server.files["/noctact-har.zip"] = buffer.getvalue()
    dest = tmp_path / "sandbox" / "data"

    with pytest.raises(DownloadError, match=f"refusing to extract.*{reason}"):
        download_dataset(config_for(server, dest))

    assert not (dest / "noctact-har").exists()
    assert not list(dest.glob(".noctact-har.extracting-*"))
    assert not (tmp_path / "sandbox" / "evil.txt").exists()
    assert not (tmp_path / "evil.txt").exists()


def test_corrupt_archive_is_refused_and_nothing_looks_complete(server, payload, tmp_path):
    corrupt = bytearray(payload)
    with zipfile.ZipFile(io.BytesIO(payload)) as archive:
        member = archive.infolist()[-1]
    # Flip bytes inside the last member's compressed data; the central directory stays intact.
    name_length, extra_length = struct.unpack_from("<HH", payload, member.header_offset + 26)
    data_start = member.header_offset + 30 + name_length + extra_length
    middle = data_start + member.compress_size // 2
    for offset in range(middle - 16, middle + 16):
        corrupt[offset] ^= 0xFF
    server.files["/noctact-har.zip"] = bytes(corrupt)
    dest = tmp_path / "data"

    with pytest.raises(DownloadError, match="corrupt zip archive"):
        download_dataset(config_for(server, dest))

    assert not (dest / "noctact-har").exists()
    assert not list(dest.glob(".noctact-har.extracting-*"))
    assert not (dest / "noctact-har.zip").exists()  # removed so the next run fetches it afresh


def test_web_page_instead_of_zip(server, tmp_path):
    server.files["/noctact-har.zip"] = b"<!DOCTYPE html><html>Please sign in</html>"
    dest = tmp_path / "data"
    with pytest.raises(DownloadError, match="not a zip archive: the server sent a web page"):
        download_dataset(config_for(server, dest))
    assert list(dest.iterdir()) == []


def test_404_names_the_url(server, tmp_path):
    config = config_for(server, tmp_path / "data", path="/missing.zip")
    with pytest.raises(DownloadError, match="HTTP 404") as caught:
        download_dataset(config)
    assert caught.value.source == config.url


@pytest.mark.parametrize("status", [401, 403])
def test_refused_access_hints_at_credentials(server, tmp_path, status):
    server.status = status
    with pytest.raises(DownloadError, match=f"HTTP {status}.*KAGGLE_USERNAME"):
        download_dataset(config_for(server, tmp_path / "data"))


def test_no_network(tmp_path):
    # A port nobody listens on: the connection is refused at once.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = DownloadConfig(dest=str(tmp_path / "data"), url=f"http://127.0.0.1:{port}/x.zip")
    with pytest.raises(DownloadError, match="cannot reach the server"):
        download_dataset(config)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs Linux's /dev/full")
def test_disk_full_while_downloading(server, payload, tmp_path):
    server.files["/noctact-har.zip"] = payload
    dest = tmp_path / "data"
    dest.mkdir()
    # Every write to /dev/full fails with ENOSPC, exactly as on a full disk.
    (dest / "noctact-har.zip.part").symlink_to("/dev/full")
    with pytest.raises(DownloadError, match="disk full"):
        download_dataset(config_for(server, dest))
    assert not (dest / "noctact-har").exists()


def test_not_enough_space_for_extraction(server, payload, tmp_path, monkeypatch):
    server.files["/noctact-har.zip"] = payload
    dest = tmp_path / "data"
    download.fetch(
        server.url("/noctact-har.zip"), dest / "noctact-har.zip", config_for(server, dest)
    )
    monkeypatch.setattr(
        download.shutil, "disk_usage", lambda path: SimpleNamespace(total=1, used=1, free=0)
    )
    with pytest.raises(DownloadError, match="not enough free disk space for extracting"):
        download_dataset(config_for(server, dest))
    assert not (dest / "noctact-har").exists()


def test_kaggle_client_is_used_only_with_credentials_and_no_url(
    monkeypatch, tmp_path, video_folder
):
    kagglehub = pytest.importorskip("kagglehub")
    calls = []

    def fake_dataset_download(handle, output_dir=None, **kwargs):
        calls.append(handle)
        target = Path(output_dir) / "modified_videos"
        for path in (video_folder / "modified_videos").rglob("*.mp4"):
            (target / path.parent.name).mkdir(parents=True, exist_ok=True)
            (target / path.parent.name / path.name).write_bytes(path.read_bytes())
        return output_dir

    monkeypatch.setattr(kagglehub, "dataset_download", fake_dataset_download)
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", "secret")
    assert download.kaggle_credentials_configured()

    result = download_dataset(DownloadConfig(dest=str(tmp_path / "data"), progress=False))

    assert calls == ["lakavathakshay/noctact-har"]
    assert result.source == "kaggle:lakavathakshay/noctact-har"
    assert result.dataset_root == tmp_path / "data" / "noctact-har" / "modified_videos"
    assert result.class_counts == CLASSES


def test_find_class_folders_at_any_depth(tmp_path):
    for class_name in ("b", "a", "c"):
        (tmp_path / "x" / "y" / class_name).mkdir(parents=True)
        (tmp_path / "x" / "y" / class_name / "v.mp4").write_bytes(b"")
    (tmp_path / "x" / "y" / "a" / "w.MP4").write_bytes(b"")
    (tmp_path / "x" / "y" / "a" / "notes.txt").write_bytes(b"")
    (tmp_path / "x" / "lonely").mkdir()
    (tmp_path / "x" / "lonely" / "v.mp4").write_bytes(b"")

    root, counts = download.find_class_folders(tmp_path)

    assert root == tmp_path / "x" / "y"
    assert counts == {"a": 2, "b": 1, "c": 1}
    with pytest.raises(DownloadError, match="no class folders"):
        download.find_class_folders(tmp_path, extensions=(".avi",))


def test_cli_download(server, payload, tmp_path, capsys):
    server.files["/noctact-har.zip"] = payload
    dest = tmp_path / "data"
    url = server.url("/noctact-har.zip")
    sha = hashlib.sha256(payload).hexdigest()

    assert cli.main(["download", "--dest", str(dest), "--url", url, "--sha256", sha]) == 0
    output = capsys.readouterr().out
    assert "2 classes, 3 videos" in output
    assert f"nightact prepare {dest / 'noctact-har' / 'modified_videos'}" in output

    assert cli.main(["download", "--dest", str(dest), "--url", url]) == 0
    assert "already downloaded and extracted" in capsys.readouterr().out

    missing = server.url("/nope.zip")
    assert cli.main(["download", "--dest", str(tmp_path / "other"), "--url", missing]) == 1
    assert "HTTP 404" in capsys.readouterr().err


def test_leftovers_of_interrupted_runs(server, payload, video_folder, tmp_path):
    server.files["/noctact-har.zip"] = payload
    dest = tmp_path / "data"
    dest.mkdir()
    # A .part that came from another URL must not be continued, and a temporary extraction
    # folder of a process that no longer runs must go.
    (dest / "noctact-har.zip.part").write_bytes(payload[:1000])
    (dest / "noctact-har.zip.part.json").write_text(json.dumps({"url": "http://elsewhere/x.zip"}))
    stale = dest / ".noctact-har.extracting-999999999-abcd"
    (stale / "modified_videos" / "Drink").mkdir(parents=True)

    result = download_dataset(config_for(server, dest))

    assert server.ranges() == [None]
    assert not stale.exists()
    assert_dataset(result, dest, video_folder)
    # The extracted folder gets ordinary permissions, not a private temporary folder's.
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((dest / "noctact-har").stat().st_mode) == 0o777 & ~umask
