"""A resumable HTTP download of one file with the standard library, for `nightact download`.

:func:`fetch` streams a URL into ``TARGET.part`` with a progress bar, resumes with a ``Range``
request where the server answers 206 (and starts again cleanly where it answers 200), checks the
size the server announced and, when given, a SHA-256, and only then renames the file to
``TARGET``. Beside the ``.part`` a small ``.part.json`` remembers the URL and the server's
validator (ETag or Last-Modified), so a resume never glues two different files together::

    DEST/NAME.zip.part        the bytes so far
    DEST/NAME.zip.part.json   {"url": ..., "total": ..., "validator": ...}
    DEST/NAME.zip             appears only when complete and verified

We use ``urllib`` rather than ``requests``: it is always there, it follows a redirect to a signed
storage URL keeping our ``Range`` header, and its ``HTTPError`` carries the status code we turn
into clear messages.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import time
import urllib.error
import urllib.request
import zipfile
from http import client as http_client
from pathlib import Path

from tqdm import tqdm

from nightact.core import files
from nightact.core.names import VERSION

__all__ = [
    "check_free_space",
    "DownloadError",
    "fetch",
]

log = logging.getLogger("nightact.sources.download")

_CHUNK_BYTES = 1 << 20


class DownloadError(Exception):
    """A download or extraction that failed, naming the URL or file and the problem."""

    def __init__(self, source: str | os.PathLike, reason: str):
        self.source = str(source)
        self.reason = reason
        super().__init__(f"{self.source}: {reason}")


def check_free_space(folder: Path, needed: int, doing: str) -> None:
    """`nightact.core.files.check_free_space`, raising DownloadError."""
    try:
        files.check_free_space(folder, needed, doing)
    except files.DiskSpaceError as error:
        raise DownloadError(folder, error.reason) from None


def fetch(url: str, archive: Path, config, access_hint: str = "") -> Path:
    """Stream ``url`` to ``archive`` through ``archive.part``, resuming where the server allows.

    The finished file is renamed into place only after its size (and SHA-256, when
    ``config.sha256`` is set) check out and it reads as a zip archive. ``config`` needs
    ``retries``, ``retry_seconds``, ``timeout_seconds``, ``sha256`` and ``progress`` (a
    :class:`nightact.sources.download.DownloadConfig` has them); ``access_hint`` is added to the
    message of a 401 or 403 answer.
    """
    archive = Path(archive)
    archive.parent.mkdir(parents=True, exist_ok=True)
    part = archive.with_name(archive.name + ".part")
    state_file = archive.with_name(archive.name + ".part.json")
    state = _read_part_state(state_file, url, part)
    attempts = config.retries + 1
    for attempt in range(1, attempts + 1):
        outcome = _fetch_once(url, part, state, config, access_hint)
        _write_part_state(state_file, state)
        if outcome == "complete":
            break
        if attempt < attempts:
            log.warning(
                "%s: connection ended at %d of %s bytes; resuming (attempt %d of %d)",
                url,
                files.file_size(part),
                state.get("total", "?"),
                attempt + 1,
                attempts,
            )
            time.sleep(config.retry_seconds)
    else:
        raise DownloadError(
            url,
            f"download truncated: got {files.file_size(part)} of {state.get('total', '?')} "
            f"bytes after {attempts} attempts; run again to resume from {part}",
        )

    if config.sha256:
        digest = files.sha256_of(part)
        if digest.lower() != config.sha256.strip().lower():
            part.unlink()
            state_file.unlink(missing_ok=True)
            raise DownloadError(
                url,
                f"SHA-256 mismatch: expected {config.sha256}, got {digest}; "
                "removed the download, run again to fetch it afresh",
            )
    if not zipfile.is_zipfile(part):
        head = part.read_bytes()[:64]
        part.unlink()
        state_file.unlink(missing_ok=True)
        raise DownloadError(url, f"not a zip archive: {_describe_non_zip(head)}")
    files.replace_atomic(part, archive)
    state_file.unlink(missing_ok=True)
    log.info("%s: downloaded %d bytes to %s", url, archive.stat().st_size, archive)
    return archive


def _fetch_once(url: str, part: Path, state: dict, config, access_hint: str) -> str:
    """One request: returns "complete" when ``part`` holds the whole file, else "partial"."""
    offset = files.file_size(part)
    headers = {"User-Agent": f"nightact/{VERSION}"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        if state.get("validator"):
            # If the file changed on the server since, it sends the whole new file (200).
            headers["If-Range"] = state["validator"]
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=config.timeout_seconds)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:
            return _after_range_not_satisfiable(url, part, state, error)
        raise DownloadError(url, _http_problem(error.code, error.reason, access_hint)) from error
    except urllib.error.URLError as error:
        raise DownloadError(
            url,
            f"cannot reach the server ({error.reason}); check the network connection, "
            "or pass --url with a mirror you can reach",
        ) from error
    except (OSError, http_client.HTTPException) as error:
        raise DownloadError(url, f"connection failed ({error})") from error

    with response:
        if response.status == 206:
            start, total = _parse_content_range(response.headers.get("Content-Range"))
            if start != offset:
                log.warning(
                    "%s: server resumed at byte %s, not %d; starting again", url, start, offset
                )
                part.unlink()
                return "partial"
            mode = "ab"
        else:
            if offset:
                log.info("%s: the server does not resume downloads; starting again from 0", url)
            offset = 0
            length = response.headers.get("Content-Length")
            total = int(length) if length is not None and length.isdigit() else None
            mode = "wb"
        state["total"] = total
        state["validator"] = response.headers.get("ETag") or response.headers.get("Last-Modified")
        if total is not None:
            check_free_space(part.parent, total - offset, f"downloading {url}")
        written = _stream(response, part, mode, offset, total, config)

    size = offset + written
    if total is None:
        # Without a length we cannot tell a cut-off from the end; the zip check will.
        return "complete"
    if size > total:
        part.unlink()
        raise DownloadError(url, f"received {size} bytes, more than the {total} announced")
    return "complete" if size == total else "partial"


def _stream(response, part: Path, mode: str, offset: int, total: int | None, config) -> int:
    """Copy the response body to ``part``; returns bytes written (stops early on a lost line)."""
    written = 0
    # Unbuffered: chunks are large already, and a failed write (disk full) must fail here, not
    # again when a buffered file is closed.
    with (
        open(part, mode, buffering=0) as sink,
        tqdm(
            total=total,
            initial=offset,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=part.name.removesuffix(".part"),
            disable=not config.progress,
        ) as bar,
    ):
        while True:
            try:
                chunk = response.read(_CHUNK_BYTES)
            except (OSError, http_client.HTTPException) as error:
                log.debug("%s: reading the response failed: %s", part, error)
                break
            if not chunk:
                break
            try:
                _write_all(sink, chunk)
            except OSError as error:
                if error.errno == errno.ENOSPC:
                    raise DownloadError(
                        part,
                        f"disk full after {offset + written} bytes; free some space and run "
                        "again to resume",
                    ) from error
                raise DownloadError(part, f"cannot write the download ({error})") from error
            written += len(chunk)
            bar.update(len(chunk))
    return written


def _write_all(sink, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[sink.write(view) :]


def _after_range_not_satisfiable(url: str, part: Path, state: dict, error) -> str:
    # 416 on a resume: either the .part is already whole (a run stopped just before renaming) or
    # it is longer than the file on the server; Content-Range "bytes */TOTAL" tells which.
    _, total = _parse_content_range(error.headers.get("Content-Range") if error.headers else None)
    if total is not None and files.file_size(part) == total:
        state["total"] = total
        return "complete"
    log.warning("%s: the partial download does not match the server's file; starting again", url)
    part.unlink()
    return "partial"


def _parse_content_range(value: str | None) -> tuple[int | None, int | None]:
    """``bytes 100-199/200`` -> (100, 200); ``bytes */200`` -> (None, 200); unknown parts None."""
    if not value or not value.startswith("bytes "):
        return None, None
    span, _, total_text = value[len("bytes ") :].partition("/")
    start_text = span.partition("-")[0]
    start = int(start_text) if start_text.isdigit() else None
    total = int(total_text) if total_text.isdigit() else None
    return start, total


def _http_problem(code: int, reason, access_hint: str) -> str:
    if code in (401, 403):
        return f"HTTP {code} {reason}: access refused. {access_hint}".rstrip()
    if code == 404:
        return f"HTTP 404 {reason}: no file at this URL; check the URL (--url) for typos"
    return f"HTTP {code} {reason}"


def _describe_non_zip(head: bytes) -> str:
    text = head.lstrip().lower()
    if text.startswith((b"<!doctype", b"<html", b"<")):
        return "the server sent a web page (often a sign-in or error page) instead of the file"
    if not head:
        return "the file is empty"
    return f"it starts with {head[:16]!r} (truncated or not a zip file)"


def _read_part_state(state_file: Path, url: str, part: Path) -> dict:
    # The state beside a .part remembers which URL it came from and the server's validator
    # (ETag or Last-Modified), so a resume never glues two different files together.
    if not state_file.is_file():
        return {"url": url}
    try:
        state = json.loads(state_file.read_text())
    except (OSError, ValueError):
        state = {}
    if state.get("url") != url:
        log.info("%s: left from another URL; starting again", part)
        part.unlink(missing_ok=True)
        return {"url": url}
    return state


def _write_part_state(state_file: Path, state: dict) -> None:
    try:
        state_file.write_text(json.dumps(state))
    except OSError as error:
        log.debug("%s: could not record the download state: %s", state_file, error)
