"""Writing files so that no reader ever sees half of one, hashing them, and checking free space.

Every file nightact writes for a reader to find later (configs, class lists, histories, results,
store metadata, arrays) goes through here, so that "atomic" means one thing everywhere:

    folder/
        name.json.tmp   <- written first, flushed and fsynced
        name.json       <- os.replace(name.json.tmp, name.json), then the folder is fsynced

A crash leaves either the old file or the new one under the real name, never a mix, and at worst a
stray ``*.tmp`` beside it. Keras-free and NumPy-free.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from pathlib import Path

__all__ = [
    "TEMPORARY_SUFFIX",
    "check_free_space",
    "DiskFullError",
    "DiskSpaceError",
    "file_size",
    "free_space",
    "fsync_folder",
    "gigabytes",
    "human_size",
    "is_disk_full",
    "make_folders",
    "open_atomic",
    "remove_empty_folders",
    "remove_partial",
    "replace_atomic",
    "sha256_of",
    "temporary_name",
    "write_bytes_atomic",
    "write_json_atomic",
    "write_text_atomic",
]

_CHUNK_BYTES = 1 << 20
TEMPORARY_SUFFIX = ".tmp"


def temporary_name(path: str | os.PathLike) -> Path:
    """The name a file is written under before it is renamed into place (same folder)."""
    path = Path(path)
    return path.with_name(path.name + TEMPORARY_SUFFIX)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary name, fsync, rename, fsync the folder)."""
    with open_atomic(path) as handle:
        handle.write(data)
    return Path(path)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, value, indent: int = 2) -> Path:
    """Write ``value`` as indented JSON, ending in a newline, to ``path`` atomically."""
    return write_text_atomic(path, json.dumps(value, indent=indent) + "\n")


class open_atomic:  # noqa: N801 - used like open()
    """``with open_atomic(path) as handle:`` a binary file that appears under ``path`` on success.

    On an exception inside the block the temporary file is removed and ``path`` is untouched.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.temporary = temporary_name(self.path)

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = open(self.temporary, "wb")  # noqa: SIM115 - closed in __exit__
        return self.handle

    def __exit__(self, kind, error, traceback) -> None:
        try:
            try:
                if kind is None:
                    self.handle.flush()
                    os.fsync(self.handle.fileno())
            finally:
                self.handle.close()
            if kind is None:
                replace_atomic(self.temporary, self.path)
        except BaseException as failure:
            # A full disk shows up here as often as in the block: the data sat in buffers.
            written = remove_partial(self.temporary)
            if is_disk_full(failure):
                raise DiskFullError(self.path, written) from failure
            raise
        if kind is not None:
            written = remove_partial(self.temporary)
            if is_disk_full(error):
                raise DiskFullError(self.path, written) from error


def replace_atomic(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """``os.replace(source, target)``, then fsync the folder so the rename survives a crash."""
    os.replace(source, target)
    fsync_folder(Path(target).parent)


def fsync_folder(folder: str | os.PathLike) -> None:
    """Flush a folder's entries to disk; a no-op where folders cannot be opened (Windows)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def sha256_of(path: str | os.PathLike) -> str:
    """The SHA-256 of a file as lowercase hex, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        while chunk := source.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def file_size(path: str | os.PathLike) -> int:
    """The size of a file in bytes, 0 when it does not exist."""
    try:
        return Path(path).stat().st_size
    except FileNotFoundError:
        return 0


class DiskSpaceError(OSError):
    """Not enough free space in a folder for the job about to start."""

    def __init__(self, folder: str | os.PathLike, doing: str, needed: int, free: int):
        self.folder, self.needed, self.free = Path(folder), needed, free
        self.reason = (
            f"not enough free disk space for {doing}: needs {human_size(needed)}, "
            f"{human_size(free)} free"
        )
        super().__init__(f"{folder}: {self.reason}")

    def __str__(self) -> str:
        return self.args[0]


class DiskFullError(OSError):
    """The disk filled up while ``path`` was being written; the partial file was removed.

    Its message is one line naming the file and the figures: what had been written of it and
    what is free now.
    """

    def __init__(self, path: str | os.PathLike, written: int = 0, note: str | None = None):
        self.path, self.written = Path(path), written
        free = free_space(self.path.parent)
        note = note or (
            "the partial file was removed and finished work kept: free some space and run the "
            "same command again"
        )
        super().__init__(
            errno.ENOSPC,
            f"{self.path}: disk full while writing it"
            + (f" ({human_size(written)} written)" if written else "")
            + f", {human_size(free)} free; {note}",
        )

    def __str__(self) -> str:
        return self.strerror


def is_disk_full(error: BaseException | None) -> bool:
    """Whether ``error`` says the disk (or the user's quota) is full, however it was wrapped.

    h5py and Keras raise OSErrors without ``errno`` that carry the C library's message.
    """
    while error is not None:
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(error) or "Disk quota exceeded" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


def remove_partial(path: str | os.PathLike) -> int:
    """Remove a half-written file; returns how many bytes it held (0 if there was none)."""
    written = file_size(path)
    Path(path).unlink(missing_ok=True)
    return written


def make_folders(folder: str | os.PathLike) -> list[Path]:
    """Create ``folder`` and its missing parents; return those this call created, deepest first.

    With :func:`remove_empty_folders`, a command that fails removes the folders it made.
    """
    folder = Path(folder)
    missing = []
    for candidate in (folder, *folder.parents):
        if candidate.exists():
            break
        missing.append(candidate)
    folder.mkdir(parents=True, exist_ok=True)
    return missing


def remove_empty_folders(folders: list[Path]) -> None:
    """Remove ``folders`` (deepest first, as :func:`make_folders` lists them) while empty.

    A folder that holds anything is kept, and so are the ones above it.
    """
    for folder in folders:
        try:
            folder.rmdir()
        except FileNotFoundError:
            continue
        except OSError:  # not empty: something was written there
            return


def free_space(folder: str | os.PathLike) -> int:
    """Free bytes on the filesystem of ``folder`` (or of its nearest existing parent)."""
    folder = Path(folder).absolute()
    while not folder.exists() and folder.parent != folder:
        folder = folder.parent
    return shutil.disk_usage(folder).free


def check_free_space(
    folder: str | os.PathLike, needed_bytes: int, doing: str, margin_bytes: int = 64 << 20
) -> None:
    """Raise `DiskSpaceError` unless ``folder`` has ``needed_bytes`` + a margin free."""
    free = free_space(folder)
    if needed_bytes + margin_bytes > free:
        raise DiskSpaceError(folder, doing, needed_bytes, free)


def human_size(count: int) -> str:
    """A byte count for a message: GB with two decimals from 1 GB on, else MB or kB."""
    if count >= 1e9:
        return f"{gigabytes(count)} GB"
    if count >= 1e6:
        return f"{count / 1e6:.1f} MB"
    return f"{count / 1e3:.0f} kB"


def gigabytes(count: int) -> str:
    """A byte count in decimal gigabytes with two decimals."""
    return f"{count / 1e9:.2f}"
