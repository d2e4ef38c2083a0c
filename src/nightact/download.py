"""Download the NoctAct-HAR dataset and unpack it safely, ready for `nightact prepare`.

Two ways to get the zip:

* Kaggle's official client (``kagglehub``) when Kaggle credentials are configured and no URL was
  given: it handles authentication and Kaggle's own caching.
* Plain HTTP otherwise (the public download URL, or any mirror given with ``url``). We use the
  standard library's ``urllib`` rather than ``requests``: it is always there, so the project
  declares no extra dependency, it follows Kaggle's redirect to the signed storage URL keeping our
  ``Range`` header, and its ``HTTPError`` carries the status code we turn into clear messages.

The HTTP path streams into ``NAME.zip.part`` with a progress bar, resumes with a ``Range`` request
where the server answers 206 (and starts again cleanly where it answers 200), checks the size the
server announced and, when given, a SHA-256, and only then renames the file to ``NAME.zip``.

Extraction refuses the whole archive if any member is an absolute path, climbs out with ``..`` or
is a symbolic link; checks the free disk space against the uncompressed size first; and unpacks
into a hidden temporary folder that is renamed to ``DEST/NAME`` only when complete, so a folder
that exists under its final name is always whole. That makes the job idempotent: a second run
finds the folder and does nothing.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import secrets
import shutil
import stat
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from dataclasses import asdict, dataclass, field
from http import client as http_client
from pathlib import Path, PurePosixPath, PureWindowsPath

from tqdm import tqdm

from nightact import __version__, files
from nightact.videos import VIDEO_EXTENSIONS

log = logging.getLogger(__name__)

KAGGLE_HANDLE = "lakavathakshay/noctact-har"
DEFAULT_URL = f"https://www.kaggle.com/api/v1/datasets/download/{KAGGLE_HANDLE}"

_CHUNK_BYTES = 1 << 20
_CREDENTIALS_HINT = (
    "Kaggle wants a signed-in account for this download: create an API token at "
    "https://www.kaggle.com/settings, then set KAGGLE_USERNAME and KAGGLE_KEY (or save kaggle.json "
    "in ~/.kaggle) and run `nightact download` again without --url; or pass --url to a mirror"
)


class DownloadError(Exception):
    """A download or extraction that failed, naming the URL or file and the problem."""

    def __init__(self, source: str | os.PathLike, reason: str):
        self.source = str(source)
        self.reason = reason
        super().__init__(f"{self.source}: {reason}")


@dataclass
class DownloadConfig:
    """Where to put the dataset and where to get it from."""

    dest: str = "data"
    url: str | None = None  # None: Kaggle's client with credentials, else DEFAULT_URL
    sha256: str | None = None  # expected SHA-256 of the zip, checked when given
    name: str | None = None  # archive and folder name; default from the URL
    keep_archive: bool = False  # keep DEST/NAME.zip after a successful extraction
    extensions: tuple[str, ...] = VIDEO_EXTENSIONS
    retries: int = 3  # resumes after a dropped connection within one run
    retry_seconds: float = 2.0  # wait before each resume
    timeout_seconds: float = 60.0  # socket timeout of each request
    progress: bool = True


@dataclass
class DownloadResult:
    """What a download left on disk and what it found there."""

    dest: Path
    dataset_root: Path  # the folder holding one sub-folder of videos per class
    class_counts: dict[str, int]  # class folder name -> videos directly inside it
    source: str  # the URL, or kaggle:HANDLE
    already_present: bool = False  # True when nothing was done because everything was there
    archive: Path | None = None  # the zip, when kept
    archive_sha256: str | None = None
    archive_bytes: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def total_videos(self) -> int:
        return sum(self.class_counts.values())

    def prepare_command(self, store: str | os.PathLike | None = None) -> str:
        """The `nightact prepare` command that turns these videos into a clip store."""
        store = Path(store) if store is not None else self.dest / "store"
        return f"nightact prepare {_quote(self.dataset_root)} {_quote(store)}"

    def table(self) -> str:
        """A readable summary: the class folders, their video counts and the next command."""
        width = max((len(name) for name in self.class_counts), default=5)
        lines = [
            f"{len(self.class_counts)} classes, {self.total_videos} videos in {self.dataset_root}"
        ]
        lines += [f"  {name:<{width}}  {count:>6}" for name, count in self.class_counts.items()]
        lines.append(f"next: {self.prepare_command()}")
        return "\n".join(lines)


def _quote(path: Path) -> str:
    text = str(path)
    return f'"{text}"' if any(character.isspace() for character in text) else text


def download_dataset(config: DownloadConfig) -> DownloadResult:
    """Download and extract the dataset into ``config.dest``; do nothing if it is already there.

    Raises :class:`DownloadError` naming the URL or file and the problem.
    """
    dest = Path(config.dest)
    dest.mkdir(parents=True, exist_ok=True)
    use_kaggle = config.url is None and kaggle_credentials_configured()
    url = config.url or DEFAULT_URL
    name = config.name or _name_from_url(url)
    final_folder = dest / name
    source = f"kaggle:{KAGGLE_HANDLE}" if use_kaggle else url
    _remove_stale_temporary_folders(dest, name)

    if final_folder.is_dir():
        # Only a complete extraction is ever renamed to this name, so it is whole.
        dataset_root, class_counts = find_class_folders(final_folder, config.extensions)
        log.info("%s: already downloaded and extracted; nothing to do", final_folder)
        return DownloadResult(
            dest=dest,
            dataset_root=dataset_root,
            class_counts=class_counts,
            source=source,
            already_present=True,
            notes=["already downloaded and extracted; nothing to do"],
        )

    if use_kaggle:
        result = _download_with_kagglehub(config, dest, final_folder)
    else:
        result = _download_over_http(config, url, dest, name, final_folder)
    _write_record(dest / f"{name}.download.json", config, result)
    return result


def kaggle_credentials_configured() -> bool:
    """True when Kaggle's client would find credentials (environment or kaggle.json)."""
    if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
        return True
    if os.environ.get("KAGGLE_API_TOKEN"):
        return True
    folder = Path(os.environ.get("KAGGLE_CONFIG_DIR") or Path.home() / ".kaggle")
    return (folder / "kaggle.json").is_file() or (Path.home() / ".kaggle/access_token").is_file()


def _name_from_url(url: str) -> str:
    """``.../download/owner/noctact-har`` -> ``noctact-har``; ``.../clips.zip`` -> ``clips``."""
    last = PurePosixPath(urllib.parse.urlparse(url).path).name
    if last.lower().endswith(".zip"):
        last = last[: -len(".zip")]
    return last or "dataset"


def _temporary_folder(final_folder: Path) -> Path:
    """A new hidden folder beside ``final_folder``, named after this process, to extract into.

    Created with the usual permissions (``tempfile.mkdtemp`` would make it private, and the
    rename would keep that).
    """
    folder = final_folder.with_name(
        f".{final_folder.name}.extracting-{os.getpid()}-{secrets.token_hex(4)}"
    )
    folder.mkdir()
    return folder


def _remove_stale_temporary_folders(dest: Path, name: str) -> None:
    # A run killed mid-extraction leaves its hidden temporary folder behind; it is ours to remove,
    # unless the process named in it is still running (a second download into the same folder).
    for stale in dest.glob(f".{name}.extracting-*"):
        pid_text = stale.name.rsplit(".extracting-", 1)[1].split("-")[0]
        if pid_text.isdigit() and int(pid_text) != os.getpid() and _process_alive(int(pid_text)):
            continue
        log.info("%s: removing a temporary folder left by an interrupted run", stale)
        shutil.rmtree(stale, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    if os.name == "nt":
        return True  # os.kill(pid, 0) would terminate the process on Windows
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # it exists but belongs to someone else
    return True


# --- HTTP -------------------------------------------------------------------------------------


def _download_over_http(
    config: DownloadConfig, url: str, dest: Path, name: str, final_folder: Path
) -> DownloadResult:
    archive = dest / f"{name}.zip"
    notes = []
    if archive.is_file():
        # Renamed into place only after its size and checksum were verified.
        log.info("%s: archive already downloaded; extracting it", archive)
        notes.append("archive already downloaded")
    else:
        fetch(url, archive, config)
    digest = files.sha256_of(archive)
    archive_bytes = archive.stat().st_size
    dataset_root, class_counts = extract_archive(archive, final_folder, config)
    if not config.keep_archive:
        archive.unlink()
    return DownloadResult(
        dest=dest,
        dataset_root=dataset_root,
        class_counts=class_counts,
        source=url,
        archive=archive if config.keep_archive else None,
        archive_sha256=digest,
        archive_bytes=archive_bytes,
        notes=notes,
    )


def fetch(url: str, archive: Path, config: DownloadConfig) -> Path:
    """Stream ``url`` to ``archive`` through ``archive.part``, resuming where the server allows.

    The finished file is renamed into place only after its size (and SHA-256, when
    ``config.sha256`` is set) check out and it reads as a zip archive.
    """
    archive = Path(archive)
    archive.parent.mkdir(parents=True, exist_ok=True)
    part = archive.with_name(archive.name + ".part")
    state_file = archive.with_name(archive.name + ".part.json")
    state = _read_part_state(state_file, url, part)
    attempts = config.retries + 1
    for attempt in range(1, attempts + 1):
        outcome = _fetch_once(url, part, state, config)
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
    os.replace(part, archive)
    state_file.unlink(missing_ok=True)
    log.info("%s: downloaded %d bytes to %s", url, archive.stat().st_size, archive)
    return archive


def _fetch_once(url: str, part: Path, state: dict, config: DownloadConfig) -> str:
    """One request: returns "complete" when ``part`` holds the whole file, else "partial"."""
    offset = files.file_size(part)
    headers = {"User-Agent": f"nightact/{__version__}"}
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
        raise DownloadError(url, _http_problem(error.code, error.reason)) from error
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
            _check_free_space(part.parent, total - offset, f"downloading {url}")
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


def _http_problem(code: int, reason) -> str:
    if code in (401, 403):
        return f"HTTP {code} {reason}: access refused. {_CREDENTIALS_HINT}"
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


def _check_free_space(folder: Path, needed: int, doing: str) -> None:
    try:
        files.check_free_space(folder, needed, doing)
    except files.DiskSpaceError as error:
        raise DownloadError(folder, error.reason) from None


# --- extraction -------------------------------------------------------------------------------


def unsafe_member_reason(info: zipfile.ZipInfo) -> str | None:
    """Why extracting this member could write outside the destination, or None if it is safe."""
    name = info.filename
    if name.startswith(("/", "\\")) or PureWindowsPath(name).drive:
        return "has an absolute path"
    if ".." in name.replace("\\", "/").split("/"):
        return "climbs out of the destination with '..'"
    if stat.S_ISLNK(info.external_attr >> 16):
        return "is a symbolic link"
    return None


def extract_archive(
    archive: Path, final_folder: Path, config: DownloadConfig
) -> tuple[Path, dict[str, int]]:
    """Extract ``archive`` safely to ``final_folder`` and find its class folders.

    Returns the folder holding the class folders and the number of videos in each.
    """
    try:
        zip_file = zipfile.ZipFile(archive)
    except zipfile.BadZipFile as error:
        raise DownloadError(archive, f"not a zip archive or truncated ({error})") from error
    with zip_file:
        members = zip_file.infolist()
        for info in members:
            reason = unsafe_member_reason(info)
            if reason:
                raise DownloadError(
                    archive,
                    f"refusing to extract: member {info.filename!r} {reason} "
                    "(the archive is damaged or malicious); nothing was extracted",
                )
        uncompressed = sum(info.file_size for info in members)
        _check_free_space(final_folder.parent, uncompressed, f"extracting {archive.name}")
        temporary = _temporary_folder(final_folder)
        try:
            _extract_members(zip_file, members, temporary, uncompressed, archive, config)
            dataset_root, class_counts = find_class_folders(temporary, config.extensions)
            # The rename is the moment the folder appears under its final name, complete.
            os.replace(temporary, final_folder)
        except BaseException:
            shutil.rmtree(temporary, ignore_errors=True)
            raise
    dataset_root = final_folder / dataset_root.relative_to(temporary)
    log.info("%s: extracted %d files to %s", archive, len(members), final_folder)
    return dataset_root, class_counts


def _extract_members(zip_file, members, temporary: Path, uncompressed: int, archive, config):
    root = temporary.resolve()
    with tqdm(
        total=uncompressed,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=f"extract {archive.name}",
        disable=not config.progress,
    ) as bar:
        for info in members:
            parts = [part for part in info.filename.replace("\\", "/").split("/") if part]
            if not parts:
                continue
            target = root.joinpath(*parts)
            # Belt and braces after unsafe_member_reason: never write outside the folder.
            if not target.resolve().is_relative_to(root):
                raise DownloadError(archive, f"refusing to extract {info.filename!r}: outside")
            try:
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with zip_file.open(info) as source, open(target, "wb") as sink:
                    while chunk := source.read(_CHUNK_BYTES):
                        sink.write(chunk)
                        bar.update(len(chunk))
            except (zipfile.BadZipFile, zlib.error, EOFError) as error:
                archive.unlink(missing_ok=True)
                raise DownloadError(
                    archive,
                    f"corrupt zip archive: member {info.filename!r} ({error}); deleted the "
                    "archive, run again to download it afresh",
                ) from error
            except OSError as error:
                if error.errno == errno.ENOSPC:
                    raise DownloadError(
                        archive, "disk full while extracting; free some space and run again"
                    ) from error
                raise DownloadError(
                    archive, f"cannot extract {info.filename!r} ({error})"
                ) from error


def find_class_folders(
    root: str | os.PathLike, extensions: tuple[str, ...] = VIDEO_EXTENSIONS
) -> tuple[Path, dict[str, int]]:
    """Find the folder, at any depth under ``root``, whose sub-folders hold the videos.

    The real archive unpacks to ``modified_videos/<class>/*.mp4``; a mirror may add or drop a
    level. The folder with the most sub-folders that directly contain videos wins (the shallowest
    on a tie). Returns it and ``{class folder name: video count}`` sorted by name, which is the
    label order `prepare` uses.
    """
    root = Path(root)
    wanted = {extension.lower() for extension in extensions}
    by_parent: dict[Path, dict[str, int]] = {}
    for folder, subfolders, names in os.walk(root):
        # Skip hidden folders and the resource forks macOS adds to zips.
        subfolders[:] = sorted(
            name for name in subfolders if not name.startswith(".") and name != "__MACOSX"
        )
        videos = sum(
            1
            for name in names
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in wanted
        )
        folder = Path(folder)
        if videos and folder != root:
            by_parent.setdefault(folder.parent, {})[folder.name] = videos
    if not by_parent:
        raise DownloadError(
            root,
            f"no class folders of videos ({', '.join(sorted(wanted))}) found; expected "
            "<class name>/*.mp4 somewhere inside",
        )
    best = max(by_parent, key=lambda parent: (len(by_parent[parent]), -len(parent.parts)))
    return best, dict(sorted(by_parent[best].items()))


# --- Kaggle's client --------------------------------------------------------------------------


def _download_with_kagglehub(
    config: DownloadConfig, dest: Path, final_folder: Path
) -> DownloadResult:
    # Imported here: only this path needs it, and it pulls in a good deal.
    import kagglehub

    temporary = _temporary_folder(final_folder)
    source = f"kaggle:{KAGGLE_HANDLE}"
    try:
        try:
            kagglehub.dataset_download(KAGGLE_HANDLE, output_dir=str(temporary))
        except Exception as error:
            # kagglehub raises requests', kagglesdk's and its own exception types; all of them
            # mean the same to the user: the download did not happen.
            message = str(error)
            if "401" in message or "403" in message:
                message += f". {_CREDENTIALS_HINT}"
            raise DownloadError(source, f"Kaggle download failed: {message}") from error
        dataset_root, class_counts = find_class_folders(temporary, config.extensions)
        os.replace(temporary, final_folder)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return DownloadResult(
        dest=dest,
        dataset_root=final_folder / dataset_root.relative_to(temporary),
        class_counts=class_counts,
        source=source,
    )


def _write_record(path: Path, config: DownloadConfig, result: DownloadResult) -> None:
    # The job's config and what it found, beside what it wrote, so the download is reproducible.
    record = {
        "config": asdict(config),
        "source": result.source,
        "archive_sha256": result.archive_sha256,
        "archive_bytes": result.archive_bytes,
        "dataset_root": str(result.dataset_root),
        "class_counts": result.class_counts,
    }
    files.write_json_atomic(path, record)
