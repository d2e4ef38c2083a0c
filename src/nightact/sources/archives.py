"""Safe extraction of a zip archive into a folder that appears whole or not at all.

:func:`extract_zip` refuses the whole archive if any member is an absolute path, climbs out with
``..`` or is a symbolic link; checks the free disk space against the uncompressed size first; and
unpacks into a hidden temporary folder beside the target, renamed to the target only when
complete (and accepted by the caller's ``inspect``)::

    DEST/.NAME.extracting-PID-XXXXXXXX/   while extracting (removed if anything fails)
    DEST/NAME/                            only ever complete

A folder left by a killed run is removed by the next one (:func:`remove_stale_extractions`),
unless the process named in it is still running.
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
import shutil
import stat
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path, PureWindowsPath

from tqdm import tqdm

from nightact.sources.http_download import DownloadError, check_free_space

__all__ = [
    "extract_zip",
    "remove_stale_extractions",
    "temporary_folder",
    "unsafe_member_reason",
]

log = logging.getLogger("nightact.sources.download")

_CHUNK_BYTES = 1 << 20


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


def extract_zip(
    archive: Path, final_folder: Path, inspect: Callable[[Path], object], progress: bool = True
):
    """Extract ``archive`` safely to ``final_folder``; return ``inspect(folder)``.

    ``inspect`` is called on the complete temporary folder before it is renamed: whatever it
    raises refuses the extraction, and paths it returns point into that folder (re-base them on
    ``final_folder``).
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
        check_free_space(final_folder.parent, uncompressed, f"extracting {archive.name}")
        temporary = temporary_folder(final_folder)
        try:
            _extract_members(zip_file, members, temporary, uncompressed, archive, progress)
            found = inspect(temporary)
            # The rename is the moment the folder appears under its final name, complete.
            os.replace(temporary, final_folder)
        except BaseException:
            shutil.rmtree(temporary, ignore_errors=True)
            raise
    log.info("%s: extracted %d files to %s", archive, len(members), final_folder)
    return found


def _extract_members(zip_file, members, temporary: Path, uncompressed: int, archive, progress):
    root = temporary.resolve()
    with tqdm(
        total=uncompressed,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=f"extract {archive.name}",
        disable=not progress,
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


def temporary_folder(final_folder: Path) -> Path:
    """A new hidden folder beside ``final_folder``, named after this process, to extract into.

    Created with the usual permissions (``tempfile.mkdtemp`` would make it private, and the
    rename would keep that).
    """
    folder = final_folder.with_name(
        f".{final_folder.name}.extracting-{os.getpid()}-{secrets.token_hex(4)}"
    )
    folder.mkdir()
    return folder


def remove_stale_extractions(dest: Path, name: str) -> None:
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
